"""A bounded index of the newest log entries by key, shared by the ranking folds that must decide
late-arriving impressions from feedback already folded (rewards, items read past).

>>> index = RecentIndex(limit=2)
>>> index.add(1, "u", "a"); index.add(2, "v", "b"); index.add(3, "u", "c")
>>> index.get("u"), index.horizon
(((3, 'c'),), 1)
"""

from __future__ import annotations

from collections import deque
from typing import Generic, Hashable, TypeVar

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


class RecentIndex(Generic[K, V]):
    """The last ``limit`` entries (log position, value) over every key, each key's in log order.

    ``horizon`` is the position of the newest entry dropped: whatever is at or below it may be
    gone, so a reader asking about earlier positions knows its answer may be incomplete.
    """

    def __init__(self, limit: int) -> None:
        self.limit = limit
        # key -> its entries; tuples, replaced on change (a key holds a few): of numbers and
        # strings alone, the collector stops tracking them
        self._by_key: dict[K, tuple[tuple[int, V], ...]] = {}
        # every entry in log order, value included: a snapshot copies this deque alone, the
        # by-key lists (which change in place) are derived from it
        self._order: deque[tuple[int, K, V]] = deque()
        self.horizon = 0

    def add(self, seq: int, key: K, value: V) -> None:
        self._by_key[key] = self._by_key.get(key, ()) + ((seq, value),)
        self._order.append((seq, key, value))
        while len(self._order) > self.limit:
            old, old_key, _ = self._order.popleft()
            entries = self._by_key[old_key]  # the key's oldest is this one: both are in log order
            if len(entries) > 1:
                self._by_key[old_key] = entries[1:]
            else:
                del self._by_key[old_key]
            self.horizon = old

    def get(self, key: K) -> tuple[tuple[int, V], ...]:
        return self._by_key.get(key, ())

    def keys(self) -> list[K]:
        return list(self._by_key)

    def discard(self, keys: set[K]) -> int:
        """Remove every entry of ``keys`` (a deleted user's); returns how many. The horizon stays:
        what was dropped at the limit is unknown either way."""
        removed = sum(len(self._by_key.pop(k, ())) for k in keys)
        if removed:
            self._order = deque(entry for entry in self._order if entry[1] not in keys)
        return removed

    def frozen(self) -> tuple[list[tuple[int, K, V]], int]:
        """(entries in log order, horizon): a copy made in one pass over a list, for a snapshot
        read after the caller's locks are released."""
        return list(self._order), self.horizon

    def clear(self, horizon: int = 0) -> None:
        self._by_key.clear()
        self._order.clear()
        self.horizon = horizon
