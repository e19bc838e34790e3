"""Snapshots of the folds: a start from the newest snapshot plus the log after it gives the folds
a start from the whole log gives; anything unusable falls back to the whole log."""

from __future__ import annotations

import logging
import time
import uuid

import numpy as np
import pytest

from liverec.config import Settings
from liverec.runtime import compose, snapshots
from liverec.runtime.compose import build_service
from liverec.runtime.snapshots import SNAPSHOT_APP, SNAPSHOT_NAME, SnapshotWriter, write_snapshot
from liverec.service import Service
from liverec.state import ITEM
from liverec.store import open_store

PG_URL = "postgresql://127.0.0.1:5432/test"
APPS = ("default", "shop")


def _postgres_available() -> str | None:
    try:
        import psycopg

        with psycopg.connect(PG_URL, connect_timeout=2):
            return None
    except Exception as exc:  # noqa: BLE001 - any failure means "no server to test against"
        return f"PostgreSQL at 127.0.0.1:5432/test is not reachable ({type(exc).__name__})"


@pytest.fixture(params=["sqlite", "postgresql"])
def settings(request, tmp_path):
    values = {"data_dir": tmp_path / "data", "scorer": "cooccurrence", "snapshot_interval_s": 0}
    if request.param == "sqlite":
        yield Settings(**values)
        return
    reason = _postgres_available()
    if reason:
        pytest.skip(reason)
    url = f"{PG_URL}?schema=t_{uuid.uuid4().hex[:12]}"
    yield Settings(**values, store_url=url)
    store = open_store(url)
    store.drop()
    store.close()


@pytest.fixture
def sqlite_settings(tmp_path):
    return Settings(data_dir=tmp_path / "data", scorer="cooccurrence", snapshot_interval_s=0)


def started(settings: Settings, **kw) -> Service:
    service = build_service(settings, watch_models=False, **kw)
    service.start()
    return service


def folded_from_whole_log(settings: Settings, monkeypatch) -> Service:
    """A service that ignores any snapshot (the reference every restore is held to)."""
    with monkeypatch.context() as m:
        m.setattr(compose, "restore", lambda service: None)
        return started(settings)


def settle(service: Service, timeout: float = 20.0) -> None:
    """Wait for the background refolds a deletion by another process starts."""
    deadline = time.monotonic() + timeout
    while service._rebuilds:
        assert time.monotonic() < deadline, "counters refold did not finish"
        time.sleep(0.01)


def ev(user, kind, t, item=None, **kw):
    raw = {"user_id": user, "type": kind, "timestamp": t, **kw}
    if item is not None:
        raw["item_id"] = item
    return raw


def first_part(service: Service) -> None:
    t = 1_700_000_000
    service.upsert_items("default", [{"item_id": f"i{k}", "title": f"Item {k}", "categories": ["A" if k % 2 else "B"]}
                                     for k in range(8)])
    service.ingest("default", [
        ev("u1", "view", t, "i1", event_id="d1"), ev("u1", "click", t + 5, "i2"), ev("u1", "like", t + 9, "i3"),
        ev("u1", "rating", t + 12, "i4", value=4.5), ev("u1", "dislike", t + 20, "i5"),
        ev("u1", "skip", t + 25, "i6"), ev("u1", "skip", t + 26, scope="category", target="B"),
        ev("u1", "block", t + 30, scope="category", target="A"), ev("u1", "block", t + 31, "i7"),
        ev("u1", "search", t + 40, text="space operas"), ev("u1", "review", t + 41, "i2", text="great\nfun é"),
        ev("u1", "impression", t + 42, "i0"), ev("u1", "purchase", t + 50, "i2", event_id="d-buy"),
        ev("u2", "view", t + 1, "i1"), ev("u2", "view", t + 2, "i2"), ev("u2", "favorite", t + 3, "i0"),
        ev("u2", "dislike", t + 4, scope="category", target="B"),
        # only u3 pairs i6 with i7: after u3 is deleted that cell must be gone everywhere
        ev("u3", "view", t + 6, "i6"), ev("u3", "click", t + 7, "i7"), ev("u3", "share", t + 8, "i1"),
    ])
    service.ingest("default", [ev("u1", "unblock", t + 60, "i7"), ev("u1", "undo", t + 61, target="d1")])
    service.ingest("shop", [ev(f"s{k % 3}", "view", t + k * 3600, f"p{k % 5}") for k in range(30)]
                   + [ev("s1", "rating", t + 200_000, "p2", value=1.0), ev("s2", "like", t + 200_100, "p4")])
    service.delete_user("shop", "s0")  # deleted before the snapshot: it must not be in it


