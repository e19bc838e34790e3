"""No global lock on the read path: requests for different users run at the same time, and
writes do not wait for reads."""

from __future__ import annotations

import threading
import time

from liverec.config import Settings
from liverec.events import Event
from liverec.recommend.cooccurrence import CooccurrenceScorer
from liverec.recommend.scoring import Scored
from liverec.runtime.compose import build_service

PAUSE = 0.3


class SlowScorer(CooccurrenceScorer):
    """The baseline, with a pause inside scoring (a slow model) that records when it ran."""

    def __init__(self) -> None:
        super().__init__()
        self.spans: list[tuple[float, float]] = []

    def score(self, app, state, n) -> Scored:
        start = time.perf_counter()
        time.sleep(PAUSE)  # releases the interpreter lock, as a model's forward pass does
        out = super().score(app, state, n)
        self.spans.append((start, time.perf_counter()))
        return out


def _service(tmp_path):
    scorer = SlowScorer()
    svc = build_service(Settings(data_dir=tmp_path / "data"), scorer=scorer)
    svc.start()
    svc.ingest_events([Event("a", f"e{u}-{k}", f"u{u}", "view", 100.0 + k, f"i{(u + k) % 7}")
                       for u in range(4) for k in range(5)])
    return svc, scorer


def test_two_slow_requests_for_different_users_overlap(tmp_path):
    svc, scorer = _service(tmp_path)
    try:
        threads = [threading.Thread(target=svc.recommend, args=("a", f"u{u}")) for u in (1, 2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        (s1, e1), (s2, e2) = scorer.spans
        overlap = min(e1, e2) - max(s1, s2)
        assert overlap > 0.5 * PAUSE, f"requests ran one after the other: {scorer.spans}"
    finally:
        svc.close()


def test_a_write_does_not_wait_for_a_slow_read(tmp_path):
    svc, _ = _service(tmp_path)
    try:
        reader = threading.Thread(target=svc.recommend, args=("a", "u1"))
        reader.start()
        time.sleep(0.05)  # the read is inside the slow scorer now
        start = time.perf_counter()
        svc.ingest_events([Event("a", "late", "u1", "like", 200.0, "i3")])
        took = time.perf_counter() - start
        state = svc.state.get("a", "u1")
        reader.join()
        assert took < 0.5 * PAUSE, f"the write waited {took:.3f} s for the read"
        assert state is not None and "i3" in state.liked
    finally:
        svc.close()
