"""Online user state: a pure fold over the event log.

For every (app, user) the state holds the recent interaction sequence (bounded) and the feedback
sets (blocks by scope, likes, dislikes, skips). ``UserState.apply`` is the whole fold; applying
events live must give exactly the state that rebuilding from the log gives after a restart
(``tests/test_state.py`` checks that on random interleavings).

``undo`` events revert an earlier event of the same user. Because an undo can reach back past
the bounded sequence, the store rebuilds that user's state from their events in the log, with
the undone events left out: the same rule the rebuild applies, so live == rebuild still holds.

Reads never create state: :meth:`StateStore.get` returns ``None`` for an unknown user.

Copy-on-write: a published :class:`UserState` is never mutated. :meth:`StateStore.apply_batch`
folds a committed batch into copies of the users it touches and publishes them when the whole
batch is folded, so a request reads its user's state without a lock and sees a consistent prefix
of the user's events, never half a batch.
"""

from __future__ import annotations

import threading
from collections import deque
from dataclasses import dataclass
from typing import Callable, Iterable, Mapping

from .events import BLOCKS, DEFAULT_TYPES, DISLIKES, LIKE_LIKE, SKIPS, UNBLOCKS, UNDOES, Event, TypeSpec

DEFAULT_SEQUENCE_LENGTH = 200


@dataclass(frozen=True, slots=True)
class Interaction:
    """One position of a user's behaviour sequence."""

    item_id: str | None
    type: str
    value: float | None
    timestamp: float
    text: str | None = None
    event_id: str | None = None


class UserState:
    """The fold of one user's events. Mutated only through :meth:`apply`."""

    __slots__ = ("sequence", "consumed", "blocked", "liked", "disliked", "skipped", "n_events", "last_timestamp")

    def __init__(self, max_len: int = DEFAULT_SEQUENCE_LENGTH):
        self.sequence: deque[Interaction] = deque(maxlen=max_len)
        self.consumed: set[str] = set()  # items with a positive interaction, never trimmed
        self.blocked: dict[str, set[str]] = {}  # scope -> targets ("item" -> item ids)
        self.liked: dict[str, float] = {}  # item -> time of the latest like/favorite/share/purchase
        self.disliked: dict[tuple[str, str], float] = {}  # (scope, target) -> time
        self.skipped: dict[tuple[str, str], float] = {}  # (scope, target) -> time
        self.n_events = 0
        self.last_timestamp = 0.0

    def apply(self, event: Event, spec: TypeSpec) -> None:
        """Fold one event into the state."""
        self.n_events += 1
        self.last_timestamp = max(self.last_timestamp, event.timestamp)
        kind = event.type
        target = event.item_id if event.scope == "item" else event.target
        if spec.in_sequence:
            self.sequence.append(
                Interaction(event.item_id, kind, event.value, event.timestamp, event.text, event.event_id)
            )
        if spec.polarity == "positive" and event.item_id is not None:
            self.consumed.add(event.item_id)
        if kind in BLOCKS and target is not None:
            self.blocked.setdefault(event.scope, set()).add(target)
        elif kind in UNBLOCKS and target is not None:
            targets = self.blocked.get(event.scope)
            if targets is not None:
                targets.discard(target)
                if not targets:
                    del self.blocked[event.scope]
        elif kind in LIKE_LIKE and event.item_id is not None:
            self.liked[event.item_id] = event.timestamp
            self.disliked.pop(("item", event.item_id), None)
        elif kind in DISLIKES and target is not None:
            self.disliked[(event.scope, target)] = event.timestamp
            if event.scope == "item":
                self.liked.pop(target, None)
        elif kind in SKIPS and target is not None:
            self.skipped[(event.scope, target)] = event.timestamp

    def copy(self) -> "UserState":
        """An independent copy (the fold of the same events), for copy-on-write application."""
        other = UserState.__new__(UserState)
        other.sequence = deque(self.sequence, maxlen=self.sequence.maxlen)
        other.consumed = set(self.consumed)
        other.blocked = {scope: set(targets) for scope, targets in self.blocked.items()}
        other.liked = dict(self.liked)
        other.disliked = dict(self.disliked)
        other.skipped = dict(self.skipped)
        other.n_events = self.n_events
        other.last_timestamp = self.last_timestamp
        return other

    def is_blocked(self, item_id: str, attributes: Mapping[str, Iterable[str]] | None = None) -> bool:
        """Whether ``item_id`` is blocked itself or through one of its attribute values.

        ``attributes`` maps scope name (e.g. ``category``, ``creator``) to the item's values.
        """
        if item_id in self.blocked.get("item", ()):
            return True
        if attributes:
            for scope, targets in self.blocked.items():
                if scope == "item":
                    continue
                values = attributes.get(scope)
                if values and not targets.isdisjoint(values):
                    return True
        return False

    def to_dict(self) -> dict:
        """A canonical, comparable form (used by tests and snapshots)."""
        return {
            "sequence": [
                [i.item_id, i.type, i.value, i.timestamp, i.text, i.event_id] for i in self.sequence
            ],
            "consumed": sorted(self.consumed),
            "blocked": {k: sorted(v) for k, v in sorted(self.blocked.items())},
            "liked": dict(sorted(self.liked.items())),
            "disliked": sorted([list(k) + [t] for k, t in self.disliked.items()]),
            "skipped": sorted([list(k) + [t] for k, t in self.skipped.items()]),
            "n_events": self.n_events,
            "last_timestamp": self.last_timestamp,
        }