def second_part(service: Service) -> None:
    t = 1_700_100_000
    service.ingest("default", [
        ev("u1", "view", t, "i0"), ev("u1", "undo", t + 1, target="d-buy"),  # reaches back before the snapshot
        ev("u3", "view", t + 2, "i4"), ev("u4", "like", t + 3, "i3"), ev("u4", "click", t + 4, "i2"),
        ev("u2", "skip", t + 5, "i3"), ev("u2", "block", t + 6, scope="category", target="B"),
    ])
    service.delete_user("default", "u3")  # deleted after the snapshot: the tail says so
    service.ingest("default", [ev("u3", "view", t + 10, "i5"), ev("u3", "view", t + 11, "i6")])  # a new u3
    service.upsert_items("default", [{"item_id": "i1", "title": "Item one, renamed", "categories": ["C"]},
                                     {"item_id": "i9", "title": "New"}])
    # a long gap moves the popularity reference forward (every stored value is rescaled)
    service.ingest("shop", [ev("s1", "view", t + 90 * 86400, "p3"), ev("s3", "view", t + 90 * 86400 + 5, "p1")])


def normalised(pop: dict[str, float]) -> dict[str, float]:
    total = sum(pop.values()) or 1.0
    return {k: v / total for k, v in pop.items() if v}


def nonzero(scores: dict[str, float]) -> dict[str, float]:
    return {k: v for k, v in scores.items() if abs(v) > 1e-9}


def aligned(matrix: np.ndarray, ids_of: list[str], ids: list[str]) -> np.ndarray:
    out = np.zeros((len(ids), len(ids)))
    at = [ids.index(i) for i in ids_of]
    out[np.ix_(at, at)] = matrix
    return out


def assert_same_folds(a: Service, b: Service, exact: bool = False) -> None:
    """Equal user states, and equal counters, scores and neighbours in every app. An item whose
    counts were all subtracted again (a deleted user's) may stay in one id table as zeros."""
    assert a.state.snapshot() == b.state.snapshot()
    for key, state in a.state.items():  # the same containers too, not just equal contents
        other = b.state.get(*key)
        for name in ("sequence", "consumed", "blocked", "liked", "disliked", "skipped"):
            assert type(getattr(state, name)) is type(getattr(other, name)), name
        assert state.sequence.maxlen == other.sequence.maxlen
    tolerance = {"rtol": 0, "atol": 0} if exact else {"rtol": 1e-9, "atol": 1e-9}
    for app in APPS:
        ids_a, ca = a.baseline.matrix(app)
        ids_b, cb = b.baseline.matrix(app)
        if exact:
            assert ids_a == ids_b
        ids = sorted(set(ids_a) | set(ids_b))
        np.testing.assert_allclose(aligned(ca, ids_a, ids), aligned(cb, ids_b, ids), **tolerance)
        # popularity is in relative units: its reference time depends on how it was folded
        pa, pb = normalised(a.baseline.popularity(app)), normalised(b.baseline.popularity(app))
        assert pa.keys() == pb.keys()
        np.testing.assert_allclose([pa[i] for i in pa], [pb[i] for i in pa], **tolerance)
        for user in a.state.users(app) + ["nobody"]:
            sa = a.baseline.score(app, a.state.get(app, user), 10)
            sb = b.baseline.score(app, b.state.get(app, user), 10)
            got = nonzero(dict(zip(sa.item_ids.tolist(), sa.scores.tolist())))
            want = nonzero(dict(zip(sb.item_ids.tolist(), sb.scores.tolist())))
            assert got.keys() == want.keys()
            np.testing.assert_allclose([got[i] for i in got], [want[i] for i in got], rtol=1e-6)
        for item in ids:
            assert [i for i, _ in a.baseline.similar(app, item, 5)] == [i for i, _ in b.baseline.similar(app, item, 5)]
        assert a.catalog.get(app, "i1") == b.catalog.get(app, "i1")


