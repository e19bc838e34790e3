"""What the client sends and what it gets back, as plain dataclasses.

They mirror the API's schemas (``docs/api.md``) without importing the server: an answer is read
by field name, fields the client does not know are ignored (a newer server may add some), and an
optional field the server leaves out is None.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from datetime import datetime
from typing import Any

Id = str | int  # an id is a string, or an integer read as its decimal text


def new_event_id() -> str:
    """A fresh event id (the server's format: 32 hex digits of a random UUID)."""
    return uuid.uuid4().hex


@dataclass(frozen=True)
class Event:
    """One event to send. Only ``user_id`` and ``type`` are required; what a type needs beside
    them (an ``item_id``, a ``value`` for a rating, ``text`` for a search, a ``target`` for scoped
    feedback or an undo) is the server's type table's (``docs/api.md``).

    ``event_id`` makes the event idempotent: the server stores an id once per app. The client gives
    every event without one a fresh id before its first attempt, so a retried request is counted
    as duplicates, not stored twice.

    >>> Event("u1", "like", item_id="i9").to_dict()
    {'user_id': 'u1', 'type': 'like', 'item_id': 'i9'}
    >>> Event("u1", "block", scope="category", target="Horror", event_id="e1").to_dict()["target"]
    'Horror'
    """

    user_id: Id
    type: str
    item_id: Id | None = None
    timestamp: float | str | datetime | None = None
    value: float | None = None
    text: str | None = None
    scope: str | None = None
    target: Id | None = None
    context: Mapping[str, Any] | None = None
    event_id: Id | None = None

    def to_dict(self) -> dict[str, Any]:
        """The JSON object of the event (fields left None are left out)."""
        return {f.name: getattr(self, f.name) for f in fields(self) if getattr(self, f.name) is not None}


def event_body(event: Event | Mapping[str, Any]) -> dict[str, Any]:
    """A copy of ``event`` as the JSON object to send, with an ``event_id`` (a fresh one when it
    has none) and an aware ``datetime`` timestamp as epoch seconds. The caller's object is not
    changed.

    >>> body = event_body({"user_id": "u1", "type": "view", "item_id": "i1"})
    >>> sorted(body), len(body["event_id"])
    (['event_id', 'item_id', 'type', 'user_id'], 32)
    >>> event_body({"user_id": "u1", "type": "view", "event_id": "mine"})["event_id"]
    'mine'
    """
    if isinstance(event, Event):
        out = event.to_dict()
    elif isinstance(event, Mapping):
        out = dict(event)
    else:
        raise TypeError(f"an event is an Event or a mapping, not {type(event).__name__}")
    if out.get("event_id") is None:
        out["event_id"] = new_event_id()
    ts = out.get("timestamp")
    if isinstance(ts, datetime):
        if ts.tzinfo is None:
            # a date-time without an offset names no instant; the server refuses it too
            raise ValueError(f"timestamp {ts.isoformat()}: expected an aware datetime (with tzinfo)")
        out["timestamp"] = ts.timestamp()
    return out


@dataclass(frozen=True)
class Item:
    """One catalog item, sent (upsert) or read back.

    >>> Item("m1", title="Heat", categories=["Crime"]).to_dict()
    {'item_id': 'm1', 'title': 'Heat', 'text': '', 'categories': ['Crime'], 'attributes': {}}
    """

    item_id: str
    title: str = ""
    text: str = ""
    categories: list[str] = field(default_factory=list)
    attributes: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"item_id": self.item_id, "title": self.title, "text": self.text,
                "categories": list(self.categories), "attributes": dict(self.attributes)}

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> Item:
        return cls(str(d["item_id"]), d.get("title") or "", d.get("text") or "", list(d.get("categories") or []),
                   dict(d.get("attributes") or {}))


def item_body(item: Item | Mapping[str, Any]) -> dict[str, Any]:
    """The JSON object of an item to upsert (a mapping is sent as given, copied)."""
    if isinstance(item, Item):
        return item.to_dict()
    if isinstance(item, Mapping):
        return dict(item)
    raise TypeError(f"an item is an Item or a mapping, not {type(item).__name__}")


