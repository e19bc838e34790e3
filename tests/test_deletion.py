"""Deleting a user reaches everything held on them: the event log, state, counters, the
impression log, the ranking's posteriors, pending impressions and last slates, the text vector
caches, the online learners' buffers, snapshots, the model registry's marks, the audit log, and
the bytes of the SQLite files; in this process and in every other one that follows the log."""

from __future__ import annotations

import copy
import json
import time
import uuid
import zlib
from pathlib import Path

import numpy as np
import torch
from fastapi.testclient import TestClient

from liverec.api.app import create_app
from liverec.config import Settings
from liverec.erasure import UserDeletion, deleted_since
from liverec.events import Event
from liverec.learning import LearnerConfig, Learners, OnlineLearner, learner_follower
from liverec.model.registry import ModelRegistry
from liverec.model.scorer import TransformerScorer
from liverec.model.service_data import log_from_store
from liverec.model.text import HashingEncoder, TextVectorCache, text_key
from liverec.model.transformer import FeedbackTransformer, ModelConfig
from liverec.ranking.replicas import SNAPSHOT_APP as RANKING_APP, SNAPSHOT_NAME as RANKING_NAME, ImpressionFollower
from liverec.runtime.compose import build_service
from liverec.runtime.models import TrainedModels
from liverec.runtime.snapshots import SNAPSHOT_APP, SNAPSHOT_NAME, write_snapshot
from liverec.service import Service
from liverec.state import StateStore
from liverec.catalog import CatalogIndex
from liverec.store.base import user_digest

from .test_ranking_replicas import _react, _seed, _serve, _settings, folds

GONE = "gone-user-7c1e"  # the user deleted in these tests
UNIQUE_TEXT = "lunar gardening for beginners"  # only they searched for it
SHARED_TEXT = "jazz"  # they and u1 searched for it


def started(settings: Settings) -> Service:
    service = build_service(settings)
    service.start()
    return service


def follower_of(service: Service) -> ImpressionFollower:
    return service.component(ImpressionFollower)


def populate(service: Service, users: list[str]) -> None:
    """Views, searches, two rounds of slates with reactions (decided rewards, read-past items),
    and a third round with none (impressions waiting for feedback)."""
    _seed(service)
    service.ingest("default", [{"user_id": u, "item_id": f"c{k}", "type": "view", "event_id": f"{u}-v"} for k, u in enumerate(users)])
    service.ingest("default", [
        {"user_id": GONE, "type": "search", "text": UNIQUE_TEXT, "event_id": "gone-s1"},
        {"user_id": GONE, "type": "search", "text": SHARED_TEXT, "event_id": "gone-s2"},
        {"user_id": "u1", "type": "search", "text": SHARED_TEXT, "event_id": "u1-s"},
    ])
    _react(service, _serve(service, users), "r1")
    _react(service, _serve(service, users[2:]), "r2")
    _serve(service, users)
    service.ranking.impressions.flush()


def counters(service: Service, app: str = "default") -> tuple[dict, dict]:
    """The co-occurrence counters as comparable values (items whose counts were all subtracted
    may stay in the id table as zeros)."""
    ids, matrix = service.baseline.matrix(app)
    cells = {(ids[i], ids[j]): float(matrix[i, j]) for i, j in zip(*np.nonzero(matrix))}
    popularity = service.baseline.popularity(app)
    total = sum(popularity.values()) or 1.0
    return cells, {k: v / total for k, v in popularity.items() if v}


def assert_counters_equal(a: Service, b: Service) -> None:
    cells_a, pop_a = counters(a)
    cells_b, pop_b = counters(b)
    assert cells_a.keys() == cells_b.keys()
    np.testing.assert_allclose([cells_a[k] for k in cells_a], [cells_b[k] for k in cells_a], rtol=1e-9, atol=1e-12)
    assert pop_a.keys() == pop_b.keys()
    np.testing.assert_allclose([pop_a[k] for k in pop_a], [pop_b[k] for k in pop_a], rtol=1e-9)


