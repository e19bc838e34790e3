"""An item upserted while serving reaches the served Transformer at the next request.

A catalog of four genres (title and text name the genre), users who each watch one genre, and a
small text model (hashing encoder) trained on them. An item upserted afterwards is placed from its
text through the model's learned projection: recommended to the users of its genre, with its
genre's items as similar items, over the real API; the same after a restart (the version
extended from the catalog again), in the exact and the approximate (faiss) paths.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient

from liverec.api.app import create_app
from liverec.config import Settings
from liverec.model.registry import ModelRegistry
from liverec.model.service_data import train_from_service
from liverec.model.text import HashingEncoder
from liverec.runtime.compose import build_service

GENRES = ["western", "space", "romance", "horror"]
WORDS = {"western": "cowboy desert horse sheriff", "space": "rocket planet alien galaxy",
         "romance": "love wedding heart kiss", "horror": "ghost blood haunted scream"}
N_ITEMS, N_USERS = 40, 60
RECIPE = {"d_model": 16, "n_blocks": 1, "epochs": 40, "batch_size": 16, "stride": None, "max_len": 20, "text": True,
          "eval_every": 1, "id_dropout": 0.5, "lr": 3e-3, "use_request_gap": False}
NEWS = {"title": "Space film new", "text": "A space story: rocket planet alien galaxy", "categories": ["space"]}


def genre_of_user(u: int) -> str:
    return GENRES[u % 4]


def catalog() -> list[dict]:
    return [{"item_id": f"m{k}", "title": f"{GENRES[k % 4].title()} film {k}",
             "text": f"A {GENRES[k % 4]} story: {WORDS[GENRES[k % 4]]}", "categories": [GENRES[k % 4]]} for k in range(N_ITEMS)]


def events() -> list[dict]:
    rng = np.random.default_rng(0)
    out = []
    for u in range(N_USERS):
        mine = [k for k in range(N_ITEMS) if k % 4 == u % 4]
        for j, k in enumerate(rng.permutation(mine)[:7]):
            out.append({"event_id": f"u{u}-{j}", "user_id": f"u{u}", "item_id": f"m{k}", "type": "view",
                        "timestamp": 1_000 + 60 * j + u})
    return out


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    """A data dir holding the catalog, the events and a promoted text model (trained once)."""
    torch.set_num_threads(1)
    data_dir = tmp_path_factory.mktemp("genres") / "data"
    svc = build_service(Settings(data_dir=data_dir))
    svc.start()
    svc.upsert_items("default", catalog())
    svc.ingest("default", events())
    svc.close()
    version = train_from_service(data_dir, "default", RECIPE, seed=0, text_encoder=HashingEncoder(32), progress=False)
    ModelRegistry.for_data_dir(data_dir, "default").promote(version)
    return data_dir


@pytest.fixture
def data_dir(trained: Path, tmp_path: Path) -> Path:
    """A copy of the trained data dir for one test."""
    return Path(shutil.copytree(trained, tmp_path / "data"))


def rec_ids(client: TestClient, user: str, n: int = 5) -> list[str]:
    r = client.get(f"/v1/users/{user}/recommendations", params={"n": n})
    assert r.status_code == 200 and r.json()["scorer"] == "transformer", r.text
    return [i["item_id"] for i in r.json()["items"]]


def test_an_upserted_item_is_recommended_and_has_similar_items_at_the_next_request(data_dir, one_torch_thread):
    with TestClient(create_app(Settings(data_dir=data_dir))) as client:
        client.app.state.service.wait_warm(30)
        space_users = [f"u{u}" for u in range(N_USERS) if genre_of_user(u) == "space"]
        others = [f"u{u}" for u in range(N_USERS) if genre_of_user(u) != "space"]
        assert not any("news" in rec_ids(client, u) for u in space_users)  # not in the catalog yet
        assert client.put("/v1/items/news", json=NEWS).json() == {"upserted": 1}
        # the next request: recommended to the users of its genre, not to the others
        shown = [u for u in space_users if "news" in rec_ids(client, u)]
        assert len(shown) >= 0.8 * len(space_users), f"shown to {len(shown)} of {len(space_users)} space users"
        assert sum("news" in rec_ids(client, u) for u in others) <= 0.1 * len(others)
        # similar items: its genre's
        similar = client.get("/v1/items/news/similar", params={"n": 5}).json()["items"]
        assert len(similar) == 5 and all(i["categories"] == ["space"] for i in similar), similar
        # and the news item is among the similar items of a space film
        scorer = client.app.state.service.pipeline.scorer.by_app["default"]
        assert "news" in dict(scorer.similar("default", "m1", 10))
        # an upsert of a trained item leaves its learned vector as it is
        before = scorer.item_embeddings("default")[1][scorer.index["m1"] - 1].copy()
        client.put("/v1/items/m1", json={"title": "Renamed", "text": "now a romance: love wedding heart kiss"})
        after_scorer = client.app.state.service.pipeline.scorer.by_app["default"]
        assert np.array_equal(after_scorer.item_embeddings("default")[1][after_scorer.index["m1"] - 1], before)


def _scores_by_id(service, users: list[str]) -> dict[str, dict[str, float]]:
    scorer = service.pipeline.scorer.by_app["default"]
    out = {}
    for u in users:
        got = scorer.score("default", service.state.get("default", u), 10)
        out[u] = dict(zip(got.item_ids.tolist(), got.scores.tolist()))
    return out


@pytest.mark.parametrize("ann_threshold", [50_000, 20], ids=["exact", "approximate"])
def test_incremental_equals_rebuilt_at_restart(data_dir, ann_threshold, one_torch_thread):
    """Upserts folded one by one (a new item, a batch, a new text for an item added so) give the
    scorer a restart builds from the version and the catalog: the same scores, the same similar items."""
    settings = Settings(data_dir=data_dir, ann_threshold=ann_threshold, snapshot_interval_s=0)
    users = [f"u{u}" for u in (0, 1, 2, 3, 9, 14)]
    live = build_service(settings)
    live.start()
    live.wait_warm(30)
    try:
        live.put_item("default", "news", NEWS)
        live.upsert_items("default", [{"item_id": f"extra{k}", "title": f"{g.title()} extra {k}", "text": WORDS[g],
                                       "categories": [g]} for k, g in enumerate(GENRES)])
        live.put_item("default", "news", {**NEWS, "text": "A horror story: ghost blood haunted scream"})
        live.put_item("default", "m3", {"title": "Trained item, new text", "categories": ["space"]})
        live.ingest("default", [{"event_id": "late", "user_id": "u1", "item_id": "news", "type": "like", "timestamp": 9_000}])
        scorer = live.pipeline.scorer.by_app["default"]
        assert len(scorer.item_ids) == N_ITEMS + 5 and scorer.approximate == (ann_threshold < N_ITEMS)
        if scorer.approximate:  # the new rows were added to the version's index, not rebuilt into a new one
            assert scorer._neighbours is not None and scorer._neighbours.ntotal == N_ITEMS + 5
        incremental = _scores_by_id(live, users)
        similar = {i: live.similar("default", i, 5)["items"] for i in ("news", "extra1", "m1")}
        assert "news" in incremental["u1"] and "extra3" in incremental["u0"]
    finally:
        live.close()
    rebuilt = build_service(settings)
    rebuilt.start()
    rebuilt.wait_warm(30)
    try:
        again = _scores_by_id(rebuilt, users)
        for u in users:
            assert again[u].keys() == incremental[u].keys()
            ids = sorted(again[u])
            np.testing.assert_allclose([again[u][i] for i in ids], [incremental[u][i] for i in ids], rtol=1e-5, atol=1e-5)
        for item, items in similar.items():
            assert [i["item_id"] for i in rebuilt.similar("default", item, 5)["items"]] == [i["item_id"] for i in items]
    finally:
        rebuilt.close()


def test_a_learned_version_keeps_the_items_added_from_text(data_dir, one_torch_thread):
    """The online learner's next version is the served scorer's model with the added rows
    (nothing is lost when it swaps in), and an item it then learns from stays where it is."""
    from liverec.learning import LearnerConfig

    settings = Settings(data_dir=data_dir, snapshot_interval_s=0)
    svc = build_service(settings)
    svc.start()
    svc.wait_warm(30)
    try:
        svc.put_item("default", "news", NEWS)
        served = svc.pipeline.scorer.by_app["default"]
        learners = svc.component(__import__("liverec.learning", fromlist=["Learners"]).Learners)
        cfg = LearnerConfig(min_events=1, replay_users=8)
        cfg.finetune.steps = 2
        cfg.finetune.tolerance = 1.0  # this test checks what a version holds, not whether it helps
        learner = learners.add("default", cfg, start=False)
        svc.ingest("default", [{"event_id": f"n{u}", "user_id": f"u{u}", "item_id": "news", "type": "view",
                                "timestamp": 9_000 + u} for u in range(1, N_USERS, 4)])
        out = learner.step()
        assert out is not None and out["accepted"], out
        newer = svc.pipeline.scorer.by_app["default"]
        assert newer is not served and newer.model.cfg.n_items == N_ITEMS + 1 and newer.index["news"] == N_ITEMS + 1
    finally:
        svc.close()


def test_an_upserted_text_is_encoded_once_for_every_process(data_dir, one_torch_thread, monkeypatch):
    """Two processes over one store (two workers): the one that takes the upsert encodes the new
    item's text and shares the vector; the other places the item from it without encoding."""
    settings = Settings(data_dir=data_dir, snapshot_interval_s=0)
    services = [build_service(settings), build_service(settings)]
    encoded: list[list[str]] = [[], []]
    try:
        for k, svc in enumerate(services):
            svc.start()
            svc.wait_warm(30)
            encoder = svc.pipeline.scorer.by_app["default"].text_encoder
            monkeypatch.setattr(encoder, "encode", lambda texts, k=k, f=encoder.encode: encoded[k].extend(texts) or f(texts))
        writer, reader = services
        writer.put_item("default", "news", NEWS)
        reader.follower.catch_up()
        assert len(encoded[0]) == 1 and "rocket planet" in encoded[0][0] and encoded[1] == []
        vectors = [s.pipeline.scorer.by_app["default"].item_embeddings("default") for s in services]
        rows = [dict(zip(ids, range(len(ids))))["news"] for ids, _ in vectors]
        np.testing.assert_array_equal(vectors[0][1][rows[0]], vectors[1][1][rows[1]])
        # a text first seen by the reader (the same item, new text, upserted there) goes the other way
        reader.put_item("default", "news", {**NEWS, "text": "A horror story: ghost blood haunted scream"})
        writer.follower.catch_up()
        assert len(encoded[0]) == 1 and len(encoded[1]) == 1
    finally:
        for svc in services:
            svc.close()