# ---- answers -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class IngestResult:
    """The answer to an event post: stored, duplicates (ids already stored, not stored again),
    and the ids of the events sent, in order (the ones the client assigned included: an undo
    names one as its target)."""

    accepted: int
    duplicates: int
    event_ids: list[str] = field(default_factory=list)

    @classmethod
    def from_json(cls, d: Mapping[str, Any], event_ids: list[str] | None = None) -> IngestResult:
        return cls(int(d["accepted"]), int(d["duplicates"]), list(event_ids or []))

    def __add__(self, other: IngestResult) -> IngestResult:
        return IngestResult(self.accepted + other.accepted, self.duplicates + other.duplicates,
                            self.event_ids + other.event_ids)


@dataclass(frozen=True)
class Recommendation:
    """One ranked item. ``because`` lists why it is there (objects with a ``kind``: ``event``,
    ``policy``, ``exploration``, ``model``); ``explored`` and ``propensity`` are set when
    exploration placed it."""

    item_id: str
    score: float
    title: str | None = None
    categories: list[str] | None = None
    because: list[dict[str, Any]] = field(default_factory=list)
    explored: bool | None = None
    propensity: float | None = None

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> Recommendation:
        return cls(str(d["item_id"]), float(d["score"]), d.get("title"), d.get("categories"),
                   list(d.get("because") or []), d.get("explored"), d.get("propensity"))


@dataclass(frozen=True)
class Recommendations:
    """A ranked list for a user. ``request_id`` names the logged impressions of the list."""

    user_id: str | None
    app: str
    scorer: str
    items: list[Recommendation]
    request_id: str | None = None
    experiment: dict[str, Any] | None = None  # the live experiment the user is in: id, name, kind, variant

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> Recommendations:
        return cls(d.get("user_id"), d["app"], d["scorer"], [Recommendation.from_json(i) for i in d["items"]],
                   d.get("request_id"), d.get("experiment"))

    @property
    def item_ids(self) -> list[str]:
        return [r.item_id for r in self.items]


@dataclass(frozen=True)
class SimilarItem:
    item_id: str
    score: float
    title: str | None = None
    categories: list[str] | None = None

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> SimilarItem:
        return cls(str(d["item_id"]), float(d["score"]), d.get("title"), d.get("categories"))


@dataclass(frozen=True)
class SimilarItems:
    item_id: str
    app: str
    items: list[SimilarItem]

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> SimilarItems:
        return cls(str(d["item_id"]), d["app"], [SimilarItem.from_json(i) for i in d["items"]])

    @property
    def item_ids(self) -> list[str]:
        return [r.item_id for r in self.items]


@dataclass(frozen=True)
class HistoryEntry:
    item_id: str | None
    type: str
    timestamp: float
    value: float | None = None
    text: str | None = None
    event_id: str | None = None
    title: str | None = None

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> HistoryEntry:
        return cls(d.get("item_id"), d["type"], float(d["timestamp"]), d.get("value"), d.get("text"),
                   d.get("event_id"), d.get("title"))


@dataclass(frozen=True)
class User:
    """A user's recent history (most recent first) and blocks by scope."""

    user_id: str
    app: str
    n_events: int
    history: list[HistoryEntry]
    blocked: dict[str, list[str]]

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> User:
        return cls(str(d["user_id"]), d["app"], int(d["n_events"]), [HistoryEntry.from_json(h) for h in d["history"]],
                   {k: list(v) for k, v in (d.get("blocked") or {}).items()})


@dataclass(frozen=True)
class DeleteReceipt:
    """The server's receipt of a deletion: its id in the audit log, who asked, and what each
    store removed (``removed``: counts by store, as ``DeletionCounts`` in the API)."""

    app: str
    user_id: str
    events_deleted: int
    state_deleted: bool
    deleted_at: float
    deletion_id: str = ""
    requested_by: str = ""
    removed: dict[str, int] = field(default_factory=dict)
    compacting: bool = False  # the store's files are still being compacted (no earlier copy left after)
    ranking_refolding: bool = False  # the ranking's posteriors are still being refolded without the user

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> DeleteReceipt:
        return cls(d["app"], str(d["user_id"]), int(d["events_deleted"]), bool(d["state_deleted"]), float(d["deleted_at"]),
                   str(d.get("deletion_id", "")), str(d.get("requested_by", "")),
                   {k: int(v) for k, v in (d.get("removed") or {}).items()},
                   bool(d.get("compacting", False)), bool(d.get("ranking_refolding", False)))


