"""Memory: building large folds, the cyclic collector's pauses, and handing freed memory back."""

from __future__ import annotations

import ctypes
import gc
import logging
import os
import threading
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
        self.census_every_s = 60.0  # a census of what a slow full pass walked, at most this often
        self._next_census = 0.0

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
            # the thread's CPU time tells the pass's own work from the wait for a core; what the
            # pass walked (the tracked objects left, by type) tells what to keep out of its way
            cpu = time.thread_time() - self._started_cpu
            walked = ""
            if g == 2 and time.monotonic() >= self._next_census:
                self._next_census = time.monotonic() + self.census_every_s
                walked = "; walked: " + census()
            log.warning("garbage collection of generation %d held the interpreter %.0f ms (%.0f ms of CPU, %d collected)%s",
                        g, took * 1e3, cpu * 1e3, info.get("collected", 0), walked)


def census(top: int = 8) -> str:
    """The objects the cyclic collector tracks outside the freeze, by type: the count and the
    most common types (one pass over them: ~10 ms for 100,000; only for slow passes)."""
    counts: dict[str, int] = {}
    for obj in gc.get_objects():
        name = type(obj).__qualname__
        counts[name] = counts.get(name, 0) + 1
    common = sorted(counts.items(), key=lambda kv: -kv[1])[:top]
    return f"{sum(counts.values())} tracked (" + ", ".join(f"{name} {n}" for name, n in common) + ")"


class HeapTrimmer:
    """Hands memory the allocator holds free back to the system now and then (glibc's
    ``malloc_trim``), from a thread of its own.

    A serving process frees as much as it allocates once its folds are full, but glibc keeps
    freed pages inside its heaps when a live allocation sits above them: every item upsert
    builds a new scorer (copies of the item matrices, a few MB), every hot-swap a new model, and
    the old ones are freed between the new ones' blocks. Without trimming the resident size of a
    worker grows with that churn, not with what it holds (``benchmarks/memory_probe.py``: 600
    upserts grew a worker by 67 MB, of which a trim returned 65 MB). A pass takes a
    few milliseconds with an arena's lock held (allocations of other threads wait): every 30 s
    it is noise. Other allocators (musl, jemalloc) return memory themselves: no thread then.

    >>> trimmer = HeapTrimmer(interval_s=3600)
    >>> trimmer.trim() >= 0 if trimmer.available else True
    True
    """

    def __init__(self, interval_s: float = 30.0) -> None:
        self.interval_s = interval_s
        self.passes = 0
        self.seconds = 0.0
        self.returned = 0  # bytes of resident memory the passes gave back, as /proc measured it
        self._trim = _malloc_trim()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def available(self) -> bool:
        return self._trim is not None

    def trim(self) -> int:
        """One pass; the bytes of resident memory it returned."""
        if self._trim is None:
            return 0
        before = resident_bytes()
        started = time.perf_counter()
        self._trim(0)
        self.seconds += time.perf_counter() - started
        self.passes += 1
        returned = max(0, before - resident_bytes())
        self.returned += returned
        return returned

    def start(self) -> None:
        if self._trim is None or self.interval_s <= 0 or self._thread is not None:
            return
        self._thread = threading.Thread(target=self._run, name="liverec-heap-trim", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            self.trim()


def _malloc_trim():
    """glibc's ``malloc_trim`` (``None`` elsewhere)."""
    try:
        libc = ctypes.CDLL(None)
        trim = libc.malloc_trim
    except (OSError, AttributeError):
        return None
    trim.argtypes, trim.restype = [ctypes.c_size_t], ctypes.c_int
    return trim


_PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


def resident_bytes() -> int:
    """This process's resident set size (Linux ``/proc``; 0 where there is none)."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * _PAGE
    except OSError:
        return 0
