"""What the sync and the async client share, free of I/O: each API call as a :class:`Call`
(method, path, parameters, body, how to read the answer), the retry policy, and the buffer of
the event batchers. The clients only send calls and sleep."""

from __future__ import annotations

import email.utils
import random
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Generic, TypeVar
from urllib.parse import quote

from . import models as m
from .errors import APIError, from_body

T = TypeVar("T")

APP_HEADER = "X-Liverec-App"
DEFAULT_URL = "http://127.0.0.1:8000"


@dataclass(frozen=True)
class Retry:
    """When a failed call is tried again, and how long the client waits first.

    A call is tried at most ``attempts`` times in all (1: never again). Tried again: an answer
    with a status in ``statuses`` (429 and the 5xx a restart or an overloaded server gives) or no
    answer at all (refused, dropped, timed out), and only for idempotent calls: every call of this
    client is one (events carry an ``event_id``, upserts replace, deletes delete what is there).

    The wait is the server's ``Retry-After`` when the answer has one; otherwise exponential
    backoff, ``backoff * 2**(attempt - 1)`` capped at ``max_backoff``, jittered (a uniform draw
    between half of it and all of it) so that clients that failed together do not come back
    together. A ``Retry-After`` longer than ``max_retry_after`` is not waited out: the error is
    raised at once, carrying it.

    >>> r = Retry(attempts=5, backoff=0.5, max_backoff=3.0)
    >>> [r.wait(a, None, jitter=1.0) for a in (1, 2, 3, 4, 5)]
    [0.5, 1.0, 2.0, 3.0, None]
    >>> r.wait(1, None, jitter=0.0), r.wait(2, 7.0, jitter=0.0), r.wait(1, 120.0, jitter=1.0)
    (0.25, 7.0, None)
    """

    attempts: int = 4
    backoff: float = 0.25
    max_backoff: float = 8.0
    max_retry_after: float = 60.0
    statuses: frozenset[int] = frozenset({429, 500, 502, 503, 504})

    def __post_init__(self) -> None:
        if self.attempts < 1:
            raise ValueError(f"Retry.attempts={self.attempts}: expected at least 1")
        if self.backoff < 0 or self.max_backoff < 0 or self.max_retry_after < 0:
            raise ValueError("Retry: expected waits >= 0")

    def wait(self, attempt: int, retry_after: float | None, jitter: float | None = None) -> float | None:
        """Seconds to wait after failed attempt ``attempt`` (1-based) before the next, or None to
        give up. ``jitter`` in [0, 1] (default: random) places the backoff in its upper half."""
        if attempt >= self.attempts:
            return None
        if retry_after is not None:
            return retry_after if retry_after <= self.max_retry_after else None
        base = min(self.max_backoff, self.backoff * 2 ** (attempt - 1))
        return base * (0.5 + 0.5 * (random.random() if jitter is None else jitter))


NO_RETRY = Retry(attempts=1)


def retry_after(value: str | None, now: float | None = None) -> float | None:
    """Seconds from a ``Retry-After`` header: delay-seconds or an HTTP date (None: absent or
    unreadable).

    >>> retry_after("3"), retry_after(None), retry_after("soon")
    (3.0, None, None)
    >>> retry_after("Thu, 01 Jan 1970 00:00:10 GMT", now=4.0)
    6.0
    """
    if value is None:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when is None:
        return None
    return max(0.0, when.timestamp() - (time.time() if now is None else now))


@dataclass(frozen=True)
class Call(Generic[T]):
    """One request and how to read its answer."""

    method: str
    path: str
    read: Callable[[Any], T]
    params: list[tuple[str, str]] | None = None
    json: Any = None
    idempotent: bool = True

    def error(self, status: int, body: Any, text: str, headers: Mapping[str, str]) -> APIError:
        return from_body(status, body, text, method=self.method, path=self.path,
                         retry_after=retry_after(headers.get("retry-after")))


def _id(value: m.Id) -> str:
    """An id as one path segment: every character but unreserved ones percent-encoded (``/``
    too, so an id with a slash stays one segment)."""
    return quote(str(value), safe="")