def fold_user(events: Iterable[Event], types: Mapping[str, TypeSpec], max_len: int) -> UserState:
    """Build one user's state from their events in log order, honouring ``undo``."""
    events = list(events)
    # An undo reverts an earlier, non-undo event of this user; one naming an event that had not
    # arrived yet reverts nothing (live application could not have known it either).
    seen: set[str] = set()
    undone: set[str] = set()
    for e in events:
        if e.type in UNDOES:
            if e.target in seen:
                undone.add(e.target)  # type: ignore[arg-type]
        else:
            seen.add(e.event_id)
    state = UserState(max_len)
    for event in events:
        if event.type in UNDOES or event.event_id in undone:
            continue
        state.apply(event, types[event.type])
    return state


class StateStore:
    """All users' online state, in memory, keyed by (app, user_id).

    ``user_events`` fetches one user's events from the log (in log order); it is needed only
    for ``undo``, which rebuilds that user from the log.
    """

    def __init__(
        self,
        types: Mapping[str, TypeSpec] | None = None,
        max_len: int = DEFAULT_SEQUENCE_LENGTH,
        user_events: Callable[[str, str], list[Event]] | None = None,
    ):
        self.types = dict(types or DEFAULT_TYPES)
        self.max_len = max_len
        self._user_events = user_events
        self._users: dict[tuple[str, str], UserState] = {}
        self.lock = threading.RLock()

    def apply(self, event: Event) -> None:
        """Fold one committed event into its user's state (events arrive in log order)."""
        self.apply_batch([event])

    def apply_batch(self, events: Iterable[Event]) -> None:
        """Fold committed events (in log order) into copies of their users' states, then publish
        every copy at once: readers holding a state keep an unchanged object."""
        with self.lock:
            pending: dict[tuple[str, str], UserState] = {}
            for event in events:
                key = (event.app, event.user_id)
                if event.type in UNDOES:
                    pending[key] = self._refold_until(key, event)
                    continue
                state = pending.get(key)
                if state is None:
                    current = self._users.get(key)
                    state = pending[key] = current.copy() if current is not None else UserState(self.max_len)
                state.apply(event, self.types[event.type])
            self._users.update(pending)  # one dict update per batch: each key is swapped whole

    def _refold_until(self, key: tuple[str, str], undo: Event) -> UserState:
        """The user's state rebuilt from the log up to ``undo`` (an undo can reach past the
        bounded sequence, so it is applied by refolding)."""
        if self._user_events is None:
            raise RuntimeError("undo needs the event log (StateStore(user_events=...))")
        # The log may already hold later events of the same batch: fold up to this undo.
        events = self._user_events(*key)
        ids = [e.event_id for e in events]
        upto = ids.index(undo.event_id) + 1 if undo.event_id in ids else len(events)
        return fold_user(events[:upto], self.types, self.max_len)

    def rebuild(self, events: Iterable[Event]) -> None:
        """Replace all state with the fold of ``events`` (the whole log, in log order)."""
        by_user: dict[tuple[str, str], list[Event]] = {}
        for event in events:
            by_user.setdefault((event.app, event.user_id), []).append(event)
        users = {key: fold_user(evs, self.types, self.max_len) for key, evs in by_user.items()}
        with self.lock:
            self._users = users

    def get(self, app: str, user_id: str) -> UserState | None:
        """The user's state, or ``None`` if the user has no events (never creates state)."""
        return self._users.get((app, user_id))

    def delete(self, app: str, user_id: str) -> bool:
        with self.lock:
            return self._users.pop((app, user_id), None) is not None

    def users(self, app: str) -> list[str]:
        return [u for (a, u) in list(self._users) if a == app]

    def count(self, app: str | None = None) -> int:
        if app is None:
            return len(self._users)
        return sum(1 for (a, _) in list(self._users) if a == app)

    def items(self) -> list[tuple[tuple[str, str], UserState]]:
        """Every (key, state) pair as published now (states are never mutated after publishing)."""
        return list(self._users.items())

    def replace(self, users: dict[tuple[str, str], UserState]) -> None:
        """Install states folded elsewhere (a loaded snapshot)."""
        with self.lock:
            self._users = dict(users)

    def snapshot(self) -> dict[tuple[str, str], dict]:
        """Canonical form of every user's state (for comparisons)."""
        with self.lock:
            return {key: state.to_dict() for key, state in self._users.items()}
