"""Storage by role, behind small protocols.

Each role has its own protocol so a backend can serve some roles and not others:

- :class:`EventLog` — the append-only, idempotent event log (the source of truth);
- :class:`Catalog` — item records (title, text, categories, attributes);
- :class:`Snapshots` — opaque blobs for derived state and models (online-state snapshots,
  cached vectors), keyed by (app, name);
- :class:`ApiKeys` — the API keys' records (never the keys: a keyed hash of each), so every
  worker on every machine verifies the same keys.

A backend is chosen by URL (see :func:`liverec.store.open_store`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Iterator, Protocol, Sequence

from ..events import Event


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

    ``kind`` is ``item`` (``key`` is an item id upserted) or ``user_deleted`` (``key`` is the user
    id). ``event_seq`` is the event log's head when the change committed: a follower applies the
    events up to it first, then the change, so the order every process sees is the commit order.
    """

    seq: int
    app: str
    kind: str
    key: str
    event_seq: int


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

    def version(self) -> int | None:
        """A number that changes when *another* connection commits (SQLite's ``data_version``),
        or ``None`` where the backend has no such cheap check; lets a follower skip ``heads``."""

    def heads(self) -> tuple[int, int]:
        """(highest event seq, highest change seq): one cheap query a follower runs per request."""

    def changes(self, after_seq: int = 0) -> list[Change]:
        """Changes committed after ``after_seq``, in commit order."""

    def count(self, app: str | None = None) -> int: ...

    def apps(self) -> list[str]: ...


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


class Store(Protocol):
    """A backend serving every role."""

    events: EventLog
    catalog: Catalog
    snapshots: Snapshots
    keys: ApiKeys

    def close(self) -> None: ...