def test_snapshot_plus_tail_equals_the_fold_of_the_whole_log(settings, monkeypatch, caplog):
    live = started(settings)
    first_part(live)
    written = write_snapshot(live)
    assert written.written and written.position == live.follower.position
    before = live.store.snapshots.get(SNAPSHOT_APP, SNAPSHOT_NAME)
    second_part(live)
    # the deletion replaced the stored snapshot (it held u3); the one taken before it is put back
    # here, as a copy of it would be restored: the tail still deletes u3
    deadline = time.monotonic() + 20
    while snapshots.stored_position(live) is None:
        assert time.monotonic() < deadline, "no snapshot written after the deletion"
        time.sleep(0.01)
    assert live.store.snapshots.get(SNAPSHOT_APP, SNAPSHOT_NAME) != before
    live.store.snapshots.put(SNAPSHOT_APP, SNAPSHOT_NAME, before)

    with caplog.at_level(logging.INFO, logger="liverec.runtime.snapshots"):
        restored = started(settings)
    assert "restored" in caplog.text
    settle(restored)
    full = folded_from_whole_log(settings, monkeypatch)
    try:
        assert_same_folds(restored, full)
        assert_same_folds(restored, live)
        # nothing of a deleted user comes back: not their state, not their pairs
        assert restored.state.get("shop", "s0") is None
        assert "i7" not in restored.baseline.matrix("default")[0]  # only the deleted u3 acted on it
        assert [i[ITEM] for i in restored.state.get("default", "u3").sequence] == ["i5", "i6"]
        assert restored.catalog.get("default", "i1").title == "Item one, renamed"
        assert restored.catalog.get("default", "i9") is not None
        # and the restored process goes on like the others
        more = [ev("u1", "view", 1_800_000_000, "i3"), ev("u5", "click", 1_800_000_001, "i4")]
        restored.ingest("default", more)
        live.follower.catch_up(force=True)
        full.follower.catch_up(force=True)
        assert_same_folds(restored, live)
        assert_same_folds(restored, full)
    finally:
        for service in (live, restored, full):
            service.close()


def test_restore_with_an_empty_tail_is_the_snapshot_exactly(sqlite_settings):
    live = started(sqlite_settings)
    first_part(live)
    assert write_snapshot(live).written
    restored = started(sqlite_settings)
    try:
        assert restored.follower.position == live.follower.position
        assert_same_folds(restored, live, exact=True)
        assert restored.recommend("default", "u2")["items"] == live.recommend("default", "u2")["items"]
    finally:
        live.close()
        restored.close()


def test_an_empty_service_round_trips(sqlite_settings, caplog):
    empty = started(sqlite_settings)
    assert write_snapshot(empty).written
    empty.close()
    with caplog.at_level(logging.INFO, logger="liverec.runtime.snapshots"):
        again = started(sqlite_settings)
    try:
        assert "restored 0 users" in caplog.text
        assert again.follower.position == (0, 0)
        assert again.state.count() == 0 and again.state.snapshot() == {}
        assert again.recommend("default", "nobody")["items"] == []
        again.ingest("default", [ev("u1", "view", 1, "i1"), ev("u1", "view", 2, "i2")])
        assert again.baseline.matrix("default")[0] == ["i1", "i2"]
    finally:
        again.close()


def _other_version(settings: Settings) -> bytes:
    service = started(settings)
    first_part(service)
    original = snapshots.FORMAT_VERSION
    snapshots.FORMAT_VERSION = original + 1
    try:
        blob = snapshots.encode(snapshots.capture(service))
    finally:
        snapshots.FORMAT_VERSION = original
        service.close()
    return blob


def _other_settings(settings: Settings) -> bytes:
    service = started(settings.model_copy(update={"sequence_length": 3}))
    first_part(service)
    blob = snapshots.encode(snapshots.capture(service))
    service.close()
    return blob


def _other_type_weights(settings: Settings) -> bytes:
    service = started(settings.model_copy(update={"type_weights": {"view": 0.5}}))
    first_part(service)
    blob = snapshots.encode(snapshots.capture(service))
    service.close()
    return blob


def _ahead_of_the_log(settings: Settings) -> bytes:
    other = settings.model_copy(update={"data_dir": settings.data_dir.parent / "elsewhere"})
    service = started(other)
    first_part(service)
    second_part(service)
    blob = snapshots.encode(snapshots.capture(service))
    service.close()
    return blob


