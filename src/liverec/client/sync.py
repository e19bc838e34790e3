"""The blocking client and its event batcher."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterable, Mapping
from typing import Any, TypeVar

import httpx

from . import _core as c
from . import models as m
from .errors import APIError, LiverecError, NetworkError

T = TypeVar("T")


class Client(c.Configured):
    """A liverec server's API, blocking (``AsyncClient`` is the same for asyncio).

    ``api_key`` is sent as ``Authorization: Bearer KEY``; ``app`` as the ``X-Liverec-App`` header
    (absent: the server's ``default`` app). Failed idempotent calls are retried per ``retry``
    (:class:`Retry`); an error answer raises an :class:`APIError` subclass carrying the server's
    field errors, no answer a :class:`NetworkError`. ``transport`` replaces httpx's (a test's
    ``httpx.MockTransport``; ``httpx.HTTPTransport(retries=...)``).

    Usage (a server on port 8000)::

        with Client("http://127.0.0.1:8000", app="shop") as client:
            client.track("u1", "view", "i1")
            client.like("u1", "i2")
            top = client.recommend("u1", n=10, exclude=["i1"]).item_ids
    """

    def __init__(self, base_url: str = c.DEFAULT_URL, *, api_key: str | None = None, app: str | None = None,
                 timeout: float = 10.0, retry: c.Retry | None = None, headers: Mapping[str, str] | None = None,
                 transport: httpx.BaseTransport | None = None) -> None:
        self._http = httpx.Client(base_url=base_url, timeout=timeout, transport=transport)
        self._owner = True
        self._configure(api_key, app, retry or c.Retry(), headers)

    def with_app(self, app: str) -> Client:
        """The same client (connections, key, retries) speaking for ``app``. Closing it leaves
        the connections open; closing this client closes them."""
        return self._sharing(app)

    # ---- events ---------------------------------------------------------------------------------

    def send_events(self, events: Iterable[m.Event | Mapping[str, Any]]) -> m.IngestResult:
        """Store events all-or-nothing (at most the server's ``max_batch`` in one call); answered
        after the durable commit. Events without an ``event_id`` get one, so a retry stores
        nothing twice; the answer lists the ids in order."""
        return self._send(c.send_events(events))

    def send_event(self, event: m.Event | Mapping[str, Any]) -> m.IngestResult:
        """Store one event (see :meth:`send_events`)."""
        return self._send(c.send_events([event]))

    def track(self, user_id: m.Id, type: str, item_id: m.Id | None = None, **fields: Any) -> m.IngestResult:
        """Store one event of ``type`` (``timestamp``, ``value``, ``text``, ``scope``, ``target``,
        ``context``, ``event_id`` as keywords)."""
        return self.send_event(m.Event(user_id, type, item_id, **fields))

    def like(self, user_id: m.Id, item_id: m.Id, **fields: Any) -> m.IngestResult:
        return self.track(user_id, "like", item_id, **fields)

    def dislike(self, user_id: m.Id, item_id: m.Id | None = None, *, scope: str | None = None,
                target: m.Id | None = None, **fields: Any) -> m.IngestResult:
        """A dislike of an item, or of a category or attribute value (``scope``, ``target``)."""
        return self.send_event(c.feedback(user_id, "dislike", item_id, scope, target, fields))

    def block(self, user_id: m.Id, item_id: m.Id | None = None, *, scope: str | None = None,
              target: m.Id | None = None, **fields: Any) -> m.IngestResult:
        """Never show the item again (or anything of ``scope`` = ``target``: ``scope="category",
        target="Horror"``)."""
        return self.send_event(c.feedback(user_id, "block", item_id, scope, target, fields))

    def undo(self, user_id: m.Id, event_id: m.Id, **fields: Any) -> m.IngestResult:
        """Revert one of the user's events, named by its id (``IngestResult.event_ids``)."""
        return self.track(user_id, "undo", target=event_id, **fields)

    def batcher(self, max_events: int = 500, max_interval: float = 1.0) -> EventBatcher:
        """An :class:`EventBatcher` sending through this client."""
        return EventBatcher(self, max_events, max_interval)

    # ---- items ----------------------------------------------------------------------------------

    def upsert_item(self, item: m.Item | Mapping[str, Any]) -> int:
        """Insert or replace one item."""
        return self._send(c.upsert_item(item))

    def upsert_items(self, items: Iterable[m.Item | Mapping[str, Any]]) -> int:
        """Insert or replace items, all-or-nothing; the number upserted."""
        return self._send(c.upsert_items(items))

    def item(self, item_id: m.Id) -> m.Item:
        """One item (:class:`NotFound` for an id the app does not have)."""
        return self._send(c.get_item(item_id))

    def similar(self, item_id: m.Id, n: int | None = None) -> m.SimilarItems:
        """Items most similar to this one."""
        return self._send(c.similar(item_id, n))

    # ---- users ----------------------------------------------------------------------------------

    def recommend(self, user_id: m.Id, n: int | None = None, *, exclude: Iterable[m.Id] | m.Id = (),
                  categories: Iterable[str] | str = (), include_consumed: bool | None = None,
                  diversity: float | None = None, explore: bool | None = None) -> m.Recommendations:
        """Ranked items for the user as they are now. ``exclude``: item ids to leave out;
        ``categories``: only items in one of them; ``diversity`` (0..1) and ``explore``: None
        leaves the app's setting."""
        return self._send(c.recommend(user_id, n, exclude, categories, include_consumed, diversity, explore))

    def user(self, user_id: m.Id) -> m.User:
        """The user's recent history and blocks (:class:`NotFound` for a user without events)."""
        return self._send(c.get_user(user_id))

    def delete_user(self, user_id: m.Id) -> m.DeleteReceipt:
        """Delete the user's events and state in the app."""
        return self._send(c.delete_user(user_id))

    def export_user(self, user_id: m.Id) -> m.UserExport:
        """Everything the app holds on the user (:class:`NotFound` for a user it holds nothing on)."""
        return self._send(c.export_user(user_id))

    def users(self, limit: int | None = None, prefix: str | None = None) -> m.Users:
        """The app's users, most recently active first."""
        return self._send(c.list_users(limit, prefix))

    # ---- operations -----------------------------------------------------------------------------

    def apps(self) -> list[m.AppSummary]:
        return self._send(c.apps())

    def health(self) -> m.Health:
        return self._send(c.health())

    # ---- experiments ----------------------------------------------------------------------------

    def experiments(self) -> list[m.Experiment]:
        """The app's live experiments, newest first, with their variants' metrics."""
        return self._send(c.experiments())

    def experiment(self, experiment_id: str) -> m.Experiment:
        """One experiment with its metrics and verdict (:class:`NotFound` for an id the app lacks)."""
        return self._send(c.experiment(experiment_id))

    def create_experiment(self, name: str, variants: Iterable[Mapping[str, Any]], *, kind: str = "split",
                          traffic: float | None = None, window_s: float | None = None,
                          confidence: float | None = None) -> m.Experiment:
        """Start an experiment (admin scope). ``variants``: dicts with ``name``, optional
        ``share``, ``model_version`` and ``ranking`` (RankingConfig fields to override), the
        first the control; ``kind``: ``split`` or ``interleave``."""
        return self._send(c.create_experiment(name, variants, kind, traffic, window_s, confidence))

    def stop_experiment(self, experiment_id: str) -> m.Experiment:
        """Stop it (admin scope): users get the app's own configuration again."""
        return self._send(c.stop_experiment(experiment_id))

    def stats(self) -> m.Stats:
        """The dashboard's figures for the app."""
        return self._send(c.stats())

    def wait_ready(self, timeout: float = 60.0, workers: int | None = None, interval: float = 0.2) -> m.Health:
        """Poll the health until the server answers ``ok`` (with at least ``workers`` ready
        worker processes); ``TimeoutError`` after ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        last: Any = None
        while True:
            try:
                health = self._send(c.health(), c.NO_RETRY)
                if health.ok and (workers is None or health.workers >= workers):
                    return health
                last = health
            except (NetworkError, APIError) as exc:
                last = exc
            if time.monotonic() >= deadline:
                raise TimeoutError(f"not ready after {timeout} s: {last}")
            time.sleep(interval)

    # ---- plumbing -------------------------------------------------------------------------------

    def _send(self, call: c.Call[T], retry: c.Retry | None = None) -> T:
        retry = retry or self.retry
        if not call.idempotent:
            retry = c.NO_RETRY
        attempt = 0
        while True:
            attempt += 1
            try:
                response = self._http.request(call.method, call.path, params=call.params, json=call.json,
                                              headers=self._headers)
            except httpx.TransportError as exc:
                wait = retry.wait(attempt, None)
                if wait is None:
                    raise NetworkError(f"{call.method} {call.path}: {type(exc).__name__}: {exc}") from exc
                time.sleep(wait)
                continue
            if response.is_success:
                return call.read(response.json())
            error = _error(call, response)
            wait = retry.wait(attempt, error.retry_after) if response.status_code in retry.statuses else None
            if wait is None:
                raise error
            time.sleep(wait)

    def close(self) -> None:
        if self._owner:
            self._http.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _error(call: c.Call[Any], response: httpx.Response) -> APIError:
    try:
        body = response.json()
    except ValueError:
        body = None
    return call.error(response.status_code, body, response.text, response.headers)


class EventBatcher:
    """Buffers events and sends them in batches: when ``max_events`` are waiting, when the
    oldest has waited ``max_interval`` seconds, on :meth:`flush` and on close.

    Every event gets its ``event_id`` when it is tracked, so a batch sent again after a failure
    is recognised by the server as the same events. :meth:`flush` returns once the server has
    acknowledged everything tracked before it; events whose batch failed stay buffered, in order,
    for the next flush. ``track`` sends in the caller's thread when the buffer is full (the
    caller is held back while the server is slow, and sees its errors); the time-based flush runs
    on a background thread and keeps what it could not send (``last_error`` says why).

    Usage::

        with client.batcher(max_events=200, max_interval=0.5) as batcher:
            for row in rows:
                batcher.track(row.user, "view", row.item)
        # everything tracked is acknowledged here (or close raised)
    """

    def __init__(self, client: Client, max_events: int = 500, max_interval: float = 1.0) -> None:
        c.check_batching(max_events, max_interval)
        self.client = client
        self.max_events = max_events
        self.max_interval = max_interval
        self.last_error: LiverecError | None = None
        self.acknowledged = 0
        self._pending = c.Pending()
        self._lock = threading.Lock()
        self._wake = threading.Condition(self._lock)
        self._sending = threading.Lock()  # one batch in flight at a time: events reach the server in order
        self._closed = False
        self._timer: threading.Thread | None = None

    def track(self, user_id: m.Id, type: str, item_id: m.Id | None = None, **fields: Any) -> str:
        """Buffer one event; its ``event_id``."""
        return self.add(m.Event(user_id, type, item_id, **fields))

    def add(self, event: m.Event | Mapping[str, Any]) -> str:
        """Buffer one event (an :class:`Event` or a mapping); its ``event_id``."""
        with self._lock:
            if self._closed:
                raise RuntimeError("the batcher is closed")
            event_id = self._pending.add(event)
            full = len(self._pending) >= self.max_events
            if self._timer is None:
                self._timer = threading.Thread(target=self._run, name="liverec-batcher", daemon=True)
                self._timer.start()
            self._wake.notify()
        if full:
            self.flush()
        return event_id

    def flush(self) -> m.IngestResult:
        """Send every buffered event; returns once the server acknowledged them all (what this
        flush sent). On an error the unsent events stay buffered and the error is raised."""
        with self._sending:
            with self._lock:
                events, since = self._pending.take()
            result = m.IngestResult(0, 0)
            sent = 0
            try:
                for batch in c.chunks(events, self.max_events):
                    result += self.client.send_events(batch)
                    sent += len(batch)
                    self.acknowledged += len(batch)
            except BaseException:
                with self._lock:
                    self._pending.put_back(events[sent:], since)
                raise
            return result

    @property
    def pending(self) -> list[dict[str, Any]]:
        """The events not yet acknowledged (copies), oldest first."""
        with self._lock:
            return [dict(e) for e in self._pending.events]

    def _run(self) -> None:
        while True:
            with self._lock:
                due = self._pending.due_in(self.max_interval)
                if self._closed:
                    return
                if due is None or due > 0:
                    self._wake.wait(due)
                    continue
            try:
                self.flush()
                self.last_error = None
            except LiverecError as exc:
                # kept for the next flush; wait an interval rather than spin on a failing server
                self.last_error = exc
                with self._lock:
                    if not self._closed:
                        self._wake.wait(self.max_interval)

    def close(self) -> m.IngestResult:
        """Stop the timer and flush what is left (raises if the server did not acknowledge it;
        the events stay in :attr:`pending`)."""
        with self._lock:
            self._closed = True
            self._wake.notify_all()
            timer = self._timer
        if timer is not None:
            timer.join()
        return self.flush()

    def __enter__(self) -> EventBatcher:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
