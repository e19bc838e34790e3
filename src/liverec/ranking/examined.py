"""What the user read past without reacting: the cascade reading of a slate.

A feed is read top-down. When the user reacts to the item at position ``p`` of the slate they were
last served (a click, a skip, a like...), the items above ``p`` that drew no event were seen and
passed over: the cascade model of how people scan a ranked list (Craswell et al., "An experimental
comparison of click position-bias models", WSDM 2008). A passed-over item is weak negative
evidence: not bad enough to skip, not good enough to take. The feedback policy reads it
(:func:`liverec.ranking.feedback.signals`): the item itself drops a little (``passed_item``), and
its categories collect ``passed_mass`` on the negative side of category exploration's posterior, so
it moves on from a genre the user has just scrolled past instead of offering it again. Nothing is
inferred below the lowest item the user reacted to (they may not have read that far). Off unless an
app sets ``passed_item`` or ``passed_mass`` (a feed read top-down; a grid has no reading order).

Only each user's latest slates are kept (the newest is the one their next events are about), in
memory, for the users served most recently. Like every in-memory structure of a worker they are a
fold of the durable logs: a slate is the impressions of one response, and which events are
reactions to it is fixed by the event log position it was served at (a slate is current from its
position until the next slate's), so a restart rebuilds them and every worker folds the slates the
others served (:mod:`liverec.ranking.replicas`). Another worker's slate can be read after the
user's reactions to it were applied here; the reactions are then taken back from the older slate
they were applied to and applied again, from the recent reaction events kept per user.
"""

from __future__ import annotations

import bisect
import itertools
import threading
from collections import OrderedDict, deque
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Mapping, Sequence

from ..events import DEFAULT_TYPES, TARGETED, UNDOES, Event
from .bandit import load_recent, recent_entries
from .recent import RecentIndex

# Events that show the user read down to their item: every type that reacts to an item rather
# than taking back an earlier event (undo, unblock); a service passes its own table.
READ_TO = frozenset(DEFAULT_TYPES) - TARGETED

SlateKey = tuple[int, float, str]  # (event log position served at, time served, request id): their order


# An item the user read past: (item_id, timestamp, event_id of the reaction below it that showed
# it). An exact tuple, as ``Reaction``: up to ``per_user`` of them for each of ``max_users`` users.
Passed = tuple[str, float, "str | None"]


@dataclass
class _Slate:
    items: list[str]
    key: SlateKey
    reacted: set[str] = field(default_factory=set)
    read_to: int = -1  # lowest position with a reaction so far
    base: tuple[Passed, ...] = ()  # what the user had passed over when this slate was served


# What the fold keeps of a reaction or undo: (type, item_id, target, timestamp, event_id). An
# exact tuple, not the event: 100,000 of them are kept, and the collector stops tracking tuples of
# strings and numbers (an event object stays in every full pass's walk).
Reaction = tuple[str, "str | None", "str | None", float, str]


@dataclass
class _Reader:
    slates: list[_Slate]  # the latest few, in key order: the last one is current
    passed: deque[Passed]
    complete: bool = True  # no older slate of this user was dropped here (one read late can go first)