def _truncated(settings: Settings) -> bytes:
    service = started(settings)
    first_part(service)
    blob = snapshots.encode(snapshots.capture(service))
    service.close()
    return blob[: len(blob) // 2]


@pytest.mark.parametrize("make_blob, reason", [
    (lambda settings: b"not a snapshot", "unreadable"),
    (_truncated, "unreadable"),
    (_other_version, "format version"),
    (_other_settings, "sequence_length"),
    (_other_type_weights, "counter_types, state_types"),
    (_ahead_of_the_log, "past the log's heads"),
])
def test_an_unusable_snapshot_falls_back_to_the_whole_log(sqlite_settings, monkeypatch, caplog, make_blob, reason):
    blob = make_blob(sqlite_settings)
    live = started(sqlite_settings)
    first_part(live)
    live.close()
    store = open_store(sqlite_settings.store_url_resolved())
    store.snapshots.put(SNAPSHOT_APP, SNAPSHOT_NAME, blob)
    store.close()
    with caplog.at_level(logging.INFO, logger="liverec.runtime.snapshots"):
        restarted = started(sqlite_settings)
    full = folded_from_whole_log(sqlite_settings, monkeypatch)
    try:
        assert "ignored" in caplog.text and reason in caplog.text
        assert_same_folds(restarted, full)
        assert restarted.catalog.get("default", "i1") is not None
    finally:
        restarted.close()
        full.close()


def test_the_writer_writes_only_when_the_position_moved(sqlite_settings):
    service = started(sqlite_settings)
    other_worker = started(sqlite_settings)
    try:
        writer = SnapshotWriter(lambda: service, 3600)
        first = writer.write_if_moved()
        assert first is not None and first.written and first.position == (0, 0)
        assert writer.write_if_moved() is None  # nothing new in the log
        service.ingest("default", [ev("u1", "view", 1, "i1")])
        moved = writer.write_if_moved()
        assert moved is not None and moved.written and moved.position == service.follower.position
        assert moved.lock_held_s < moved.total_s
        # another worker at the same position finds it stored and leaves it
        other_worker.follower.catch_up(force=True)
        second = SnapshotWriter(lambda: other_worker, 3600)
        same = second.write_if_moved()
        assert same is not None and not same.written and "stored" in same.reason
        assert second.write_if_moved() is None
        # one behind the stored snapshot does not overwrite it either
        service.ingest("default", [ev("u1", "view", 2, "i2")])
        assert writer.write_if_moved().written
        # a tail shorter than min_tail waits for more
        patient = SnapshotWriter(lambda: service, 3600, min_tail=3)
        patient.write_if_moved()  # finds the stored one at its position
        service.ingest("default", [ev("u1", "view", 3, "i3"), ev("u1", "view", 4, "i4")])
        assert patient.write_if_moved() is None
        service.ingest("default", [ev("u1", "view", 5, "i5")])
        assert patient.write_if_moved().written
        lagging = build_service(sqlite_settings, watch_models=False)
        lagging.start()
        lagging.follower.event_seq -= 1  # as if it had not read the newest event yet
        assert not write_snapshot(lagging).written
        lagging.close()
        assert snapshots.stored_position(service) == service.follower.position
    finally:
        service.close()
        other_worker.close()


def test_the_writer_runs_in_the_background_and_stops_with_the_service(sqlite_settings):
    service = started(sqlite_settings.model_copy(update={"snapshot_interval_s": 0.05, "snapshot_min_tail": 1}))
    writer = service.component(SnapshotWriter)
    assert writer is not None
    service.ingest("default", [ev("u1", "view", 1, "i1")])
    deadline = time.monotonic() + 10
    while snapshots.stored_position(service) != service.follower.position:
        assert time.monotonic() < deadline, "no snapshot written"
        time.sleep(0.02)
    service.close()
    assert writer._thread is None
    unscheduled = started(sqlite_settings.model_copy(update={"snapshot_interval_s": 0}))
    assert unscheduled.component(SnapshotWriter)._thread is None  # no schedule (deletions still replace a stored one)
    unscheduled.close()
    # the other workers of a server leave the schedule to worker 0
    second = started(sqlite_settings.model_copy(update={"snapshot_interval_s": 0.05, "worker_index": 1}))
    assert second.component(SnapshotWriter)._thread is None
    second.close()


def test_no_snapshot_while_counters_are_refolded(sqlite_settings):
    """After another process deletes a user, this one refolds the app's counters in the background;
    until then they still hold the deleted user's pairs, and a snapshot of them would keep them."""
    service = started(sqlite_settings)
    try:
        first_part(service)
        service._rebuilds["default"] = False  # as a refold in progress leaves it
        result = write_snapshot(service)
        assert not result.written and "refolded" in result.reason
        assert snapshots.stored_position(service) is None
        del service._rebuilds["default"]
        assert write_snapshot(service).written
    finally:
        service.close()


def test_deletion_by_another_process_after_the_snapshot(sqlite_settings, monkeypatch):
    writer = started(sqlite_settings)
    deleter = started(sqlite_settings)
    try:
        first_part(writer)
        assert write_snapshot(writer).written
        deleter.follower.catch_up(force=True)
        deleter.delete_user("default", "u2")
        # the deleter removed the stored snapshot and writes one again; the writer's is tested here
        deleter.component(SnapshotWriter)._rewriting.join()
        deleter.store.snapshots.delete(SNAPSHOT_APP, SNAPSHOT_NAME)
        writer.follower.catch_up(force=True)  # a remote deletion: the writer refolds its counters
        settle(writer)
        assert write_snapshot(writer).written
        restored = started(sqlite_settings)
        full = folded_from_whole_log(sqlite_settings, monkeypatch)
        assert restored.state.get("default", "u2") is None
        assert_same_folds(restored, full)
        assert_same_folds(writer, full)
        restored.close()
        full.close()
    finally:
        writer.close()
        deleter.close()