def wait_refolded(*services: Service) -> None:
    for service in services:
        assert follower_of(service).wait_refolded(30), "the ranking's refold did not finish"
        deadline = time.monotonic() + 30
        while service.refolding:
            assert time.monotonic() < deadline, "the counters' refold did not finish"
            time.sleep(0.01)


def holds_nothing_of(service: Service, user: str) -> None:
    assert service.store.events.user_events("default", user) == []
    assert service.state.get("default", user) is None
    assert service.ranking.impressions.user_impressions("default", user) == []
    assert service.ranking.rewards.waiting("default", user) == []
    assert service.ranking.examined.slates("default", user) == []
    assert user not in service.ranking.users("default")
    assert service.export_user("default", user) is None


# ---- this process and a rebuild ---------------------------------------------------------------------
def test_delete_reaches_every_fold_and_store_and_equals_a_rebuild_without_the_user(tmp_path, store_url):
    settings = _settings(tmp_path, store_url)
    live = started(settings)
    users = [f"u{k}" for k in range(5)] + [GONE]
    try:
        populate(live, users)
        exported = live.export_user("default", GONE)
        assert exported["events"] and exported["state"]["n_events"] == len(exported["events"])
        assert exported["impressions"] and exported["pending_rewards"] and exported["last_slates"]
        before = folds(live)

        receipt = live.delete_user("default", GONE, requested_by="key-42")
        wait_refolded(live)
        removed = receipt["removed"]
        assert removed["events"] == receipt["events_deleted"] == len(exported["events"])
        assert removed["state"] == 1 and removed["counters"] == len(exported["events"])
        assert removed["impressions"] == len(exported["impressions"])
        assert removed["pending_impressions"] == len(exported["pending_rewards"])
        assert removed["last_slates"] == len(exported["last_slates"])
        holds_nothing_of(live, GONE)

        # the audit log: who, when, the receipt's counts; the user by digest only
        record, = live.store.deletions.list("default")
        assert (record.deletion_id, record.requested_by, record.at) == (receipt["deletion_id"], "key-42", receipt["deleted_at"])
        assert record.subject == user_digest("default", GONE) and record.receipt["counts"] == removed
        assert live.store.deletions.list(subject=record.subject) == [record]
        assert GONE not in repr(live.store.deletions.list()) and GONE not in repr(live.store.events.changes())

        # posteriors, pending impressions and slates as a rebuild from the logs folds them
        after = folds(live)
        assert after[0] != before[0]  # their rewards were taken out
        rebuilt = started(settings)
        try:
            assert folds(rebuilt) == after
            assert rebuilt.state.snapshot() == live.state.snapshot()
            assert_counters_equal(live, rebuilt)
        finally:
            rebuilt.close()
        # the others' data is untouched
        assert live.export_user("default", "u1")["impressions"]
    finally:
        live.close()


def test_another_worker_applies_the_deletion_when_it_follows_the_log(tmp_path, store_url):
    settings = _settings(tmp_path, store_url)
    deleter, other = started(settings), started(settings)
    users = [f"u{k}" for k in range(5)] + [GONE]
    try:
        populate(deleter, users)
        other.follower.catch_up(force=True)
        follower_of(other).poll()
        _react(other, _serve(other, [GONE, "u0"]), "r3")  # the other worker shows them slates too
        _serve(other, [GONE])
        other.ranking.impressions.flush()
        deleter.follower.catch_up(force=True)
        follower_of(deleter).poll()
        assert other.ranking.rewards.waiting("default", GONE) and other.state.get("default", GONE) is not None

        deleter.delete_user("default", GONE)
        other.follower.catch_up()  # what a request does first
        assert other.state.get("default", GONE) is None
        assert other.ranking.rewards.waiting("default", GONE) == [] and other.ranking.examined.slates("default", GONE) == []
        wait_refolded(deleter, other)
        follower_of(other).poll()
        follower_of(deleter).poll()
        holds_nothing_of(other, GONE)
        rebuilt = started(settings)
        try:
            assert folds(other) == folds(rebuilt) == folds(deleter)
            assert other.state.snapshot() == rebuilt.state.snapshot()
            assert_counters_equal(other, rebuilt)
        finally:
            rebuilt.close()
    finally:
        deleter.close()
        other.close()