@dataclass(frozen=True)
class UserExport:
    """Everything the app holds on one user: their events in log order (as :class:`Event`, so
    they can be sent again), their online state (None: none) and what they were shown. The
    ranking's records of them (``impressions``, ``pending_rewards``, ``last_slates``) and the
    model versions trained on their events are left as the server sent them; ``data`` is the
    whole answer."""

    app: str
    user_id: str
    events: list[Event]
    state: dict[str, Any] | None
    impressions: list[dict[str, Any]]
    data: dict[str, Any]

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> UserExport:
        names = {f.name for f in fields(Event)}
        events = [Event(**{k: v for k, v in e.items() if k in names}) for e in d.get("events") or []]
        return cls(d["app"], str(d["user_id"]), events, d.get("state"), list(d.get("impressions") or []), dict(d))


@dataclass(frozen=True)
class Health:
    """``status`` is ``ok``, or ``starting`` while the state is rebuilt; ``workers`` counts the
    server's ready worker processes."""

    status: str
    uptime_s: float
    scorer: str
    workers: int
    warm_workers: int
    events: int
    log_position: list[int]

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> Health:
        return cls(d["status"], float(d["uptime_s"]), d["scorer"], int(d["workers"]), int(d.get("warm_workers", 0)),
                   int(d.get("events", 0)), list(d.get("log_position") or []))

    @property
    def ok(self) -> bool:
        return self.status == "ok"


@dataclass(frozen=True)
class AppSummary:
    app: str
    items: int
    users: int


@dataclass(frozen=True)
class UserSummary:
    user_id: str
    n_events: int
    last_seen: float


@dataclass(frozen=True)
class Users:
    """Users of an app, most recently active first; ``total`` counts those matching the prefix."""

    app: str
    total: int
    users: list[UserSummary]

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> Users:
        return cls(d["app"], int(d["total"]),
                   [UserSummary(str(u["user_id"]), int(u["n_events"]), float(u["last_seen"])) for u in d["users"]])


def apps_from_json(d: Mapping[str, Any]) -> list[AppSummary]:
    return [AppSummary(a["app"], int(a["items"]), int(a["users"])) for a in d["apps"]]


@dataclass(frozen=True)
class Totals:
    events_accepted: int
    events_duplicate: int
    events_rejected: int
    recommendations: int
    impressions: int
    by_type: dict[str, int]

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> Totals:
        return cls(int(d["events_accepted"]), int(d["events_duplicate"]), int(d["events_rejected"]),
                   int(d["recommendations"]), int(d["impressions"]), dict(d.get("by_type") or {}))


@dataclass(frozen=True)
class Stats:
    """The dashboard's figures for an app. The parts that describe pluggable components (the
    model, the learners), the latencies and the series are left as the server sent them, in
    ``data`` (the whole answer)."""

    app: str
    time: float
    uptime_s: float
    ready: bool
    throughput: dict[str, float]
    totals: Totals
    data: dict[str, Any]

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> Stats:
        return cls(d["app"], float(d["time"]), float(d["uptime_s"]), bool(d["ready"]), dict(d.get("throughput") or {}),
                   Totals.from_json(d["totals"]), dict(d))


@dataclass(frozen=True)
class Experiment:
    """A live experiment with its variants' metrics (each variant's ``ctr``, ``like_rate`` and
    ``negative_share`` as ``{"value", "low", "high"}``); ``verdict`` says which variant is better
    at the experiment's confidence, or "no difference yet". The whole answer is in ``data``."""

    experiment_id: str
    app: str
    name: str
    kind: str
    status: str
    variants: list[dict[str, Any]]
    verdict: str
    data: dict[str, Any]

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> Experiment:
        return cls(d["experiment_id"], d["app"], d["name"], d["kind"], d["status"], list(d["variants"]), d["verdict"], dict(d))

    @property
    def running(self) -> bool:
        return self.status == "running"

    def variant(self, name: str) -> dict[str, Any]:
        """One variant's metrics by name (KeyError when there is none)."""
        for v in self.variants:
            if v["name"] == name:
                return v
        raise KeyError(name)
