"""One log check serves every request that arrived before it started (runtime.follower.ARRIVED)."""

from __future__ import annotations

import time
from contextlib import contextmanager
from typing import Iterator

from liverec.runtime.follower import ARRIVED, LogFollower


class CountingLog:
    """A log with no events whose heads queries are counted (no cheap version, like PostgreSQL)."""

    def __init__(self) -> None:
        self.asked = 0

    def version(self) -> None:
        return None

    def heads(self) -> tuple[int, int]:
        self.asked += 1
        return (0, 0)


def follower(log: CountingLog) -> LogFollower:
    return LogFollower(log, apply_events=lambda events: None, apply_change=lambda change: None)  # type: ignore[arg-type]


@contextmanager
def request_arriving_now() -> Iterator[None]:
    token = ARRIVED.set(time.monotonic())
    try:
        yield
    finally:
        ARRIVED.reset(token)


def test_a_check_started_after_arrival_covers_the_request():
    log = CountingLog()
    f = follower(log)
    with request_arriving_now():
        f.catch_up()  # the first check of this request: asks
        f.catch_up()  # started after arrival: covered
        f.catch_up()
    assert log.asked == 1


def test_a_request_that_arrived_after_the_last_check_asks_again():
    log = CountingLog()
    f = follower(log)
    f.catch_up()  # outside a request: always asks
    f.catch_up()
    assert log.asked == 2
    with request_arriving_now():  # arrived after those checks
        f.catch_up()
    assert log.asked == 3


def test_forced_catch_ups_always_ask():
    log = CountingLog()
    f = follower(log)
    with request_arriving_now():
        f.catch_up()
        f.catch_up(force=True)  # after this process's own commit
    assert log.asked == 2


class ChangingLog:
    """A log with no events and ``n`` item changes whose reads are counted."""

    def __init__(self, n: int) -> None:
        from liverec.store.base import Change

        self.changes_read = 0
        self._changes = [Change(seq=k + 1, app="a", kind="item", key=f"i{k}", event_seq=0) for k in range(n)]

    def version(self) -> None:
        return None

    def heads(self) -> tuple[int, int]:
        return (0, len(self._changes))

    def changes(self, after_seq: int = 0) -> list:
        self.changes_read += 1
        return [c for c in self._changes if c.seq > after_seq]


def test_changes_are_prepared_outside_the_lock_and_applied_in_order():
    """What needs no order (reading an upserted item, encoding its text) runs before the
    follower's lock; the changes read for it are the ones applied, read once."""
    log = ChangingLog(3)
    prepared: list[tuple[list[str], bool]] = []
    applied: list[tuple[str, bool]] = []
    f = LogFollower(log, apply_events=lambda events: None,  # type: ignore[arg-type]
                    apply_change=lambda c: applied.append((c.key, f.lock._is_owned())),  # type: ignore[attr-defined]
                    prepare=lambda cs: prepared.append(([c.key for c in cs], f.lock._is_owned())))  # type: ignore[attr-defined]
    f.catch_up()
    assert prepared == [(["i0", "i1", "i2"], False)]
    assert applied == [("i0", True), ("i1", True), ("i2", True)]
    assert log.changes_read == 1 and f.change_seq == 3
    f.catch_up()  # nothing new: nothing prepared, nothing read
    assert len(prepared) == 1 and log.changes_read == 1


def test_concurrent_catch_ups_prepare_the_changes_once():
    """Threads that find the same changes pending prepare them once (preparing encodes text:
    every request thread encoding every upserted item's text slowed a loaded server down)."""
    import threading

    log = ChangingLog(2)
    prepared: list[list[str]] = []
    entered = threading.Event()
    release = threading.Event()

    def prepare(changes) -> None:
        prepared.append([c.key for c in changes])
        entered.set()
        release.wait(5)

    f = LogFollower(log, apply_events=lambda events: None, apply_change=lambda c: None, prepare=prepare)  # type: ignore[arg-type]
    threads = [threading.Thread(target=f.catch_up) for _ in range(4)]
    threads[0].start()
    assert entered.wait(5)
    for t in threads[1:]:
        t.start()
    time.sleep(0.1)  # the others reach the prepare step and wait for it
    release.set()
    for t in threads:
        t.join(5)
    assert prepared == [["i0", "i1"]] and f.change_seq == 2