# ---- snapshots ----------------------------------------------------------------------------------------
def test_a_snapshot_taken_before_the_deletion_does_not_bring_the_user_back(tmp_path):
    settings = _settings(tmp_path)
    live = started(settings)
    try:
        populate(live, [f"u{k}" for k in range(4)] + [GONE])
        assert write_snapshot(live).written and follower_of(live).write_snapshot() is not None
        folds_blob = live.store.snapshots.get(SNAPSHOT_APP, SNAPSHOT_NAME)
        ranking_blob = live.store.snapshots.get(RANKING_APP, RANKING_NAME)
        assert GONE.encode() in folds_blob and GONE.encode() in zlib.decompress(ranking_blob)

        receipt = live.delete_user("default", GONE)
        assert receipt["removed"]["snapshots"] == 1 and receipt["removed"]["ranking_snapshots"] == 1
        wait_refolded(live)
        # the stored snapshots were replaced by ones without the user
        deadline = time.monotonic() + 30
        while (live.store.snapshots.get(SNAPSHOT_APP, SNAPSHOT_NAME) is None
               or live.store.snapshots.get(RANKING_APP, RANKING_NAME) is None):
            assert time.monotonic() < deadline, "no snapshot written after the deletion"
            time.sleep(0.02)
        assert GONE.encode() not in live.store.snapshots.get(SNAPSHOT_APP, SNAPSHOT_NAME)
        assert GONE.encode() not in zlib.decompress(live.store.snapshots.get(RANKING_APP, RANKING_NAME))
        expected = folds(live), live.state.snapshot()

        # a copy of the snapshots taken before the deletion, restored: the deletion still applies
        live.store.snapshots.put(SNAPSHOT_APP, SNAPSHOT_NAME, folds_blob)
        live.store.snapshots.put(RANKING_APP, RANKING_NAME, ranking_blob)
        restored = started(settings)
        try:
            wait_refolded(restored)
            assert restored.state.get("default", GONE) is None
            assert (folds(restored), restored.state.snapshot()) == expected
            assert_counters_equal(restored, live)
            holds_nothing_of(restored, GONE)
        finally:
            restored.close()
    finally:
        live.close()


# ---- text vectors -------------------------------------------------------------------------------------
ITEMS = [f"c{k}" for k in range(8)]


def serve_text_model(service: Service) -> TransformerScorer:
    """A tiny Transformer with text features over the catalog's ``c`` items, served for ``default``
    with its event text vectors kept in the data dir's on-disk cache."""
    torch.manual_seed(0)
    model = FeedbackTransformer(ModelConfig(n_items=len(ITEMS), d_model=16, n_blocks=1, max_len=12, text_dim=16, dropout=0.0))
    scorer = TransformerScorer("default", model, ITEMS, "v000001", HashingEncoder(16),
                               text_cache_dir=Path(service.settings.data_dir) / "text_cache")
    service.pipeline.scorer.set("default", scorer)
    return scorer