class Examined:
    """Each user's latest slates and the items they passed over (newest last, ``per_user`` at most).

    ``keep`` slates per user are kept so that one read late from another worker can still be put
    in its place; ``max_recent`` reaction events (of every user) are kept with their log positions
    to apply again when that happens.
    """

    def __init__(self, max_users: int = 100_000, per_user: int = 50, reactions: Iterable[str] = READ_TO,
                 keep: int = 4, max_recent: int = 100_000) -> None:
        self.reactions = frozenset(reactions) - TARGETED  # the app's own event types count too
        self.max_users = max_users
        self.per_user = per_user
        self.keep = keep
        self.max_recent = max_recent
        self._readers: OrderedDict[tuple[str, str], _Reader] = OrderedDict()  # least recently served first
        self._recent: RecentIndex[tuple[str, str], Reaction] = RecentIndex(max_recent)  # user -> (seq, reaction or undo)
        self.position = 0  # the last event position observed
        self.unplaced = 0  # slates read too late to be put in their place (their reactions stay where they were applied)
        self._local = itertools.count()
        self._lock = threading.Lock()

    def served(self, app: str, user_id: str, slate: list[str], key: SlateKey | None = None) -> None:
        """The slate the user was shown, top first. ``key``: where it goes among the user's slates
        (see :data:`SlateKey`); without one, it was served now, after every event observed."""
        user = (app, user_id)
        with self._lock:
            new = _Slate(list(slate), key if key is not None else (self.position, float(next(self._local)), ""))
            reader = self._readers.get(user)
            if reader is None:
                reader = self._readers[user] = _Reader([], deque(maxlen=self.per_user))
                while len(self._readers) > self.max_users:
                    self._readers.popitem(last=False)
            self._readers.move_to_end(user)
            self._place(user, reader, new)
            while len(reader.slates) > self.keep:
                reader.slates.pop(0)
                reader.complete = False

    def _place(self, user: tuple[str, str], reader: _Reader, new: _Slate) -> None:
        recent = self._recent.get(user)
        at = bisect.bisect([s.key for s in reader.slates], new.key)
        reacted_since = bool(recent) and recent[-1][0] > new.key[0]
        if at == len(reader.slates) and not reacted_since:  # the usual case: served after everything known
            new.base = tuple(reader.passed)
            reader.slates.append(new)
            return
        if at == 0 and not reader.complete:
            # older than every slate kept here: its place is known only if the user did not react
            # between it and the oldest kept one (then it was never read, and changes nothing)
            first = reader.slates[0].key[0]
            if self._recent.horizon > new.key[0] or any(new.key[0] < seq <= first for seq, _ in recent):
                self.unplaced += 1
            return
        reader.slates.insert(at, new)
        self._replay(user, reader, max(at - 1, 0))

    def _replay(self, user: tuple[str, str], reader: _Reader, start: int) -> None:
        """Read the slates from ``start`` on again, each with the user's reactions between it and
        the next, from what the user had passed over before ``start``."""
        first = reader.slates[start]
        passed: deque[Passed] = deque(first.base if start > 0 or not reader.complete else (), maxlen=self.per_user)
        if self._recent.horizon > first.key[0]:
            self.unplaced += 1  # some reactions to re-read have left the recent index
        events = [(seq, e) for seq, e in self._recent.get(user) if seq > first.key[0]]
        k = 0
        for i in range(start, len(reader.slates)):
            slate = reader.slates[i]
            slate.reacted, slate.read_to, slate.base = set(), -1, tuple(passed)
            until = reader.slates[i + 1].key[0] if i + 1 < len(reader.slates) else None
            while k < len(events) and (until is None or events[k][0] <= until):
                self._apply(slate, passed, events[k][1])
                k += 1
        reader.passed = passed

    def observe(self, events: Sequence[Event], seqs: Sequence[int] | None = None) -> None:
        """Committed events in log order, with their positions: a reaction to a slate item marks
        the unreacted items above it as passed; ``undo`` of that reaction takes back what it showed."""
        with self._lock:
            if seqs is None:  # a caller without positions: number them on from the last one
                seqs = range(self.position + 1, self.position + 1 + len(events))
            for e, seq in zip(events, seqs, strict=True):
                if not ((e.type in UNDOES and e.target) or (e.item_id is not None and e.type in self.reactions)):
                    continue
                user = (e.app, e.user_id)
                reaction = (e.type, e.item_id, e.target, e.timestamp, e.event_id)
                self._remember(seq, user, reaction)
                reader = self._readers.get(user)
                if reader is not None:
                    self._apply(reader.slates[-1], reader.passed, reaction)
            if len(seqs):
                self.position = max(self.position, seqs[-1])

    def _apply(self, slate: _Slate, passed: deque[Passed], reaction: Reaction) -> None:
        kind, item_id, target, timestamp, event_id = reaction
        if kind in UNDOES and target:
            kept = [p for p in passed if p[2] != target]
            if len(kept) != len(passed):
                passed.clear()
                passed.extend(kept)
            return
        try:
            p = slate.items.index(item_id)  # type: ignore[arg-type]
        except ValueError:
            return  # not about this slate: says nothing about reading order
        slate.reacted.add(item_id)  # type: ignore[arg-type]
        if p <= slate.read_to:
            return
        for above in slate.items[max(slate.read_to, 0):p]:
            if above not in slate.reacted:
                passed.append((above, timestamp, event_id))
        slate.read_to = p

    def _remember(self, seq: int, user: tuple[str, str], reaction: Reaction) -> None:
        self._recent.add(seq, user, reaction)

    def advance(self, position: int) -> None:
        """Every event up to ``position`` has been observed (a rebuild that read them elsewhere)."""
        with self._lock:
            self.position = max(self.position, position)

    def clear(self, position: int = 0) -> None:
        """Forget every slate, reading and recent reaction; the next events observed come after
        ``position``."""
        with self._lock:
            self._readers.clear()
            self._recent.clear(position)
            self.position = position
            self.unplaced = 0

    def copy(self) -> dict[str, Any]:
        """What the fold holds, copied (the caller keeps events and slates out meanwhile; a slate's
        reactions and a reader's passed items change in place, so they are copied too);
        :func:`encode_examined` turns it into plain data after the locks are released."""
        with self._lock:
            readers = [(user, [(s.items, s.key, set(s.reacted), s.read_to, s.base) for s in r.slates], list(r.passed), r.complete)
                       for user, r in self._readers.items()]
            return {"readers": readers, "recent": self._recent.frozen(), "position": self.position,
                    "unplaced": self.unplaced}

    def load(self, data: Mapping[str, Any]) -> None:
        """Replace the fold with :func:`encode_examined`'s data (least recently served user first)."""
        readers: OrderedDict[tuple[str, str], _Reader] = OrderedDict()
        for app, user, slates, passed, complete in data["readers"]:
            readers[(app, user)] = _Reader(
                [_Slate(list(items), (int(key[0]), float(key[1]), str(key[2])), set(reacted), int(read_to),
                        tuple((p[0], float(p[1]), p[2]) for p in base))
                 for items, key, reacted, read_to, base in slates],
                deque(((p[0], float(p[1]), p[2]) for p in passed), maxlen=self.per_user), bool(complete))
        recent: RecentIndex[tuple[str, str], Reaction] = load_recent(
            self.max_recent, data["recent"], lambda k: (k[0], k[1]), lambda v: (v[0], v[1], v[2], float(v[3]), v[4]))
        with self._lock:
            self._readers, self._recent = readers, recent
            self.position = int(data["position"])
            self.unplaced = int(data["unplaced"])

    def empty_like(self) -> Examined:
        """An instance with this one's settings and nothing folded."""
        return Examined(self.max_users, self.per_user, self.reactions, self.keep, self.max_recent)

    def forget(self, app: str, matches: Callable[[str], bool]) -> int:
        """Drop a deleted user's slates, what they read past and their recent reactions
        (``matches`` tells the user's id); returns how many slates."""
        with self._lock:
            users = [u for u in self._readers if u[0] == app and matches(u[1])]
            dropped = sum(len(self._readers.pop(u).slates) for u in users)
            self._recent.discard({u for u in self._recent.keys() if u[0] == app and matches(u[1])})
            return dropped

    def users(self, app: str) -> set[str]:
        """The users of ``app`` with slates kept."""
        with self._lock:
            return {u[1] for u in self._readers if u[0] == app}

    def slates(self, app: str, user_id: str) -> list[dict[str, Any]]:
        """The user's latest slates, oldest first: items, when served, the request, what they
        reacted to."""
        with self._lock:
            reader = self._readers.get((app, user_id))
            if reader is None:
                return []
            return [{"items": list(s.items), "event_seq": s.key[0], "served_at": s.key[1], "request_id": s.key[2],
                     "reacted": sorted(s.reacted)} for s in reader.slates]

    def passed(self, app: str, user_id: str | None) -> list[Passed]:
        """The items ``user_id`` passed over, oldest first (empty for an unknown user)."""
        if user_id is None:
            return []
        with self._lock:
            reader = self._readers.get((app, user_id))
            return list(reader.passed) if reader is not None else []

    def readings(self) -> dict[tuple[str, str], tuple[list[str], list[Passed]]]:
        """Every user's current slate and what they passed over: the fold workers compare."""
        with self._lock:
            return {user: (list(r.slates[-1].items), list(r.passed)) for user, r in self._readers.items()}


def encode_examined(copied: Mapping[str, Any]) -> dict[str, Any]:
    """:meth:`Examined.copy` as plain data (JSON: lists, strings and numbers)."""
    readers = [[user[0], user[1],
                [[items, list(key), sorted(reacted), read_to, [list(p) for p in base]]
                 for items, key, reacted, read_to, base in slates],
                [list(p) for p in passed], complete]
               for user, slates, passed, complete in copied["readers"]]
    return {"readers": readers, "recent": recent_entries(copied["recent"]),
            "position": copied["position"], "unplaced": copied["unplaced"]}