def _many(values: Iterable[Any] | str | int) -> Iterable[Any]:
    """One id or name, or several (a lone string is one value, not its characters)."""
    return [values] if isinstance(values, (str, int)) else values


def _flag(value: bool) -> str:
    return "true" if value else "false"


# ---- the API, one function per call ------------------------------------------------------------


def send_events(events: Iterable[m.Event | Mapping[str, Any]]) -> Call[m.IngestResult]:
    bodies = [m.event_body(e) for e in events]
    ids = [str(b["event_id"]) for b in bodies]
    return Call("POST", "/v1/events", lambda d: m.IngestResult.from_json(d, ids), json={"events": bodies})


def upsert_item(item: m.Item | Mapping[str, Any]) -> Call[int]:
    body = m.item_body(item)
    item_id = body.pop("item_id", None)
    if item_id is None:
        raise ValueError("an item needs an item_id")
    return Call("PUT", f"/v1/items/{_id(item_id)}", lambda d: int(d["upserted"]), json=body)


def upsert_items(items: Iterable[m.Item | Mapping[str, Any]]) -> Call[int]:
    return Call("POST", "/v1/items", lambda d: int(d["upserted"]), json={"items": [m.item_body(i) for i in items]})


def get_item(item_id: m.Id) -> Call[m.Item]:
    return Call("GET", f"/v1/items/{_id(item_id)}", m.Item.from_json)


def similar(item_id: m.Id, n: int | None) -> Call[m.SimilarItems]:
    params = [("n", str(n))] if n is not None else []
    return Call("GET", f"/v1/items/{_id(item_id)}/similar", m.SimilarItems.from_json, params=params)


def recommend(user_id: m.Id, n: int | None, exclude: Iterable[m.Id] | m.Id, categories: Iterable[str] | str,
              include_consumed: bool | None, diversity: float | None, explore: bool | None) -> Call[m.Recommendations]:
    params: list[tuple[str, str]] = []
    if n is not None:
        params.append(("n", str(n)))
    # repeated parameters, not comma-joined: an id may hold a comma
    params += [("exclude", str(i)) for i in _many(exclude)]
    params += [("category", str(c)) for c in _many(categories)]
    if include_consumed is not None:
        params.append(("include_consumed", _flag(include_consumed)))
    if diversity is not None:
        params.append(("diversity", repr(float(diversity))))
    if explore is not None:
        params.append(("explore", _flag(explore)))
    return Call("GET", f"/v1/users/{_id(user_id)}/recommendations", m.Recommendations.from_json, params=params)


def get_user(user_id: m.Id) -> Call[m.User]:
    return Call("GET", f"/v1/users/{_id(user_id)}", m.User.from_json)


def delete_user(user_id: m.Id) -> Call[m.DeleteReceipt]:
    return Call("DELETE", f"/v1/users/{_id(user_id)}", m.DeleteReceipt.from_json)


def export_user(user_id: m.Id) -> Call[m.UserExport]:
    return Call("GET", f"/v1/users/{_id(user_id)}/export", m.UserExport.from_json)


def list_users(limit: int | None, prefix: str | None) -> Call[m.Users]:
    params = ([("limit", str(limit))] if limit is not None else []) + ([("prefix", prefix)] if prefix else [])
    return Call("GET", "/v1/users", m.Users.from_json, params=params)


def apps() -> Call[list[m.AppSummary]]:
    return Call("GET", "/v1/apps", m.apps_from_json)


def health() -> Call[m.Health]:
    return Call("GET", "/v1/health", m.Health.from_json)


def stats() -> Call[m.Stats]:
    return Call("GET", "/v1/stats", m.Stats.from_json)


def experiments() -> Call[list[m.Experiment]]:
    return Call("GET", "/v1/experiments", lambda d: [m.Experiment.from_json(e) for e in d["experiments"]])


def experiment(experiment_id: str) -> Call[m.Experiment]:
    return Call("GET", f"/v1/experiments/{_id(experiment_id)}", m.Experiment.from_json)