def test_text_vectors_only_they_used_leave_every_cache(tmp_path):
    settings = _settings(tmp_path).model_copy(update={"scorer": "auto"})
    deleter, other = started(settings), started(settings)
    try:
        scorers = [serve_text_model(s) for s in (deleter, other)]
        _seed(deleter)
        deleter.ingest("default", [
            {"user_id": GONE, "type": "search", "text": UNIQUE_TEXT, "event_id": "gone-s1"},
            {"user_id": GONE, "type": "review", "item_id": "c1", "text": SHARED_TEXT, "event_id": "gone-r"},
            {"user_id": "u1", "type": "search", "text": SHARED_TEXT, "event_id": "u1-s"},
            {"user_id": "u1", "type": "search", "text": "only u1's", "event_id": "u1-s2"},
        ])
        other.follower.catch_up(force=True)
        for scorer in scorers:
            assert UNIQUE_TEXT in scorer.text_vectors and SHARED_TEXT in scorer.text_vectors
        scorers[0].save_texts()
        cache_dir = Path(settings.data_dir) / "text_cache"
        assert TextVectorCache(cache_dir, HashingEncoder(16)).known([UNIQUE_TEXT, SHARED_TEXT]).keys() == {UNIQUE_TEXT, SHARED_TEXT}

        receipt = deleter.delete_user("default", GONE)
        assert receipt["removed"]["text_vectors"] == 1 and receipt["removed"]["shared_texts_kept"] == 1
        disk = TextVectorCache(cache_dir, HashingEncoder(16))
        assert disk.known([UNIQUE_TEXT, SHARED_TEXT, "only u1's"]).keys() == {SHARED_TEXT, "only u1's"}
        keys = json.loads(next(cache_dir.glob("*.keys.json")).read_text())
        assert text_key(UNIQUE_TEXT) not in keys
        assert UNIQUE_TEXT not in scorers[0].text_vectors and SHARED_TEXT in scorers[0].text_vectors

        other.follower.catch_up()  # the other worker drops it from memory too (once the log says no one else sent it)
        deadline = time.monotonic() + 10
        while UNIQUE_TEXT in scorers[1].text_vectors:
            assert time.monotonic() < deadline, "the other worker kept the deleted user's text vector"
            time.sleep(0.02)
        assert SHARED_TEXT in scorers[1].text_vectors
        # nothing brings it back to disk: neither worker's next save
        for scorer in scorers:
            scorer.text_vectors.add(["something new"])
            scorer.save_texts()
        assert UNIQUE_TEXT not in TextVectorCache(cache_dir, HashingEncoder(16)).known([UNIQUE_TEXT])
    finally:
        deleter.close()
        other.close()


# ---- the online learner -------------------------------------------------------------------------------
def _registry_with_model(data_dir: Path, log_position: int | None = 0) -> ModelRegistry:
    torch.manual_seed(0)
    model = FeedbackTransformer(ModelConfig(n_items=len(ITEMS), d_model=16, n_blocks=1, max_len=16, dropout=0.0))
    registry = ModelRegistry.for_data_dir(data_dir, "default")
    manifest = {"source": "test"} if log_position is None else {"source": "test", "log_position": log_position}
    registry.promote(registry.register(model, ITEMS, manifest))
    return registry


def _stream(users: list[str], tag: str, t0: float = 1000.0) -> list[Event]:
    return [Event("default", f"{tag}-{u}-{k}", u, "view", t0 + 10 * n + k, ITEMS[(n + k) % len(ITEMS)])
            for n, u in enumerate(users) for k in range(6)]


