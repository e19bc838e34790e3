"""Group commit: concurrent ingest calls share one transaction, each gets its own acknowledgement."""

from __future__ import annotations

import threading
import time

from liverec.config import Settings
from liverec.events import Event
from liverec.runtime.compose import build_service
from liverec.state import EVENT_ID


def test_concurrent_batches_share_a_transaction_and_keep_their_own_counts(tmp_path):
    svc = build_service(Settings(data_dir=tmp_path / "data", scorer="cooccurrence"))
    svc.start()
    appends: list[int] = []
    plain = svc.store.events.append

    def slow_append(events):  # a commit long enough for the other callers to queue behind it
        appends.append(len(events))
        time.sleep(0.05)
        return plain(events)

    svc.store.events.append = slow_append  # type: ignore[method-assign]
    answers: dict[int, dict] = {}

    def send(t: int) -> None:
        # every caller also sends "shared", which only the first stored batch may add
        events = [Event("a", f"t{t}-{k}", f"u{t}", "view", 100.0 + k, f"i{k}") for k in range(3)]
        events.append(Event("a", "shared", f"u{t}", "view", 200.0, "i9"))
        answers[t] = svc.ingest_events(events)

    threads = [threading.Thread(target=send, args=(t,)) for t in range(12)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    try:
        assert len(appends) < 12 and sum(appends) == 12 * 4, appends  # fewer commits than requests
        assert sum(a["accepted"] for a in answers.values()) == 12 * 3 + 1
        assert sorted(a["duplicates"] for a in answers.values()) == [0] + [1] * 11
        assert svc.store.events.count() == 37
        # every acknowledged event is already in its user's state
        for t in range(12):
            state = svc.state.get("a", f"u{t}")
            assert state is not None and {f"t{t}-{k}" for k in range(3)} <= {i[EVENT_ID] for i in state.sequence}
    finally:
        svc.close()
