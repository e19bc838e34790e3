import gc
import logging
import time

import pytest

from liverec.memory import CollectorPauses, HeapTrimmer, resident_bytes


def test_trimming_hands_back_pages_freed_below_live_blocks():
    trimmer = HeapTrimmer(interval_s=0)
    if not trimmer.available:
        pytest.skip("not glibc: the allocator returns memory itself")
    # 200 MB in 4 KB blocks (glibc's heap, below its mmap threshold); every 64th kept alive keeps
    # the heap's top where it is, so only a trim returns the pages freed between them
    blocks = [bytearray(4096) for _ in range(50_000)]
    kept = blocks[::64]
    del blocks
    before = resident_bytes()
    returned = trimmer.trim()
    assert returned > 50 * 2**20, returned
    assert resident_bytes() < before - 50 * 2**20
    assert trimmer.passes == 1 and trimmer.returned == returned and trimmer.seconds > 0
    assert len(kept) == 782


def test_the_trimming_thread_runs_on_its_interval_and_stops():
    trimmer = HeapTrimmer(interval_s=0.01)
    if not trimmer.available:
        pytest.skip("not glibc")
    trimmer.start()
    deadline = time.monotonic() + 5
    while trimmer.passes < 3 and time.monotonic() < deadline:
        time.sleep(0.01)
    trimmer.stop()
    assert trimmer.passes >= 3


def test_a_slow_full_pass_is_logged_with_what_it_walked(caplog):
    class Walked:
        pass

    kept = [Walked() for _ in range(100_000)]
    pauses = CollectorPauses(slow_s=0.0)  # every pass counts as slow here
    gc.callbacks.append(pauses._callback)
    try:
        with caplog.at_level(logging.WARNING, logger="liverec.memory"):
            gc.collect(2)
            gc.collect(2)  # a second slow pass within the minute: no second census
    finally:
        gc.callbacks.remove(pauses._callback)
    lines = [r.getMessage() for r in caplog.records if "generation 2" in r.getMessage()]
    census = [line for line in lines if "walked:" in line]
    assert len(lines) >= 2 and len(census) == 1, lines  # one census a minute at most
    assert "Walked 100000" in census[0], census[0]
    assert len(kept) == 100_000