def test_the_learners_buffers_in_process_and_in_the_learner_role(tmp_path, one_torch_thread):
    settings = Settings(data_dir=tmp_path / "data", snapshot_interval_s=0)
    registry = _registry_with_model(settings.data_dir)
    service = started(settings)
    try:
        service.component(TrainedModels)  # present in every service
        cfg = LearnerConfig(min_events=5, replay_users=4)
        learners = service.component(Learners)
        from liverec.runtime.models import ModelServer

        service.component(ModelServer).load("default")
        in_process = learners.add("default", cfg, start=False)
        # the learner role (`liverec learn`): its own state, catalog and follower of the same log
        role_state = StateStore(settings.types(), settings.sequence_length)
        role = OnlineLearner("default", role_state, lambda: service.pipeline.scorer.by_app["default"], lambda s: None,
                             registry, lambda app, item: None, cfg)
        role_follower = learner_follower(service.store, "default", role_state, CatalogIndex(), role)
        role.position, role.changes = (lambda: role_follower.position), service.store.events.changes

        service.ingest_events(_stream(["a", "b", GONE], "s1"))
        role_follower.catch_up(force=True)
        for learner in (in_process, role):
            assert GONE in learner._users and learner._new[GONE] == 6
        in_process._opt = ("v000001", {}, 3)  # an optimizer state carried from an earlier update

        receipt = service.delete_user("default", GONE)
        assert receipt["removed"]["learner_users"] == 1
        role_follower.catch_up(force=True)
        for learner in (in_process, role):
            assert GONE not in learner._users and GONE not in learner._new and learner._count == 12
            assert learner._opt is None  # moments computed from updates that may have learned from them
        assert role_state.get("default", GONE) is None
    finally:
        service.close()


def test_an_update_that_learned_from_a_user_deleted_meanwhile_is_not_published(tmp_path, one_torch_thread):
    settings = Settings(data_dir=tmp_path / "data", snapshot_interval_s=0)
    registry = _registry_with_model(settings.data_dir)
    service = started(settings)
    try:
        from liverec.learning import FineTuneConfig
        from liverec.runtime.models import ModelServer

        service.component(ModelServer).load("default")
        cfg = LearnerConfig(min_events=5, replay_users=4, finetune=FineTuneConfig(steps=2, batch_size=4, tolerance=1.0))
        learner = service.component(Learners).add("default", cfg, start=False)
        service.ingest_events(_stream(["a", "b", "c", GONE], "s1"))
        tuner_for = learner._tuner_for

        def deleting_meanwhile(version, model):
            tuner = tuner_for(version, model)
            update = tuner.guarded_update

            def guarded(*args, **kw):
                service.delete_user("default", GONE)  # commits while the update trains
                return update(*args, **kw)

            tuner.guarded_update = guarded
            return tuner

        learner._tuner_for = deleting_meanwhile
        out = learner.step()
        assert out["discarded"] and learner.stats.discarded == 1 and registry.versions() == ["v000001"]
        assert GONE not in learner._users and set(learner._users) == {"a", "b", "c"}  # the others wait for the next one

        learner._tuner_for = tuner_for
        service.ingest_events(_stream(["a", "d"], "s2", 2000.0))
        published = learner.step()
        assert published["accepted"], published
        manifest = registry.manifest(published["version"])
        assert manifest["log_position"] == service.store.events.last_seq() and "trained_on_deleted_users" not in manifest
    finally:
        service.close()


