"""Memory: building large folds, and the cyclic collector's pauses."""

from __future__ import annotations

import gc
import logging
import time
from contextlib import contextmanager
from typing import Iterator

log = logging.getLogger(__name__)


@contextmanager
def collector_paused() -> Iterator[None]:
    """Pause the cyclic garbage collector while building many objects that hold no reference
    cycles (restoring snapshots): otherwise it walks the growing heap again and again (on ML-1M
    the user states take 0.8 s to build with it paused, 2.1 to 2.8 s without).

    >>> with collector_paused():
    ...     gc.isenabled()
    False
    """
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def freeze_long_lived() -> None:
    """Move every object alive now out of the cyclic collector's walks (``gc.freeze``), after a
    full pass: what a process built at start-up lives as long as it does, and each full pass
    would walk it again (300,000 objects after a worker's start: ~0.2 s with the interpreter
    held, on a 2-core AMD EPYC). Refcounting still frees them."""
    gc.collect()
    gc.freeze()


class CollectorPauses:
    """Times the cyclic collector's passes in this process (``gc.callbacks``): how many per
    generation, the seconds they held the interpreter, the longest; a pass of at least
    ``slow_s`` is logged (a full pass walks every tracked object: with millions of them it is a
    latency tail of every request in flight).

    >>> pauses = CollectorPauses.install()
    >>> _ = gc.collect(2)
    >>> pauses.count[2] >= 1 and pauses.seconds[2] > 0
    True
    >>> CollectorPauses.install() is pauses  # one per process
    True
    """

    _installed: CollectorPauses | None = None

    def __init__(self, slow_s: float = 0.25) -> None:
        self.slow_s = slow_s
        self.count = [0, 0, 0]
        self.seconds = [0.0, 0.0, 0.0]
        self.longest = [0.0, 0.0, 0.0]
        self._started = 0.0
        self._started_cpu = 0.0

    @classmethod
    def install(cls, slow_s: float = 0.25) -> CollectorPauses:
        """The process's monitor, added to ``gc.callbacks`` on first use."""
        if cls._installed is None:
            cls._installed = cls(slow_s)
            gc.callbacks.append(cls._installed._callback)
        return cls._installed

    def _callback(self, phase: str, info: dict) -> None:
        # runs with the interpreter lock held, as the pass itself: nothing else runs meanwhile
        if phase == "start":
            self._started, self._started_cpu = time.perf_counter(), time.thread_time()
            return
        took = time.perf_counter() - self._started
        g = info["generation"]
        self.count[g] += 1
        self.seconds[g] += took
        if took > self.longest[g]:
            self.longest[g] = took
        if took >= self.slow_s:
            # the thread's CPU time tells the pass's own work from the wait for a core
            log.warning("garbage collection of generation %d held the interpreter %.0f ms (%.0f ms of CPU, %d collected)",
                        g, took * 1e3, (time.thread_time() - self._started_cpu) * 1e3, info.get("collected", 0))