def create_experiment(name: str, variants: Iterable[Mapping[str, Any]], kind: str, traffic: float | None,
                      window_s: float | None, confidence: float | None) -> Call[m.Experiment]:
    body: dict[str, Any] = {"name": name, "kind": kind, "variants": [dict(v) for v in variants]}
    for key, value in (("traffic", traffic), ("window_s", window_s), ("confidence", confidence)):
        if value is not None:
            body[key] = value
    # not retried: a retry after a lost answer would create a second experiment
    return Call("POST", "/v1/experiments", m.Experiment.from_json, json=body, idempotent=False)


def stop_experiment(experiment_id: str) -> Call[m.Experiment]:
    return Call("POST", f"/v1/experiments/{_id(experiment_id)}/stop", m.Experiment.from_json)


def feedback(user_id: m.Id, type_: str, item_id: m.Id | None, scope: str | None, target: m.Id | None,
             fields: Mapping[str, Any]) -> m.Event:
    """An event of feedback ``type_``: on an item, or (``scope``, ``target``) on a category or an
    attribute value."""
    if item_id is None and target is None:
        raise ValueError(f"{type_}: expected an item_id, or a scope and a target")
    return m.Event(user_id, type_, item_id=item_id, scope=scope, target=target, **fields)


def headers(api_key: str | None, app: str | None, extra: Mapping[str, str] | None) -> dict[str, str]:
    out = dict(extra or {})
    if api_key:
        out["Authorization"] = f"Bearer {api_key}"
    if app:
        out[APP_HEADER] = app
    return out


# ---- the batchers' buffer ----------------------------------------------------------------------


class Pending:
    """Events tracked and not yet acknowledged, oldest first, each with its ``event_id`` from the
    moment it is tracked (so a flush retried later is recognised as the same events). Not
    thread-safe: the sync batcher holds its lock around it."""

    def __init__(self) -> None:
        self.events: list[dict[str, Any]] = []
        self.since: float | None = None  # monotonic time of the oldest event waiting

    def add(self, event: m.Event | Mapping[str, Any]) -> str:
        body = m.event_body(event)
        if not self.events:
            self.since = time.monotonic()
        self.events.append(body)
        return str(body["event_id"])

    def take(self) -> tuple[list[dict[str, Any]], float | None]:
        events, since = self.events, self.since
        self.events, self.since = [], None
        return events, since

    def put_back(self, events: list[dict[str, Any]], since: float | None) -> None:
        """Return unacknowledged events to the front, in their order, keeping their age."""
        if not events:
            return
        self.events[:0] = events
        self.since = min(s for s in (since, self.since, time.monotonic()) if s is not None)

    def due_in(self, interval: float) -> float | None:
        """Seconds until the oldest event has waited ``interval`` (<= 0: due now; None: empty)."""
        if self.since is None:
            return None
        return self.since + interval - time.monotonic()

    def __len__(self) -> int:
        return len(self.events)


def chunks(events: list[dict[str, Any]], size: int) -> list[list[dict[str, Any]]]:
    return [events[s:s + size] for s in range(0, len(events), size)]


def check_batching(max_events: int, max_interval: float) -> None:
    if max_events < 1:
        raise ValueError(f"max_events={max_events}: expected at least 1")
    if max_interval <= 0:
        raise ValueError(f"max_interval={max_interval}: expected > 0 seconds")


class Configured:
    """What both clients keep beside their connection pool: the app, the key, the retry policy
    and the headers they send; ``_sharing`` is the same client for another app."""

    _http: Any
    _owner: bool

    def _configure(self, api_key: str | None, app: str | None, retry: Retry, extra: Mapping[str, str] | None) -> None:
        self.app = app
        self.retry = retry
        self._api_key = api_key
        self._extra = dict(extra or {})
        self._headers = headers(api_key, app, extra)

    def _sharing(self, app: str) -> Any:
        other = object.__new__(type(self))
        other._http, other._owner = self._http, False  # closing the copy leaves the connections open
        other._configure(self._api_key, app, self.retry, self._extra)
        return other