# ---- the model registry -------------------------------------------------------------------------------
def test_versions_trained_on_their_events_are_marked_and_training_no_longer_reads_them(tmp_path):
    settings = Settings(data_dir=tmp_path / "data", scorer="cooccurrence", snapshot_interval_s=0)
    service = started(settings)
    try:
        service.ingest("default", [{"user_id": "early", "item_id": "c1", "type": "view", "event_id": "e1"}])
        before_them = service.follower.event_seq
        registry = _registry_with_model(settings.data_dir, log_position=before_them)  # v1: before their events
        model = registry.load("v000001").model
        service.ingest("default", [{"user_id": GONE, "item_id": f"c{k}", "type": "view", "event_id": f"g{k}"} for k in range(3)])
        service.ingest("default", [{"user_id": "late", "item_id": "c2", "type": "view", "event_id": "e2"}])
        head = service.follower.event_seq
        v2 = registry.register(model, ITEMS, {"log_position": head})  # trained on them
        v3 = registry.register(model, ITEMS, {"source": "online", "parent": "v000001", "log_position": before_them})
        v4 = registry.register(model, ITEMS, {"source": "online", "parent": v2, "log_position": before_them})  # inherits v2's data
        v5 = registry.register(model, ITEMS, {"source": "a file"})  # unknown data: may hold them
        registry.promote(v4)
        exported = service.export_user("default", GONE)
        assert [v["version"] for v in exported["model_versions"]] == [v2, v4, v5]
        assert [v["promoted"] for v in exported["model_versions"]] == [False, True, False]

        receipt = service.delete_user("default", GONE)
        assert receipt["removed"]["model_versions_marked"] == 3
        for version in ("v000001", v3):
            assert "trained_on_deleted_users" not in registry.manifest(version)
        for version in (v2, v4, v5):
            assert registry.manifest(version)["trained_on_deleted_users"] == {"count": 1, "deletions": [receipt["deletion_id"]]}
        assert {r["version"]: r["deleted_users"] for r in registry.list()} == {"v000001": 0, v2: 1, v3: 0, v4: 1, v5: 1}
        assert registry.load(v2).model is not None  # still loadable, only marked

        # the next training reads the log, where they no longer are
        log, _ = log_from_store(settings.data_dir, "default")
        assert GONE not in set(log.user_ids.tolist()) and {"early", "late"} <= set(log.user_ids.tolist())
        # a training that read the log before the deletion finds it among the changes after its read
        changes = service.store.events.changes(0)
        assert deleted_since(changes, "default", ["early", GONE]) == {GONE: receipt["deletion_id"]}
    finally:
        service.close()


# ---- the SQLite files ---------------------------------------------------------------------------------
def test_the_sqlite_files_hold_no_byte_of_a_deleted_users_id(tmp_path):
    settings = _settings(tmp_path)
    gone = f"zq-{uuid.uuid4().hex}"  # appears nowhere but where this user's data is
    service = started(settings)
    files = [Path(settings.data_dir) / name for name in ("liverec.db", "liverec.db-wal", "impressions.db", "impressions.db-wal")]

    def holding() -> list[str]:
        return [f.name for f in files if f.exists() and gone.encode() in f.read_bytes()]

    try:
        _seed(service)
        # many users' events interleaved with theirs, and other users deleted since: pages split
        # and merge, and SQLite leaves the bytes of cells it moved in the old page's unused space
        rng = np.random.default_rng(0)
        others = [f"o{k}" for k in range(300)]
        for k in range(10):
            batch = [{"user_id": u, "item_id": f"c{rng.integers(8)}", "type": "view", "event_id": f"{u}-{k}"} for u in others]
            for j in range(20):
                batch.insert(int(rng.integers(len(batch))), {"user_id": gone, "item_id": f"c{j % 8}", "type": "view",
                                                              "event_id": f"{gone}-{k}-{j}"})
            service.ingest("default", batch)
        _react(service, _serve(service, [gone, "u1"] + others[:40]), "r1")
        _serve(service, [gone] + others[40:80])
        service.ranking.impressions.flush()
        for user in others[::15]:
            service.delete_user("default", user)
        assert service.wait_compacted(30)
        wait_refolded(service)
        assert write_snapshot(service).written and follower_of(service).write_snapshot() is not None
        for store in (service.store, service.ranking.impressions):
            store.compact()  # from the write-ahead logs into the files: the id is in both
        assert {"liverec.db", "impressions.db"} <= set(holding())

        receipt = service.delete_user("default", gone)
        assert receipt["compacting"]
        assert service.wait_compacted(30)
        assert holding() == []
        wait_refolded(service)
        deadline = time.monotonic() + 30  # the snapshots written again without them
        while service.store.snapshots.get(SNAPSHOT_APP, SNAPSHOT_NAME) is None:
            assert time.monotonic() < deadline
            time.sleep(0.02)
    finally:
        service.close()
    assert holding() == []


