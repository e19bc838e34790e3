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
of the user's events, never half a batch. That is also what makes a snapshot cheap: the
published states captured with :meth:`StateStore.items` stay as they were while
:func:`export_states` turns them into columns (``liverec.runtime.snapshots``), and
:func:`states_from_columns` builds the same states back without refolding the log.
"""

from __future__ import annotations

import threading
from collections import deque
from typing import Any, Callable, Iterable, Iterator, Mapping

import numpy as np

from .events import BLOCKS, DEFAULT_TYPES, DISLIKES, LIKE_LIKE, SKIPS, UNBLOCKS, UNDOES, Event, TypeSpec

DEFAULT_SEQUENCE_LENGTH = 200


# One position of a user's behaviour sequence: an exact tuple (item_id, type, value, timestamp,
# text, event_id), read through the field indexes below or by unpacking. Not a class: the cyclic
# collector stops tracking an exact tuple of strings, numbers and None after its first young pass,
# while an instance of a class stays in every full pass's walk. The sequences are most of what a
# serving process allocates after its start-up freeze (each event adds one), and a walk of them
# was 50-75 % of the full passes' 250-360 ms in the soak (benchmarks/memory_probe.py measures it).
Interaction = tuple[str | None, str, float | None, float, str | None, str | None]
ITEM, TYPE, VALUE, TIMESTAMP, TEXT, EVENT_ID = range(6)
INTERACTION_FIELDS = ("item_id", "type", "value", "timestamp", "text", "event_id")


_BLOCKED, _LIKED, _DISLIKED, _SKIPPED = 2, 4, 8, 16
_OWNS_ALL = 31


class SharedSet:
    """A set that copies in O(what was added lately): a frozen part shared between copies plus a
    small part of its own, folded into a new frozen part once it grows past an eighth of it (so
    each add copies a bounded number of elements, amortised). The consumed items of a user with a
    long history are copied on every folded batch otherwise.

    >>> a = SharedSet(["x"]); b = a.copy(); b.add("y")
    >>> sorted(a), sorted(b), "y" in b, len(b)
    (['x'], ['x', 'y'], True, 2)
    """

    __slots__ = ("_base", "_new")

    def __init__(self, items: Iterable[str] = (), _new: set[str] | None = None) -> None:
        self._base = items if isinstance(items, frozenset) else frozenset(items)
        self._new: set[str] = set() if _new is None else _new

    def __contains__(self, item: object) -> bool:
        return item in self._new or item in self._base

    def __len__(self) -> int:
        return len(self._base) + len(self._new)

    def __iter__(self) -> Iterator[str]:
        yield from self._base
        yield from self._new

    def add(self, item: str) -> None:
        if item in self._base:
            return
        self._new.add(item)
        if len(self._new) > max(64, len(self._base) // 8):
            self._base = self._base | self._new
            self._new = set()

    def copy(self) -> "SharedSet":
        return SharedSet(self._base, set(self._new))


class UserState:
    """The fold of one user's events. Mutated only through :meth:`apply`.

    :meth:`copy` shares the feedback containers with the original and :meth:`apply` copies one
    the first time it changes it (``_owns`` says which this object may change), so folding an
    event into a copy costs the sequence and what the event touches, not the whole history.
    """

    __slots__ = ("sequence", "consumed", "blocked", "liked", "disliked", "skipped", "n_events", "last_timestamp", "_owns")

    def __init__(self, max_len: int = DEFAULT_SEQUENCE_LENGTH):
        self.sequence: deque[Interaction] = deque(maxlen=max_len)
        self.consumed = SharedSet()  # items with a positive interaction, never trimmed
        self.blocked: dict[str, set[str]] = {}  # scope -> targets ("item" -> item ids)
        self.liked: dict[str, float] = {}  # item -> time of the latest like/favorite/share/purchase
        self.disliked: dict[tuple[str, str], float] = {}  # (scope, target) -> time
        self.skipped: dict[tuple[str, str], float] = {}  # (scope, target) -> time
        self.n_events = 0
        self.last_timestamp = 0.0
        self._owns = _OWNS_ALL

    def _own(self, part: int) -> None:
        """Make the container ``part`` this object's own before changing it (copy-on-write)."""
        if self._owns & part:
            return
        if part == _BLOCKED:
            self.blocked = {scope: set(targets) for scope, targets in self.blocked.items()}
        elif part == _LIKED:
            self.liked = dict(self.liked)
        elif part == _DISLIKED:
            self.disliked = dict(self.disliked)
        else:
            self.skipped = dict(self.skipped)
        self._owns |= part

    def apply(self, event: Event, spec: TypeSpec) -> None:
        """Fold one event into the state."""
        self.n_events += 1
        self.last_timestamp = max(self.last_timestamp, event.timestamp)
        kind = event.type
        target = event.item_id if event.scope == "item" else event.target
        if spec.in_sequence:
            self.sequence.append((event.item_id, kind, event.value, event.timestamp, event.text, event.event_id))
        if spec.polarity == "positive" and event.item_id is not None:
            self.consumed.add(event.item_id)
        if kind in BLOCKS and target is not None:
            self._own(_BLOCKED)
            self.blocked.setdefault(event.scope, set()).add(target)
        elif kind in UNBLOCKS and target is not None:
            if event.scope in self.blocked:
                self._own(_BLOCKED)
                targets = self.blocked[event.scope]
                targets.discard(target)
                if not targets:
                    del self.blocked[event.scope]
        elif kind in LIKE_LIKE and event.item_id is not None:
            self._own(_LIKED)
            self.liked[event.item_id] = event.timestamp
            if ("item", event.item_id) in self.disliked:
                self._own(_DISLIKED)
                del self.disliked[("item", event.item_id)]
        elif kind in DISLIKES and target is not None:
            self._own(_DISLIKED)
            self.disliked[(event.scope, target)] = event.timestamp
            if event.scope == "item" and target in self.liked:
                self._own(_LIKED)
                del self.liked[target]
        elif kind in SKIPS and target is not None:
            self._own(_SKIPPED)
            self.skipped[(event.scope, target)] = event.timestamp

    def copy(self) -> "UserState":
        """A copy for copy-on-write application: its own sequence and consumed set, the feedback
        containers shared until :meth:`apply` changes one (neither object's fold is visible to the other)."""
        other = UserState.__new__(UserState)
        other.sequence = deque(self.sequence, maxlen=self.sequence.maxlen)
        other.consumed = self.consumed.copy()
        other.blocked = self.blocked
        other.liked = self.liked
        other.disliked = self.disliked
        other.skipped = self.skipped
        other.n_events = self.n_events
        other.last_timestamp = self.last_timestamp
        other._owns = 0
        # the original is published and never changed again; it may no longer change these either
        self._owns = 0
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
            "sequence": [list(i) for i in self.sequence],
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

    def export_state(self) -> dict[str, Any]:
        """Every user's state as columns (see :func:`export_states`)."""
        return export_states(self.items())

    def load_state(self, columns: Mapping[str, Any]) -> None:
        """Replace all state with the states :func:`export_states` wrote."""
        self.replace(states_from_columns(columns, self.max_len))


