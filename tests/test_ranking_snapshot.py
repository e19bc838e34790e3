"""A snapshot of the ranking's folds bounds a start: installed with its two log positions, and
only the impression and event logs after them replayed, it reaches the same posteriors, pending
impressions and last slates as folding both logs from the start; one that cannot be used means
the full rebuild."""

from __future__ import annotations

import zlib

import orjson

from liverec.ranking.replicas import SNAPSHOT_APP, SNAPSHOT_NAME, ImpressionFollower
from liverec.runtime.compose import build_service
from liverec.runtime.snapshots import SnapshotWriter

from .test_ranking_replicas import GENRES, _nontrivial, _react, _seed, _serve, _settings, folds


def _traffic_around_a_snapshot(settings) -> tuple:
    """Serve and react, snapshot the folds, serve and react more; the folds at the end."""
    first = build_service(settings)
    first.start()
    try:
        _seed(first)
        users = [f"u{k}" for k in range(6)]
        first.ingest("default", [{"user_id": u, "item_id": f"{GENRES[k % 4]}0", "type": "view", "event_id": f"{u}-v"}
                                 for k, u in enumerate(users)])
        _react(first, _serve(first, users), "r1")
        first.component(ImpressionFollower).poll()
        # shown after the impression position the snapshot records, and folded in it
        _serve(first, users[3:])
        writer = SnapshotWriter(lambda: first, interval_s=0)
        written = writer.write_ranking(with_users=True)
        assert written is not None and written["event_seq"] > 0
        # shown at the snapshot's event position but after it: replayed, not taken as in it
        _react(first, _serve(first, users[:3]), "r2")
        _react(first, _serve(first, users[3:5]), "r3")
        _serve(first, users[4:])
        after = folds(first)
        _nontrivial(after)
        return after
    finally:
        first.close()


def _start(settings):
    service = build_service(settings)
    service.start()
    return service


def test_a_start_from_the_snapshot_and_the_logs_after_it_folds_what_the_full_rebuild_does(tmp_path):
    settings = _settings(tmp_path)
    before = _traffic_around_a_snapshot(settings)
    again = _start(settings)
    try:
        assert again.component(ImpressionFollower).restored is not None
        restored = folds(again)
    finally:
        again.close()
    assert restored == before

    full = _start(_settings_without_snapshot(tmp_path))
    try:
        assert full.component(ImpressionFollower).restored is None
        assert folds(full) == restored
    finally:
        full.close()


def _settings_without_snapshot(tmp_path):
    """The same data dir with the ranking snapshot made unusable (another format version)."""
    settings = _settings(tmp_path)
    service = build_service(settings)
    try:
        blob = service.store.snapshots.get(SNAPSHOT_APP, SNAPSHOT_NAME)
        data = orjson.loads(zlib.decompress(blob))
        data["format"] = -1
        service.store.snapshots.put(SNAPSHOT_APP, SNAPSHOT_NAME, zlib.compress(orjson.dumps(data)))
    finally:
        service.close()
    return settings


def test_a_corrupt_snapshot_means_the_full_rebuild(tmp_path, caplog):
    settings = _settings(tmp_path)
    before = _traffic_around_a_snapshot(settings)
    service = build_service(settings)
    service.store.snapshots.put(SNAPSHOT_APP, SNAPSHOT_NAME, b"\x78\x9cnot a snapshot")
    service.start()
    try:
        assert service.component(ImpressionFollower).restored is None
        assert folds(service) == before
    finally:
        service.close()
    assert "snapshot of the ranking folds ignored" in caplog.text
