"""Storage by role, behind small protocols.

Each role has its own protocol so a backend can serve some roles and not others:

- :class:`EventLog` — the append-only, idempotent event log (the source of truth);
- :class:`Catalog` — item records (title, text, categories, attributes);
- :class:`Snapshots` — opaque blobs for derived state and models (online-state snapshots,
  cached vectors), keyed by (app, name);
- :class:`ApiKeys` — the API keys' records (never the keys: a keyed hash of each), so every
  worker on every machine verifies the same keys;
- :class:`Experiments` — the apps' live experiments (variants and their overrides), created and
  stopped with a change in the changes feed, so every worker serves the same ones.

A backend is chosen by URL (see :func:`liverec.store.open_store`).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Any, Iterator, Protocol, Sequence

from ..events import Event


class StoreUnavailable(RuntimeError):
    """The store cannot be reached now (its server is down, restarting or cut off): nothing was
    read or acknowledged; the same call may succeed once it is back (the API answers 503 with
    ``Retry-After``). ``cause`` says what the driver reported."""

    retry_after_s = 1

    def __init__(self, cause: str):
        super().__init__(f"the store is unavailable: {cause}")
        self.cause = cause


@dataclass(frozen=True, slots=True)
class Item:
    """A catalog item. ``categories`` are also reachable as the ``category`` attribute."""

    app: str
    item_id: str
    title: str = ""
    text: str = ""
    categories: tuple[str, ...] = ()
    attributes: dict[str, Any] = field(default_factory=dict)
    updated_at: float = 0.0

    def attribute_values(self) -> dict[str, set[str]]:
        """Scope name -> this item's values, for scoped feedback (``category``, ``creator``...)."""
        values: dict[str, set[str]] = {"category": set(self.categories)}
        for key, value in self.attributes.items():
            if isinstance(value, (list, tuple, set)):
                values[key] = {str(v) for v in value}
            elif value is not None:
                values[key] = {str(value)}
        return values

    def to_dict(self) -> dict[str, Any]:
        return {
            "item_id": self.item_id,
            "title": self.title,
            "text": self.text,
            "categories": list(self.categories),
            "attributes": dict(self.attributes),
        }


@dataclass(frozen=True, slots=True)
class AppendResult:
    """What an append stored: the new events in log order, and how many were duplicates."""

    accepted: list[Event]
    duplicates: int


@dataclass(frozen=True, slots=True)
class Change:
    """A change to the log other than an appended event, in commit order.

    ``kind`` is ``item`` (``key`` is an item id upserted), ``user_deleted`` (``key`` is
    :func:`user_digest` of the user: the store keeps no deleted user's id), ``experiment``
    (``key`` is an experiment id created or stopped) or ``api_key`` (``key`` is the id of an API
    key created or revoked: processes drop what they cached of the keys). ``event_seq`` is
    the event log's head when the change committed: a follower applies the
    events up to it first, then the change, so the order every process sees is the commit order.
    """

    seq: int
    app: str
    kind: str
    key: str
    event_seq: int


def user_digest(app: str, user_id: str) -> str:
    """What the store keeps of a deleted user: a SHA-256 of app and id, as the ``user_deleted``
    change's key and the deletion audit log's subject. A process that holds the user finds them
    by it; a reader of the files who does not know the id cannot read it back.

    >>> user_digest("shop", "u1") == user_digest("shop", "u1") != user_digest("news", "u1")
    True
    """
    return hashlib.sha256(f"{app}\x00{user_id}".encode("utf-8", "surrogatepass")).hexdigest()


class EventLog(Protocol):
    def append(self, events: Sequence[Event]) -> AppendResult:
        """Store events durably (committed before returning); duplicates by (app, event_id) are
        ignored and counted. All-or-nothing: on error nothing of the batch is stored."""

    def scan(self, app: str | None = None, after_seq: int = 0) -> Iterator[tuple[int, Event]]:
        """All events (of one app, or all apps) in log order, with their sequence numbers."""

    def last_seq(self) -> int:
        """The highest sequence number stored (0 for an empty log)."""

    def user_events(self, app: str, user_id: str) -> list[Event]:
        """One user's events in log order."""

    def remove_user(self, app: str, user_id: str) -> list[tuple[int, Event]]:
        """Delete the user's events (recording a ``user_deleted`` change in the same transaction)
        and return them, with their sequence numbers, in log order."""

    def delete_user(self, app: str, user_id: str) -> int:
        """Delete the user's events (and record a ``user_deleted`` change in the same
        transaction); returns how many were deleted."""

    def user_span(self, app: str, user_id: str) -> tuple[int, int] | None:
        """(first, last) sequence number of the user's events; ``None`` without any."""

    def texts_in_use(self, texts: Sequence[str]) -> set[str]:
        """Those of ``texts`` that some stored event (of any app) carries as its text."""

    def version(self) -> int | None:
        """A number that changes when *another* connection commits (SQLite's ``data_version``),
        or ``None`` where the backend has no such cheap check; lets a follower skip ``heads``."""

    def heads(self) -> tuple[int, int]:
        """(highest event seq, highest change seq): one cheap query a follower runs per request."""

    def changes(self, after_seq: int = 0) -> list[Change]:
        """Changes committed after ``after_seq``, in commit order."""

    def count(self, app: str | None = None) -> int: ...

    def apps(self) -> list[str]: ...