# ---- columnar form --------------------------------------------------------------------------------
# A snapshot stores users as flat columns, one entry per user or per element of a user's
# collection, with ``*_offsets`` (n_users + 1) marking each user's slice: numbers as numpy arrays,
# strings as lists (``None`` where a field is unset), so the file format chooses their encoding.

def _offsets(lengths: list[int]) -> np.ndarray:
    out = np.zeros(len(lengths) + 1, dtype=np.int64)
    np.cumsum(lengths, out=out[1:])
    return out


def _floats(values: list[float]) -> np.ndarray:
    return np.array(values, dtype=np.float64) if values else np.zeros(0, dtype=np.float64)


def export_states(items: Iterable[tuple[tuple[str, str], UserState]]) -> dict[str, Any]:
    """Columns of the given published states; the inverse of :func:`states_from_columns`.

    Dict and set members are written in iteration order, so insertion order survives the round
    trip.
    """
    apps: list[str] = []
    users: list[str] = []
    n_events: list[int] = []
    last_timestamp: list[float] = []
    flat: list[Interaction] = []
    lengths: dict[str, list[int]] = {name: [] for name in ("seq", "consumed", "blocked", "liked", "disliked", "skipped")}
    consumed: list[str] = []
    blocked_scope: list[str] = []
    blocked_target: list[str] = []
    liked_item: list[str] = []
    liked_time: list[float] = []
    pairs: dict[str, tuple[list[str], list[str], list[float]]] = {"disliked": ([], [], []), "skipped": ([], [], [])}
    for (app, user), state in items:
        apps.append(app)
        users.append(user)
        n_events.append(state.n_events)
        last_timestamp.append(state.last_timestamp)
        flat.extend(state.sequence)
        lengths["seq"].append(len(state.sequence))
        consumed.extend(state.consumed)
        lengths["consumed"].append(len(state.consumed))
        n_blocked = 0
        for scope, targets in state.blocked.items():
            blocked_scope.extend([scope] * len(targets))
            blocked_target.extend(targets)
            n_blocked += len(targets)
        lengths["blocked"].append(n_blocked)
        liked_item.extend(state.liked)
        liked_time.extend(state.liked.values())
        lengths["liked"].append(len(state.liked))
        for name, feedback in (("disliked", state.disliked), ("skipped", state.skipped)):
            scopes, targets, times = pairs[name]
            for (scope, target), t in feedback.items():
                scopes.append(scope)
                targets.append(target)
                times.append(t)
            lengths[name].append(len(feedback))
    item_ids, kinds, values, timestamps, texts, event_ids = zip(*flat) if flat else ((),) * 6
    columns: dict[str, Any] = {
        "app": apps,
        "user_id": users,
        "n_events": np.array(n_events, dtype=np.int64),
        "last_timestamp": _floats(last_timestamp),
        "seq_item": list(item_ids),
        "seq_type": list(kinds),
        "seq_value": _floats([0.0 if v is None else v for v in values]),
        "seq_has_value": np.array([v is not None for v in values], dtype=np.bool_),
        "seq_timestamp": _floats(list(timestamps)),
        "seq_text": list(texts),
        "seq_event_id": list(event_ids),
        "consumed_item": consumed,
        "blocked_scope": blocked_scope,
        "blocked_target": blocked_target,
        "liked_item": liked_item,
        "liked_time": _floats(liked_time),
    }
    for name, (scopes, targets, times) in pairs.items():
        columns[f"{name}_scope"] = scopes
        columns[f"{name}_target"] = targets
        columns[f"{name}_time"] = _floats(times)
    for name, lens in lengths.items():
        columns[f"{name}_offsets"] = _offsets(lens)
    return columns


