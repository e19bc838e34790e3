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

Only each user's latest slate is kept (the one their next events are about), in memory, for the
users seen most recently; a restart forgets them, as it forgets nothing else of weight: these are
seconds-to-minutes signals of the current session.
"""

from __future__ import annotations

import threading
from collections import OrderedDict, deque
from dataclasses import dataclass, field
from typing import Iterable

from ..events import DEFAULT_TYPES, TARGETED, UNDOES, Event

# Events that show the user read down to their item: every type that reacts to an item rather
# than taking back an earlier event (undo, unblock); a service passes its own table.
READ_TO = frozenset(DEFAULT_TYPES) - TARGETED


@dataclass(frozen=True, slots=True)
class Passed:
    """An item the user read past at ``timestamp``, as event ``event_id`` (the reaction below it) showed."""

    item_id: str
    timestamp: float
    event_id: str | None = None


@dataclass
class _Slate:
    items: list[str]
    reacted: set[str] = field(default_factory=set)
    read_to: int = -1  # lowest position with a reaction so far


class Examined:
    """Each user's latest slate and the items they passed over (newest last, ``per_user`` at most)."""

    def __init__(self, max_users: int = 100_000, per_user: int = 50, reactions: Iterable[str] = READ_TO) -> None:
        self.reactions = frozenset(reactions) - TARGETED  # the app's own event types count too
        self.max_users = max_users
        self.per_user = per_user
        self._slates: OrderedDict[tuple[str, str], _Slate] = OrderedDict()  # least recently served first
        self._passed: dict[tuple[str, str], deque[Passed]] = {}
        self._lock = threading.Lock()

    def served(self, app: str, user_id: str, slate: list[str]) -> None:
        """The slate the user was just shown, top first (replaces their previous one)."""
        key = (app, user_id)
        with self._lock:
            self._slates[key] = _Slate(list(slate))
            self._slates.move_to_end(key)
            while len(self._slates) > self.max_users:
                old, _ = self._slates.popitem(last=False)
                self._passed.pop(old, None)

    def observe(self, events: Iterable[Event]) -> None:
        """Committed events: a reaction to a slate item marks the unreacted items above it as
        passed; ``undo`` of that reaction takes back what it showed."""
        with self._lock:
            for e in events:
                if e.type in UNDOES and e.target:
                    self._undo(e.app, e.user_id, e.target)
                    continue
                if e.item_id is None or e.type not in self.reactions:
                    continue
                key = (e.app, e.user_id)
                slate = self._slates.get(key)
                if slate is None:
                    continue
                try:
                    p = slate.items.index(e.item_id)
                except ValueError:
                    continue
                slate.reacted.add(e.item_id)
                if p <= slate.read_to:
                    continue
                passed = self._passed.setdefault(key, deque(maxlen=self.per_user))
                for above in slate.items[max(slate.read_to, 0):p]:
                    if above not in slate.reacted:
                        passed.append(Passed(above, e.timestamp, e.event_id))
                slate.read_to = p

    def _undo(self, app: str, user_id: str, event_id: str) -> None:
        passed = self._passed.get((app, user_id))
        if passed:
            kept = [p for p in passed if p.event_id != event_id]
            passed.clear()
            passed.extend(kept)

    def passed(self, app: str, user_id: str | None) -> list[Passed]:
        """The items ``user_id`` passed over, oldest first (empty for an unknown user)."""
        if user_id is None:
            return []
        with self._lock:
            return list(self._passed.get((app, user_id), ()))