@dataclass(frozen=True, slots=True)
class DeletionRecord:
    """One user deletion in the audit log: who asked (an API key id, or ``open:`` and the
    remote address where the API has no keys), when, and the receipt (what was removed from
    which store). ``subject`` is :func:`user_digest` of the user, never the id; ``deletion_id``
    names the deletion where it is referred to (the receipt, the marks on model versions).
    ``seq`` is the record's number in the log (0 before it is recorded)."""

    deletion_id: str
    app: str
    subject: str
    requested_by: str
    at: float
    receipt: dict[str, Any]
    seq: int = 0


class DeletionLog(Protocol):
    """The append-only audit log of user deletions: records are added, never changed or removed."""

    def record(self, entry: DeletionRecord) -> int:
        """Append ``entry``; returns its ``seq``."""

    def list(self, app: str | None = None, subject: str | None = None) -> list[DeletionRecord]:
        """The records (of one app, of one subject), oldest first."""


class Catalog(Protocol):
    def upsert(self, items: Sequence[Item]) -> int:
        """Insert or replace items (recording an ``item`` change per item in the same
        transaction); returns how many were written."""

    def get(self, app: str, item_id: str) -> Item | None: ...

    def scan(self, app: str | None = None) -> Iterator[Item]: ...

    def count(self, app: str | None = None) -> int: ...


class Snapshots(Protocol):
    def put(self, app: str, name: str, blob: bytes) -> None: ...

    def get(self, app: str, name: str) -> bytes | None: ...

    def names(self, app: str, prefix: str = "") -> list[str]:
        """The names stored for ``app`` that start with ``prefix``, sorted."""

    def delete(self, app: str, name: str) -> bool:
        """Remove the blob; False when there was none."""


@dataclass(frozen=True, slots=True)
class ApiKey:
    """An API key's record. ``digest`` is the keyed hash of the whole key (see
    :mod:`liverec.auth.keys`); the key itself is never stored. ``rate`` (requests per second)
    and ``burst`` are the key's token bucket."""

    key_id: str
    app: str
    scopes: tuple[str, ...]
    digest: str
    rate: float
    burst: float
    created_at: float
    revoked_at: float | None = None
    last_used_at: float | None = None


class ApiKeys(Protocol):
    def add(self, key: ApiKey) -> None:
        """Store a new key record (its ``key_id`` must be new)."""

    def get(self, key_id: str) -> ApiKey | None:
        """The record of ``key_id``, revoked or not (one primary-key read: every request pays it)."""

    def list(self, app: str | None = None) -> list[ApiKey]:
        """Every record (of one app), oldest first."""

    def revoke(self, key_id: str, at: float) -> bool:
        """Mark the key revoked (the record stays); False when there is no such key."""

    def touch(self, used: dict[str, float]) -> None:
        """Record when keys were last used (key id -> time; an older time never replaces a newer)."""

    def exists(self) -> bool:
        """Whether any key was ever created (revoked ones count: revoking every key keeps the
        service closed)."""


@dataclass(frozen=True, slots=True)
class ExperimentRecord:
    """An experiment as stored: ``spec`` holds its variants, traffic, window and confidence
    (:class:`liverec.experiments.spec.Experiment` reads it); ``stopped_at`` is ``None`` while it runs."""

    experiment_id: str
    app: str
    name: str
    kind: str
    spec: dict[str, Any]
    created_at: float
    stopped_at: float | None = None


class Experiments(Protocol):
    def create(self, record: ExperimentRecord) -> None:
        """Store a new, running experiment (its id must be new) and an ``experiment`` change in
        the same transaction."""

    def get(self, experiment_id: str) -> ExperimentRecord | None: ...

    def list(self, app: str | None = None) -> list[ExperimentRecord]:
        """Every experiment (of one app), oldest first."""

    def stop(self, experiment_id: str, at: float) -> bool:
        """Mark it stopped at ``at`` (once: a second stop keeps the first time) with an
        ``experiment`` change; False when there is no such experiment."""


class Store(Protocol):
    """A backend serving every role."""

    events: EventLog
    deletions: DeletionLog
    catalog: Catalog
    snapshots: Snapshots
    keys: ApiKeys
    experiments: Experiments

    def compact(self) -> bool:
        """Make rows deleted so far unrecoverable from the store's files where the backend can
        (SQLite: ``VACUUM`` writes every page afresh, then the write-ahead log, which holds pages
        as they were, is checkpointed and truncated); True when done."""

    def close(self) -> None: ...