def states_from_columns(columns: Mapping[str, Any], max_len: int) -> dict[tuple[str, str], UserState]:
    """The states :func:`export_states` wrote, keyed by (app, user_id)."""
    apps, users = columns["app"], columns["user_id"]
    n_events = columns["n_events"].tolist()
    last_timestamp = columns["last_timestamp"].tolist()
    # Millions of interactions: built in one pass over the columns, then sliced per user.
    values = [v if has else None for v, has in zip(columns["seq_value"].tolist(), columns["seq_has_value"].tolist())]
    interactions = list(zip(columns["seq_item"], columns["seq_type"], values, columns["seq_timestamp"].tolist(),
                            columns["seq_text"], columns["seq_event_id"]))
    seq = columns["seq_offsets"].tolist()
    consumed, consumed_at = columns["consumed_item"], columns["consumed_offsets"].tolist()
    blocked_scope, blocked_target, blocked_at = columns["blocked_scope"], columns["blocked_target"], columns["blocked_offsets"].tolist()
    liked_item, liked_time, liked_at = columns["liked_item"], columns["liked_time"].tolist(), columns["liked_offsets"].tolist()
    feedback = {
        name: (list(zip(columns[f"{name}_scope"], columns[f"{name}_target"])), columns[f"{name}_time"].tolist(),
               columns[f"{name}_offsets"].tolist())
        for name in ("disliked", "skipped")
    }
    disliked_keys, disliked_time, disliked_at = feedback["disliked"]
    skipped_keys, skipped_time, skipped_at = feedback["skipped"]
    out: dict[tuple[str, str], UserState] = {}
    for k, key in enumerate(zip(apps, users)):
        state = UserState(max_len)  # then given containers of its own, built here
        state.sequence.extend(interactions[seq[k]:seq[k + 1]])
        state.consumed = SharedSet(consumed[consumed_at[k]:consumed_at[k + 1]])
        blocked: dict[str, set[str]] = {}
        for b in range(blocked_at[k], blocked_at[k + 1]):
            blocked.setdefault(blocked_scope[b], set()).add(blocked_target[b])
        state.blocked = blocked
        lo, hi = liked_at[k], liked_at[k + 1]
        state.liked = dict(zip(liked_item[lo:hi], liked_time[lo:hi]))
        lo, hi = disliked_at[k], disliked_at[k + 1]
        state.disliked = dict(zip(disliked_keys[lo:hi], disliked_time[lo:hi]))
        lo, hi = skipped_at[k], skipped_at[k + 1]
        state.skipped = dict(zip(skipped_keys[lo:hi], skipped_time[lo:hi]))
        state.n_events = n_events[k]
        state.last_timestamp = last_timestamp[k]
        out[key] = state
    return out