# ---- the API ------------------------------------------------------------------------------------------
def test_the_api_exports_deletes_and_then_answers_404(tmp_path):
    settings = _settings(tmp_path)
    with TestClient(create_app(settings)) as client:
        client.post("/v1/events", json={"events": [{"user_id": GONE, "item_id": "c1", "type": "view"},
                                                   {"user_id": GONE, "type": "search", "text": UNIQUE_TEXT}]})
        client.get(f"/v1/users/{GONE}/recommendations")
        exported = client.get(f"/v1/users/{GONE}/export")
        assert exported.status_code == 200
        body = exported.json()
        assert [e["type"] for e in body["events"]] == ["view", "search"] and body["state"]["n_events"] == 2
        assert client.get("/v1/users/never-seen/export").status_code == 404

        receipt = client.delete(f"/v1/users/{GONE}").json()
        assert receipt["removed"]["events"] == 2 and receipt["requested_by"] == "open:testclient"
        assert receipt["deletion_id"].startswith("d") and receipt["compacting"] is True
        missing = client.get(f"/v1/users/{GONE}/export")
        assert missing.status_code == 404 and missing.json()["errors"][0]["field"] == "user_id"
        assert client.get(f"/v1/users/{GONE}").status_code == 404


def test_a_deletion_names_the_user_by_digest_and_finds_them_by_it():
    deletion = UserDeletion("shop", user_digest("shop", "u2"), 7, 30)
    assert deletion.find(["u1", "u2", "u3"]) == "u2" and deletion.find(["u1"]) is None
    assert deletion.matches("shop", "u2") and not deletion.matches("news", "u2") and not deletion.matches("shop", "u1")
    assert deletion.deletion_id == "d7"
    local = copy.copy(deletion)
    local.user_id = "u2"
    assert local.find(["u2"]) == "u2"


def test_the_audit_log_names_the_key_that_asked(tmp_path):
    from liverec.auth import SecretSource

    settings = Settings(data_dir=tmp_path / "data", scorer="cooccurrence", snapshot_interval_s=0)
    with TestClient(create_app(settings)) as client:
        keyring = client.app.state.auth.keyring
        key, record = keyring.create("shop", "admin", 1000, 1000,
                                     ensure_secret=SecretSource(settings.auth_secret, settings.data_dir).ensure)
        headers = {"Authorization": f"Bearer {key}"}
        assert client.post("/v1/events", json={"user_id": GONE, "item_id": "c1", "type": "view"}, headers=headers).status_code == 200
        assert client.get(f"/v1/users/{GONE}/export").status_code == 401  # an admin route: no key, no answer
        assert client.get(f"/v1/users/{GONE}/export", headers=headers).json()["events"][0]["app"] == "shop"
        receipt = client.delete(f"/v1/users/{GONE}", headers=headers).json()
        assert receipt["requested_by"] == record.key_id
        audit, = client.app.state.service.store.deletions.list("shop")
        assert audit.requested_by == record.key_id and audit.deletion_id == receipt["deletion_id"]


def test_two_workers_deleting_the_same_user_at_once_leave_the_counters_of_a_rebuild(tmp_path):
    settings = _settings(tmp_path)
    first, second = started(settings), started(settings)
    try:
        populate(first, [f"u{k}" for k in range(4)] + [GONE])
        second.follower.catch_up(force=True)
        # the first worker's deletion commits just after the second caught up to delete them too:
        # the second applies the first's change with its own pending, having removed nothing itself
        remove = second.store.events.remove_user

        def first_wins(app, user):
            first.store.events.remove_user(app, user)
            return remove(app, user)

        second.store.events.remove_user = first_wins
        receipt = second.delete_user("default", GONE)
        assert receipt["removed"]["events"] == 0 and receipt["removed"]["counters"] == 0
        first.follower.catch_up(force=True)
        wait_refolded(first, second)
        rebuilt = started(settings)
        try:
            for service in (first, second):
                assert_counters_equal(service, rebuilt)
                assert service.state.get("default", GONE) is None
        finally:
            rebuilt.close()
    finally:
        first.close()
        second.close()
