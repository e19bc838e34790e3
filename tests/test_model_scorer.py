"""The Transformer behind the service seam: batched == single, all items scored, fresh state
changes the output, save -> load identical, cold-start items scorable and retrievable."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from liverec.events import DEFAULT_TYPES, Event
from liverec.model.artifacts import load_artifact, save_artifact, weights_equal
from liverec.model.registry import ModelRegistry
from liverec.model.scorer import TransformerScorer
from liverec.model.text import HashingEncoder
from liverec.model.transformer import FeedbackTransformer, ModelConfig
from liverec.state import UserState

torch.set_num_threads(1)

N_ITEMS = 25
ITEMS = [f"i{k}" for k in range(N_ITEMS)]


def _model(seed: int = 0, text_dim: int = 16) -> FeedbackTransformer:
    torch.manual_seed(seed)
    m = FeedbackTransformer(ModelConfig(n_items=N_ITEMS, d_model=16, n_blocks=1, max_len=12, text_dim=text_dim, dropout=0.0))
    with torch.no_grad():  # non-trivial repeat term and bias, as after training
        m.rep_type.normal_()
        m.rep_value.normal_()
        m.out_bias.normal_()
    if text_dim:
        enc = HashingEncoder(text_dim)
        vecs = np.zeros((N_ITEMS + 1, text_dim), np.float32)
        vecs[1:] = enc.encode([f"item {k} group {k % 3}" for k in range(N_ITEMS)])
        m.set_item_text(torch.from_numpy(vecs))
    return m.eval()


def _state(items: list[str], t0: float = 100.0, types: list[str] | None = None) -> UserState:
    s = UserState(12)
    for k, item in enumerate(items):
        typ = types[k] if types else "rating"
        e = Event(app="a", event_id=f"e{k}", user_id="u", type=typ, timestamp=t0 + 30 * k, item_id=item,
                  value=4.0 if typ == "rating" else None)
        s.apply(e, DEFAULT_TYPES[typ])
    return s


def test_scores_cover_every_item() -> None:
    sc = TransformerScorer("a", _model(), ITEMS, text_encoder=HashingEncoder(16))
    out = sc.score("a", _state(["i1", "i2", "i3"]), 5)
    assert sorted(out.item_ids.tolist()) == sorted(ITEMS)  # nothing excluded by accident
    assert out.scores.shape == (N_ITEMS,) and np.isfinite(out.scores).all()
    assert sc.score("other-app", _state(["i1"]), 5).item_ids.size == 0


def test_batched_equals_single() -> None:
    sc = TransformerScorer("a", _model(), ITEMS)
    states = [_state(["i1", "i2", "i3"]), _state(["i5"]), None, _state([f"i{k}" for k in range(15)]),
              _state(["i4", "i9"], types=["click", "dislike"])]
    batch = sc.score_many(states)
    for r, s in enumerate(states):
        single = sc.score("a", s, 5).scores
        np.testing.assert_allclose(batch[r], single, rtol=1e-5, atol=1e-5)


def test_event_a_moment_ago_changes_the_output_through_the_model() -> None:
    sc = TransformerScorer("a", _model(), ITEMS)
    before = sc.score("a", _state(["i1", "i2"]), 5).scores
    after = sc.score("a", _state(["i1", "i2", "i7"]), 5).scores
    others = [k for k in range(N_ITEMS) if k not in (1, 2, 7)]  # not only the repeat term: every item moves
    assert np.abs(after[others] - before[others]).max() > 1e-4


def test_save_load_identical_scores(tmp_path) -> None:
    m = _model()
    save_artifact(tmp_path / "art", m, ITEMS, {"metrics": {"NDCG@10": 0.5}})
    art = load_artifact(tmp_path / "art")
    assert weights_equal(m, art.model) and art.item_ids == ITEMS
    s = _state(["i3", "i4", "i5"])
    a = TransformerScorer("a", m, ITEMS).score("a", s, 5).scores
    b = TransformerScorer("a", art.model, art.item_ids).score("a", s, 5).scores
    assert np.array_equal(a, b)
    with pytest.raises(FileExistsError):
        save_artifact(tmp_path / "art", m, ITEMS)


def test_cold_start_item_scored_and_similar() -> None:
    enc = HashingEncoder(16)
    sc = TransformerScorer("a", _model(), ITEMS, text_encoder=enc)
    # text-only item sharing its text with i4: same projected text vector, no interactions at all
    sc2 = sc.add_items(["new-item"], ["item 4 group 1"])
    out = sc2.score("a", _state(["i1", "i2"]), 5)
    assert "new-item" in out.item_ids.tolist()
    assert np.isfinite(out.scores[out.item_ids.tolist().index("new-item")])
    sims = dict(sc2.similar("a", "new-item", 5))
    assert sims, "a text-only item must have similar items"
    assert sc.score("a", None, 5).item_ids.size == N_ITEMS  # the original scorer is unchanged
    with pytest.raises(ValueError):
        TransformerScorer("a", _model(text_dim=0), ITEMS, text_encoder=enc).add_items(["x"], ["t"])


def test_items_added_from_text_extend_the_matrix_and_export_as_model_rows() -> None:
    """Added rows: the model is shared, not rebuilt; a new text for an added item replaces its row,
    a model item keeps its own; a scorer of the exported model scores and lists similar items as
    the grown one does."""
    enc = HashingEncoder(16)
    sc = TransformerScorer("a", _model(), ITEMS, text_encoder=enc)
    grown = sc.add_items(["n1", "n2", "i3"], ["item 4 group 1", "item 7 group 1", "something else"])
    assert grown.model is sc.model and len(grown.item_ids) == N_ITEMS + 2 and len(sc.item_ids) == N_ITEMS
    assert grown.add_items(["n1"], ["item 4 group 1"]) is grown  # nothing changed
    again = grown.add_items(["n2"], ["item 9 group 0"])
    assert not torch.equal(again._vecs[again.index["n2"]], grown._vecs[grown.index["n2"]])
    assert torch.equal(again._vecs[: N_ITEMS + 1], sc._vecs)  # the model's items untouched (i3 too)
    model, ids = again.export()
    assert model.cfg.n_items == N_ITEMS + 2 and ids == ITEMS + ["n1", "n2"]
    rebuilt = TransformerScorer("a", model, ids, text_encoder=enc)
    states = [_state(["i1", "i2"]), _state(["n1", "i5", "n2"]), None]
    np.testing.assert_allclose(rebuilt.score_many(states), again.score_many(states), rtol=1e-5, atol=1e-6)
    assert [i for i, _ in rebuilt.similar("a", "n2", 5)] == [i for i, _ in again.similar("a", "n2", 5)]


def test_registry_promote_rollback(tmp_path) -> None:
    reg = ModelRegistry.for_data_dir(tmp_path, "shop")
    v1 = reg.register(_model(0), ITEMS, {"validation": {"NDCG@10": 0.1}})
    v2 = reg.register(_model(1), ITEMS, {"validation": {"NDCG@10": 0.2}})
    assert (v1, v2) == ("v000001", "v000002") and reg.promoted() is None
    reg.promote(v1)
    reg.promote(v2)
    assert reg.promoted() == v2
    rows = {r["version"]: r for r in reg.list()}
    assert rows[v2]["promoted"] and rows[v1]["metrics"]["NDCG@10"] == 0.1
    assert reg.rollback() == v1 and reg.promoted() == v1
    assert weights_equal(reg.load().model, _model(0))
    with pytest.raises(LookupError):
        reg.rollback()
    with pytest.raises(KeyError):
        reg.promote("v000099")
    assert not list(reg.root.glob(".PROMOTED.tmp*"))  # the pointer is replaced by rename


def test_minilm_package_loads_offline() -> None:
    """The real sentence encoder (bundled weights, no hub access) gives 384-d unit vectors."""
    from liverec.model.text import MiniLMEncoder

    v = MiniLMEncoder().encode(["a comedy about toys", "an animated film about toys", "tax law"])
    assert v.shape == (3, 384)
    np.testing.assert_allclose(np.linalg.norm(v, axis=1), 1.0, atol=1e-4)
    assert v[0] @ v[1] > v[0] @ v[2]


def test_last_position_fast_path_equals_full_forward() -> None:
    """Inference computes the last block for the newest position only; it must equal the full pass."""
    m = _model()
    g = torch.Generator().manual_seed(5)
    items = torch.randint(1, N_ITEMS + 1, (4, 9), generator=g)
    items[1, :3] = 0  # left padding
    types = torch.where(items > 0, 5, 0)
    values = torch.where(items > 0, 9, 0)
    gaps = torch.where(items > 0, 3, 0)
    with torch.inference_mode():
        full = m.encode(items, types, values, gaps)[:, -1]
        fast = m.encode(items, types, values, gaps, last_only=True)[:, -1]
    torch.testing.assert_close(fast, full, rtol=1e-5, atol=1e-5)


def test_request_gap_is_served_as_it_is_evaluated() -> None:
    """A model that reads the time until the request gets the same input from the live state
    (clock = ``now``) as from the offline windows (request time = the held-out event's time)."""
    from liverec.model.data import Sequences, input_windows
    from liverec.model.features import type_id
    from liverec.model.train import _tensors

    torch.manual_seed(0)
    m = FeedbackTransformer(ModelConfig(n_items=N_ITEMS, d_model=16, n_blocks=1, max_len=12, dropout=0.0,
                                        use_request_gap=True)).eval()
    with torch.no_grad():
        m.next_gap_emb.weight.normal_()
    sc = TransformerScorer("a", m, ITEMS)
    state = _state(["i1", "i2", "i3"])  # ratings at t = 100, 130, 160
    seqs = Sequences.from_lists([[2, 3, 4]], types=[[type_id("rating")] * 3], values=[[4.0] * 3],
                                timestamps=[[100.0, 130.0, 160.0]])
    served = {}
    for now in (160.0, 400.0, 1e6):
        t = _tensors(input_windows(seqs, 12, request_times=np.array([now])), "cpu")
        with torch.no_grad():
            ref = m.score_last(t["items"], t["types"], t["values"], t["gaps"], next_gaps=t["next_gaps"])[0].numpy()
        served[now] = sc.score_many([state], now=now)[0]
        np.testing.assert_allclose(served[now], ref, rtol=1e-5, atol=1e-5)
    assert np.abs(served[160.0] - served[1e6]).max() > 1e-3  # the time until the request matters


# ---------------------------------------------------------------- event text off the request path
class CountingEncoder:
    """A HashingEncoder that records every encode call (batch sizes) and every load."""

    def __init__(self, dim: int = 16) -> None:
        self.inner = HashingEncoder(dim)
        self.name, self.dim = self.inner.name, dim
        self.batches: list[int] = []
        self.loads = 0

    def load(self) -> "CountingEncoder":
        self.loads += 1
        return self

    def encode(self, texts: list[str]) -> np.ndarray:
        self.batches.append(len(texts))
        return self.inner.encode(texts)


def _text_event(k: int, text: str, typ: str = "search") -> Event:
    return Event(app="a", event_id=f"t{k}", user_id="u", type=typ, timestamp=500.0 + k, text=text,
                 item_id=None if typ == "search" else "i3")


def _with_texts(texts: list[str], typ: str = "search") -> UserState:
    s = _state(["i1", "i2"])
    for k, text in enumerate(texts):
        s.apply(_text_event(k, text, typ), DEFAULT_TYPES[typ])
    return s


class EncodeInRequest(TransformerScorer):
    """The reference: each event text is encoded inside the request, one text per call."""

    def _event_text(self, text: str) -> np.ndarray | None:
        return self.text_encoder.encode([text])[0]


def test_observed_text_is_looked_up_not_encoded_in_the_request() -> None:
    enc = CountingEncoder()
    sc = TransformerScorer("a", _model(), ITEMS, text_encoder=enc)
    sc.observe("a", _text_event(0, "red running shoes"))
    sc.observe("a", _text_event(1, "red running shoes", "review"))  # known text: not encoded again
    sc.observe("other-app", _text_event(2, "blue hat"))  # another app's event is not this model's
    assert enc.batches == [1]
    sc.score("a", _with_texts(["red running shoes"]), 5)
    sc.score_many([_with_texts(["red running shoes"], "review"), None])
    assert enc.batches == [1] and sc.text_misses == 0


def test_scores_with_known_text_equal_encoding_in_the_request() -> None:
    model, enc = _model(), HashingEncoder(16)
    texts = ["pixar toys", "tax law documentary", "pixar toys"]
    states = [_with_texts(texts), _with_texts(texts[:1], "review"), _state(["i4"]), None]
    sc = TransformerScorer("a", model, ITEMS, text_encoder=enc)
    assert sc.warm_texts(texts) == 2
    served = sc.score_many(states, now=1000.0)
    reference = EncodeInRequest("a", model, ITEMS, text_encoder=enc).score_many(states, now=1000.0)
    np.testing.assert_array_equal(served, reference)
    without_text = sc.score_many([_with_texts(["", "", ""])], now=1000.0)[0]
    assert np.abs(served[0] - without_text).max() > 1e-4  # the text does reach the model
    assert sc.text_misses == 0


def test_unknown_text_is_not_encoded_in_the_request_and_reads_as_absent() -> None:
    enc = CountingEncoder()
    sc = TransformerScorer("a", _model(), ITEMS, text_encoder=enc)
    state = _with_texts(["never observed"])
    out = sc.score_many([state], now=1000.0)[0]
    assert enc.batches == [] and sc.text_misses == 1
    # the model sees the event as one without text
    plain = sc.score_many([_with_texts([""])], now=1000.0)[0]
    np.testing.assert_allclose(out, plain, rtol=1e-6, atol=1e-6)
    # the missed text is encoded by the next event, off the request path, together with its own text
    sc.observe("a", _text_event(5, "a new search"))
    assert enc.batches == [2] and sc.text_vectors is not None and "never observed" in sc.text_vectors
    sc.score_many([state], now=1000.0)
    assert enc.batches == [2] and sc.text_misses == 1


def test_warm_texts_encodes_unknown_texts_in_batches() -> None:
    enc = CountingEncoder()
    sc = TransformerScorer("a", _model(), ITEMS, text_encoder=enc)
    sc.observe("a", _text_event(0, "text 3"))
    texts = [f"text {k}" for k in range(600)] + ["text 7", ""]  # a duplicate and an empty text
    assert sc.warm_texts(iter(texts)) == 599
    assert enc.batches == [1, 256, 256, 87]
    assert sc.warm_texts(texts) == 0 and len(enc.batches) == 4
    assert sc.score_many([_with_texts(texts[:5])]).shape == (1, N_ITEMS) and sc.text_misses == 0
    assert TransformerScorer("a", _model(text_dim=0), ITEMS, text_encoder=enc).warm_texts(texts) == 0


def test_in_memory_text_vectors_are_bounded() -> None:
    from liverec.model.text import TextVectorMemo

    memo = TextVectorMemo(HashingEncoder(8), max_texts=10, batch_size=4)
    memo.warm(f"t{k}" for k in range(25))
    assert len(memo) == 10 and "t24" in memo and "t0" not in memo


def test_text_vectors_persist_for_a_restart(tmp_path) -> None:
    cache = tmp_path / "text_cache"
    first = CountingEncoder()
    sc = TransformerScorer("a", _model(), ITEMS, text_encoder=first, text_cache_dir=cache)
    sc.warm_texts([f"text {k}" for k in range(300)])
    sc.observe("a", _text_event(0, "observed once"))
    assert first.batches == [256, 44, 1]
    assert sc.save_texts() == 1 and sc.save_texts() == 0

    again = CountingEncoder()  # a restarted process (or a second worker) reads them from disk
    sc2 = TransformerScorer("a", _model(), ITEMS, text_encoder=again, text_cache_dir=cache)
    assert sc2.warm_texts(["observed once"] + [f"text {k}" for k in range(300)]) == 301
    assert again.batches == []
    np.testing.assert_array_equal(sc2.score_many([_with_texts(["observed once", "text 5"])], now=1000.0),
                                  sc.score_many([_with_texts(["observed once", "text 5"])], now=1000.0))


def test_text_cache_writers_keep_each_others_vectors(tmp_path) -> None:
    from liverec.model.text import TextVectorCache

    enc = HashingEncoder(8)
    a, b = TextVectorCache(tmp_path, enc), TextVectorCache(tmp_path, enc)  # two processes, same dir
    a.put(["alpha"], enc.encode(["alpha"]))
    a.save()
    b.put(["beta", "gamma"], enc.encode(["beta", "gamma"]))
    b.save()
    merged = TextVectorCache(tmp_path, enc)
    assert len(merged) == 3
    np.testing.assert_array_equal(merged.get(["gamma", "alpha"]), enc.encode(["gamma", "alpha"]))


def test_promoted_models_route_texts_and_keep_them_across_a_swap(tmp_path) -> None:
    from liverec.model.serving import PromotedModels, load_scorer

    reg = ModelRegistry.for_data_dir(tmp_path, "a")
    reg.promote(reg.register(_model(0), ITEMS))
    enc = CountingEncoder()
    router = PromotedModels()
    router.set("a", load_scorer(reg, "a", text_encoder=enc, text_cache_dir=tmp_path / "text_cache"))
    assert enc.loads == 1  # loaded at start, not by the first request
    assert router.warm_texts("a", ["old search", "another"]) == 2 and router.warm_texts("b", ["x"]) == 0
    router.observe("a", _text_event(0, "new search"))
    assert enc.batches == [2, 1]
    reg.promote(reg.register(_model(1), ITEMS))
    router.set("a", load_scorer(reg, "a", text_encoder=enc))  # the new version keeps the vectors
    router.score("a", _with_texts(["old search", "new search"]), 5)
    assert enc.batches == [2, 1] and router.by_app["a"].text_misses == 0
    assert router.save_texts() == 1  # the observed text, encoded after the warm-up was saved


def test_concurrent_requests_are_micro_batched_and_equal_one_at_a_time() -> None:
    import threading
    import time

    sc = TransformerScorer("a", _model(), ITEMS)
    states = [_state([f"i{(u + k) % N_ITEMS}" for k in range(1 + u % 9)]) for u in range(24)]
    alone = [sc.score("a", s, 5).scores for s in states]
    sizes: list[int] = []
    plain = sc._score_users

    def slow_pass(batch, now=None):  # a pass long enough for the other callers to queue
        sizes.append(len(batch))
        time.sleep(0.02)
        return plain(batch, now)

    sc._score_users = slow_pass  # type: ignore[method-assign]
    got: dict[int, np.ndarray] = {}
    threads = [threading.Thread(target=lambda u=u: got.__setitem__(u, sc.score("a", states[u], 5).scores))
               for u in range(len(states))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sum(sizes) == len(states) and max(sizes) > 1, sizes  # several requests shared a pass
    for u, s in enumerate(alone):
        np.testing.assert_allclose(got[u], s, rtol=1e-5, atol=1e-5)


def test_a_failing_batch_fails_each_of_its_callers_and_the_next_batch_runs() -> None:
    from liverec.batching import MicroBatcher

    calls = []

    def fn(xs):
        calls.append(list(xs))
        if any(x < 0 for x in xs):
            raise ValueError("negative")
        return [x + 1 for x in xs]

    b = MicroBatcher(fn)
    with pytest.raises(ValueError):
        b(-1)
    assert b(1) == 2 and calls == [[-1], [1]]


def test_submitted_inputs_are_batched_while_a_batch_runs_and_resolve_their_futures() -> None:
    """An async caller submits without blocking a thread: what is submitted while a batch runs
    goes into the next one, run by the batcher's own thread; failures reach every future."""
    import threading

    from liverec.batching import MicroBatcher

    running, release = threading.Event(), threading.Event()
    calls = []

    def fn(xs):
        calls.append(list(xs))
        if xs[0] == 0:  # the first batch: hold it while more is submitted
            running.set()
            release.wait(5)
        if any(x < 0 for x in xs):
            raise ValueError("negative")
        return [x * 10 for x in xs]

    b = MicroBatcher(fn)
    first = b.submit(0)
    assert running.wait(5)
    later = [b.submit(x) for x in (1, 2, 3)]
    release.set()
    assert first.result(5) == 0 and [f.result(5) for f in later] == [10, 20, 30]
    assert calls == [[0], [1, 2, 3]]
    with pytest.raises(ValueError):
        b.submit(-1).result(5)
    assert b(5) == 50  # a blocking caller still runs its own batch
    # a waiter that gave up (its future cancelled) leaves the runner serving the others
    running.clear()
    release.clear()
    held = b.submit(0)
    assert running.wait(5)
    gone = b.submit(6)
    assert gone.cancel()
    kept = b.submit(7)
    release.set()
    assert held.result(5) == 0 and kept.result(5) == 70 and gone.cancelled()
    assert b.submit(8).result(5) == 80


def test_a_replaced_scorer_is_freed_without_the_cyclic_collector() -> None:
    """Every item upsert replaces the served scorer (add_items); the old one, with its item
    matrices, must go when its last reference does, not wait for a cyclic collection."""
    import gc
    import weakref

    sc = TransformerScorer("a", _model(), ITEMS, text_encoder=HashingEncoder(16))
    sc.score("a", _state(["i1"]), 5)  # the batchers have run
    gc.disable()
    try:
        grown = sc.add_items(["new"], ["item new group 1"])
        gone = weakref.ref(sc)
        del sc
        assert gone() is None
        assert grown.score("a", _state(["i1"]), 5).item_ids.size == N_ITEMS + 1
    finally:
        gc.enable()
