"""Approximate retrieval against exact scoring: a recall floor on a 100k-item catalog, the exact
path below the threshold, the ranking stages and blocks after retrieval, items added to a built
index, a new version indexed before it serves."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from liverec.catalog import CatalogIndex
from liverec.config import Settings
from liverec.events import DEFAULT_TYPES, Event
from liverec.model.registry import ModelRegistry
from liverec.model.scorer import TransformerScorer
from liverec.model.serving import PromotedModels
from liverec.model.synthetic import ClusteredCatalog, clustered_catalog
from liverec.model.text import HashingEncoder
from liverec.ranking import RankingConfig, RankingSettings, build_ranking
from liverec.ranking.stages import top_order
from liverec.recommend.pipeline import Pipeline, Policy, RecommendRequest
from liverec.recommend.retrieval import AnnConfig
from liverec.runtime.models import ModelServer
from liverec.state import UserState
from liverec.store.base import Item


@pytest.fixture(autouse=True)
def _one_thread(one_torch_thread):
    yield


@pytest.fixture(scope="module")
def large() -> ClusteredCatalog:
    return clustered_catalog(100_000, clusters=500, d_model=64, n_blocks=2, max_len=50, spread=1.0, seed=0)


@pytest.fixture(scope="module")
def small() -> ClusteredCatalog:
    return clustered_catalog(5_000, clusters=50, d_model=32, n_blocks=1, max_len=30, seed=1)


def _state(items: list[str], user: str = "u", t0: float = 1_000_000.0, extra: list[Event] = ()) -> UserState:
    s = UserState(200)
    for k, item in enumerate(items):
        s.apply(Event(app="a", event_id=f"{user}-{k}", user_id=user, type="rating", timestamp=t0 + 60 * k,
                      item_id=item, value=4.0), DEFAULT_TYPES["rating"])
    for e in extra:
        s.apply(e, DEFAULT_TYPES[e.type])
    return s


def _recall(exact: TransformerScorer, approx: TransformerScorer, states: list[UserState | None], k: int = 100) -> float:
    """Mean share of each user's exact top-``k`` that the approximate path's top-``k`` holds."""
    full = exact.score_many(states)  # (B, N)
    hits = []
    for r, s in enumerate(states):
        truth = set(top_order(full[r], k).tolist())
        got = approx.score("a", s, 10)
        assert got.partial, "the approximate path must retrieve a part of the catalog"
        hits.append(len(truth & set(got.index[top_order(got.scores, k)].tolist())) / k)
    return float(np.mean(hits))


def test_recall_at_100_of_the_index_against_exact_scores(large):
    rng = np.random.default_rng(7)
    states = [_state(large.history(rng, int(rng.integers(5, 40))), f"u{k}") for k in range(150)] + [None]
    exact = TransformerScorer("a", large.model, large.item_ids)
    approx = TransformerScorer("a", large.model, large.item_ids, ann=AnnConfig(threshold=50_000))
    assert exact._retrieval is None and approx._retrieval is not None
    assert _recall(exact, approx, states) >= 0.95
    # the floor is not a given: one list of ~316 per query misses most of the exact top-100
    crippled = TransformerScorer("a", large.model, large.item_ids, ann=AnnConfig(threshold=50_000, probes=1, candidates=100))
    assert _recall(exact, crippled, states[:40]) < 0.9
    sizes = approx.index_bytes()
    assert sizes["item_matrix"] == (large.model.cfg.n_items + 1) * 64 * 2  # bf16
    assert sizes["retrieval_index"] < (64 + 1) * 4 * large.model.cfg.n_items / 3  # int8 codes, not float32


def test_below_the_threshold_the_result_is_the_exact_one(small):
    rng = np.random.default_rng(3)
    exact = TransformerScorer("a", small.model, small.item_ids)
    below = TransformerScorer("a", small.model, small.item_ids, ann=AnnConfig(threshold=len(small.item_ids) + 1))
    assert below._retrieval is None and not below.approximate
    states = {f"u{k}": _state(small.history(rng, 12), f"u{k}") for k in range(20)}
    for s in list(states.values()) + [None]:
        a, b = exact.score("a", s, 10), below.score("a", s, 10)
        assert np.array_equal(a.item_ids, b.item_ids) and np.array_equal(a.scores, b.scores) and not b.partial
    slates = []
    for scorer in (exact, below):
        pipeline, _ = _pipeline(small, scorer, states)
        slates.append([[(r.item_id, r.score) for r in pipeline.recommend(RecommendRequest("a", u, 10))[0]] for u in states])
    assert slates[0] == slates[1]


def _items(cat: ClusteredCatalog) -> list[Item]:
    return [Item("a", item, f"item {k}", f"topic {cat.labels[k]}", (f"c{cat.labels[k]}",)) for k, item in enumerate(cat.item_ids)]


def _pipeline(cat: ClusteredCatalog, scorer: TransformerScorer, states: dict[str, UserState],
              explore: bool = True) -> tuple[Pipeline, list[int]]:
    """The request path of a service over ``scorer``; the list collects the candidate counts."""
    catalog = CatalogIndex()
    catalog.load(_items(cat))
    sizes: list[int] = []

    class Counting:
        name = "transformer"

        def __getattr__(self, name):
            return getattr(scorer, name)

        def score(self, app, state, n):
            out = scorer.score(app, state, n)
            sizes.append(len(out.item_ids))
            return out

    settings = RankingSettings(RankingConfig(explore=explore))
    ranking = build_ranking(catalog, lambda: scorer, lambda app, item, n: scorer.similar(app, item, n), DEFAULT_TYPES, None,
                            settings=settings, seed=0)
    return Pipeline(lambda app, user: states.get(user), Counting(), Policy(catalog.get), ranking=ranking), sizes


def test_ranking_stages_and_blocks_apply_after_retrieval(small):
    rng = np.random.default_rng(5)
    approx = TransformerScorer("a", small.model, small.item_ids, ann=AnnConfig(threshold=1_000))
    exact = TransformerScorer("a", small.model, small.item_ids)
    history = small.history(rng, 15, topics=2)
    plain = _state(history)
    best = [small.item_ids[k] for k in top_order(exact.score_many([plain])[0], 40).tolist() if small.item_ids[k] not in plain.consumed]
    blocked_items = best[:3]
    blocked_category = f"c{small.labels[small.item_ids.index(best[3])]}"
    t = 2_000_000.0
    blocks = [Event("a", f"b{k}", "u", "block", t + k, item_id=i) for k, i in enumerate(blocked_items)]
    blocks.append(Event("a", "bc", "u", "block", t + 9, scope="category", target=blocked_category))
    states = {"u": _state(history, extra=blocks), "v": plain}
    pipeline, sizes = _pipeline(small, approx, states)
    category = {item: f"c{small.labels[k]}" for k, item in enumerate(small.item_ids)}
    for _ in range(20):  # exploration draws differ from request to request
        recs, _ = pipeline.recommend(RecommendRequest("a", "u", 10))
        assert len(recs) == 10
        for r in recs:
            assert r.item_id not in blocked_items and category[r.item_id] != blocked_category
            assert r.item_id not in plain.consumed
            assert r.because and 0 < r.propensity <= 1
    assert sizes and max(sizes) < len(small.item_ids)  # every request went through retrieval
    assert any(category[i] == blocked_category for i in best[:10]), "the block must remove items the user would see"


def test_without_exploration_the_stages_give_the_exact_slate(small):
    """Off a negative streak the pool holds the same items on both paths (on one, the best item
    of every category joins the pool: from all items on the exact path, from the retrieved ones
    on the approximate path). A float32 matrix: bf16 moves scores in the third decimal."""
    rng = np.random.default_rng(5)
    approx = TransformerScorer("a", small.model, small.item_ids, ann=AnnConfig(threshold=1_000, matrix="fp32"))
    exact = TransformerScorer("a", small.model, small.item_ids)
    history = small.history(rng, 15, topics=2)
    best = small.item_ids[top_order(exact.score_many([_state(history)])[0], 1)[0]]
    t = 2_000_000.0
    two = [Event("a", "b0", "w", "block", t, item_id=best),
           Event("a", "b1", "w", "dislike", t + 1, scope="category", target=f"c{small.labels[small.item_ids.index(history[-1])]}")]
    states = {"v": _state(history, "v"), "w": _state(history, "w", extra=two)}
    slates = []
    for scorer in (exact, approx):
        p, sizes = _pipeline(small, scorer, states, explore=False)
        slates.append([[(r.item_id, round(r.score, 5)) for r in p.recommend(RecommendRequest("a", u, 10))[0]] for u in states])
    assert max(sizes) < len(small.item_ids) and slates[0] == slates[1]
    assert best not in {i for i, _ in slates[1][1]} and best in {i for i, _ in slates[1][0]}


def test_a_pool_emptied_by_blocks_is_widened_until_the_slate_fills(small):
    rng = np.random.default_rng(11)
    approx = TransformerScorer("a", small.model, small.item_ids, ann=AnnConfig(threshold=1_000, candidates=200))
    history = small.history(rng, 10, topics=1)
    kept = int(small.labels[small.item_ids.index(history[0])] + 1) % 50  # one cluster the user never saw
    blocks = [Event("a", f"b{c}", "u", "block", 2e6 + c, scope="category", target=f"c{c}") for c in range(50) if c != kept]
    pipeline, sizes = _pipeline(small, approx, {"u": _state(history, extra=blocks)})
    recs, _ = pipeline.recommend(RecommendRequest("a", "u", 10))
    assert len(recs) == 10 and {f"c{small.labels[small.item_ids.index(r.item_id)]}" for r in recs} == {f"c{kept}"}
    assert len(sizes) > 1, "the first pool could not fill the slate: asked again"


def test_an_item_added_after_the_index_is_built_is_retrievable():
    enc = HashingEncoder(16)
    cat = clustered_catalog(5_000, clusters=50, d_model=16, n_blocks=1, max_len=30, text_dim=16, seed=2)
    approx = TransformerScorer("a", cat.model, cat.item_ids, text_encoder=enc, ann=AnnConfig(threshold=1_000))
    rng = np.random.default_rng(1)
    state = _state(cat.history(rng, 10))
    best = approx.item_ids[top_order(approx.score_many([state])[0], 1)[0]]
    # a new item whose text vector is that of the user's best item (the model's own text buffer)
    text = approx.model.item_text[approx.index[best]].numpy()

    class Same:
        name, dim = enc.name, enc.dim

        def encode(self, texts):
            return np.tile(text, (len(texts), 1))

    approx.text_encoder = Same()
    grown = approx.add_items(["new"], ["the same text"])
    assert grown._retrieval is approx._retrieval and grown._retrieval.ntotal == 5_001  # added, not rebuilt
    full = grown.score_many([state])[0]
    assert int((full > full[-1]).sum()) < 50, "the new item ranks high for this user"
    got = grown.score("a", state, 10)
    assert got.partial and "new" in got.item_ids.tolist()
    assert "new" in dict(grown.similar("a", best, 5)) and best in dict(grown.similar("a", "new", 5))
    old = approx.score("a", state, 10)  # the scorer it replaces skips the row it does not know
    assert "new" not in old.item_ids.tolist() and old.index.max() < 5_000


def test_a_new_version_is_indexed_before_it_serves(tmp_path, small):
    registry = ModelRegistry.for_data_dir(tmp_path, "a")
    registry.promote(registry.register(small.model, small.item_ids))
    router = PromotedModels()
    server = ModelServer(tmp_path, router, watch=True, interval_s=3600, ann=AnnConfig(threshold=1_000))
    server.start()  # at start the version serves at once; its index is built in the background
    server.wait_loaded(timeout=60)
    first = router.by_app["a"]
    assert first._retrieval is not None and first.score("a", None, 10).partial
    registry.promote(registry.register(small.model, small.item_ids))
    seen: list[object] = []
    set_ = router.set
    router.set = lambda app, scorer, **kw: (seen.append(scorer._retrieval), set_(app, scorer, **kw))  # type: ignore[method-assign]
    server.check()
    server.stop()
    assert router.by_app["a"] is not first and seen and seen[0] is not None and seen[0] is not first._retrieval


def test_the_threshold_setting_defaults_to_the_retrieval_default(monkeypatch):
    assert Settings.model_construct().ann_threshold == AnnConfig().threshold
    monkeypatch.setenv("LIVEREC_ANN_THRESHOLD", "1000")
    assert Settings().ann_threshold == 1000
    with pytest.raises(ValueError, match="threshold"):
        AnnConfig(threshold=0)
    torch.manual_seed(0)
