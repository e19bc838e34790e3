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
