"""Keeping a process's folds current by following the shared log.

Every in-memory structure of a process (user state, co-occurrence counters, the catalog index,
reward tracking) is a fold over the durable log. A :class:`LogFollower` reads what was committed
after the last position it applied and hands it, in commit order, to the process's folds: events
to ``apply_events``, other changes (item upserts, user deletions) to ``apply_change``.

The request path calls :meth:`LogFollower.catch_up` before reading a user's state: one cheap
query (``EventLog.heads``) when nothing is new, so an event acknowledged by *any* process is
reflected in the next answer of *every* process (read-your-writes across workers). On SQLite
even that query is skipped while ``PRAGMA data_version`` says no other connection committed.
Writers that appended call it too (``force``: their own commits do not move that version), so
local and remote events take the same path into the folds.

Under load one heads query serves many requests: the API notes when each request arrived
(:data:`ARRIVED`), and a catch-up skips its query when a check that *started after* that moment
has already been applied. Whatever was acknowledged before the request was sent committed
before that check started, so read-your-writes holds; concurrent requests share the check, and
a request that already caught up (auth does, before the handler) does not ask again.

Order: both backends commit appends and changes in sequence order (SQLite serialises writers;
PostgreSQL appends take an advisory lock), and a change records the event head it committed
after, so interleaving events and changes by that number reproduces the commit order.
"""

from __future__ import annotations

import threading
import time
from contextvars import ContextVar
from typing import Callable

from ..events import Event
from ..store.base import Change, EventLog


#: ``time.monotonic()`` when the request being served arrived (the API sets it per request); unset
#: outside requests, where every catch-up asks the log.
ARRIVED: ContextVar[float | None] = ContextVar("liverec_request_arrived", default=None)


class LogFollower:
    """Applies the log after ``(event_seq, change_seq)`` to a process's folds, in commit order."""

    def __init__(
        self,
        log: EventLog,
        apply_events: Callable[[list[Event]], None],
        apply_change: Callable[[Change], None],
        event_seq: int = 0,
        change_seq: int = 0,
        batch: int = 5_000,
        settle: Callable[[], None] | None = None,
    ) -> None:
        self.log = log
        self.apply_events = apply_events
        self.apply_change = apply_change
        # called once a catch-up has applied everything (folds that apply a run of changes at once)
        self.settle = settle
        self.event_seq = event_seq
        self.change_seq = change_seq
        self.batch = batch
        self.lock = threading.RLock()  # one catch-up at a time; readers that find work wait for it
        self.applied_events = 0
        # The log positions of the events being handed to ``apply_events`` (one per event), for
        # folds that record where in the log they stand.
        self.applying: list[int] = []
        self._version: int | None = None  # the log's version when this process last caught up
        self._fresh_since = float("-inf")  # monotonic start of the latest check applied in full

    @property
    def position(self) -> tuple[int, int]:
        return self.event_seq, self.change_seq

    def behind(self, force: bool = False) -> tuple[tuple[int, int] | None, int | None]:
        """(the log's heads when they are past what this process applied, else ``None``; the
        log's version read before them). ``force``: ask for the heads even if the version has
        not moved (after this process's own commits)."""
        version = self.log.version()
        if not force and version is not None and version == self._version:
            return None, version
        heads = self.log.heads()
        return (heads if heads[0] > self.event_seq or heads[1] > self.change_seq else None), version

    def catch_up(self, force: bool = False) -> int:
        """Apply everything committed up to now; returns how many events were applied.

        ``force`` after a commit of this process's own (see :meth:`behind`). Without it, a
        request (:data:`ARRIVED`) that a check started after its arrival already covered returns
        at once."""
        if not force:
            arrived = ARRIVED.get()
            if arrived is not None and self._fresh_since >= arrived:
                return 0
        started = time.monotonic()
        heads, version = self.behind(force)
        if heads is None:
            self._version = version
            if self.lock.acquire(blocking=False):  # not while another thread is still applying
                self._fresh(started)
                self.lock.release()
            return 0
        with self.lock:
            applied = self._apply_until(*heads)
            self._version = version  # read before the heads: a later commit moves it again
            self._fresh(started)
            return applied

    def _fresh(self, started: float) -> None:
        # everything committed before ``started`` is applied (a thread that checked later may
        # have moved it further already)
        if started > self._fresh_since:
            self._fresh_since = started

    def _apply_until(self, event_head: int, change_head: int) -> int:
        if event_head <= self.event_seq and change_head <= self.change_seq:
            return 0  # another thread caught up while this one waited
        changes = [c for c in self.log.changes(self.change_seq) if c.seq <= change_head] if change_head > self.change_seq else []
        applied = 0
        pending: list[Event] = []
        positions: list[int] = []
        seq = self.event_seq
        cursor = 0

        def flush() -> None:
            nonlocal applied, pending, positions
            if pending:
                self.applying = positions
                self.apply_events(pending)
                applied += len(pending)
                pending, positions = [], []
            self.event_seq = seq

        if event_head > self.event_seq:
            for s, event in self.log.scan(after_seq=self.event_seq):
                if s > event_head:
                    break
                # changes committed before this event come first
                while cursor < len(changes) and changes[cursor].event_seq < s:
                    flush()
                    self.apply_change(changes[cursor])
                    self.change_seq = changes[cursor].seq
                    cursor += 1
                pending.append(event)
                positions.append(s)
                seq = s
                if len(pending) >= self.batch:
                    flush()
        seq = max(seq, event_head)
        flush()
        for change in changes[cursor:]:
            self.apply_change(change)
            self.change_seq = change.seq
        self.change_seq = max(self.change_seq, change_head)
        if self.settle is not None:
            self.settle()
        self.applied_events += applied
        return applied
