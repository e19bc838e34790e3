import pytest

from liverec.memory import HeapTrimmer, resident_bytes


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
    import time
    deadline = time.monotonic() + 5
    while trimmer.passes < 3 and time.monotonic() < deadline:
        time.sleep(0.01)
    trimmer.stop()
    assert trimmer.passes >= 3
