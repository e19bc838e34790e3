"""The baseline scorer: incremental (observe) == recomputed (rebuild); deletion subtracts exactly."""

import random

import numpy as np
import pytest

from liverec.events import Event
from liverec.recommend.cooccurrence import CooccurrenceConfig, CooccurrenceScorer
from liverec.state import StateStore


def random_log(seed: int, n: int = 400) -> list[Event]:
    rng = random.Random(seed)
    types = ["view", "click", "like", "purchase", "rating", "skip", "dislike", "impression"]
    t = 1_000_000.0
    events = []
    for k in range(n):
        t += rng.expovariate(1 / 3600)
        kind = rng.choice(types)
        events.append(Event("a" if rng.random() < 0.8 else "b", f"e{k}", f"u{rng.randrange(12)}", kind, t,
                            item_id=f"i{rng.randrange(25)}", value=4.0 if kind == "rating" else None))
    return events


def normalised(pop: dict[str, float]) -> dict[str, float]:
    total = sum(pop.values()) or 1.0
    return {k: v / total for k, v in pop.items() if v > 1e-12}


def assert_same(a: CooccurrenceScorer, b: CooccurrenceScorer, app: str):
    ids_a, ca = a.matrix(app)
    ids_b, cb = b.matrix(app)
    order = [ids_b.index(i) for i in ids_a]
    np.testing.assert_allclose(ca, cb[np.ix_(order, order)], atol=1e-9)
    pa, pb = normalised(a.popularity(app)), normalised(b.popularity(app))
    assert pa.keys() == pb.keys()
    for k in pa:
        assert pa[k] == pytest.approx(pb[k], rel=1e-9)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_rebuild_equals_observe(seed):
    log = random_log(seed)
    live = CooccurrenceScorer(CooccurrenceConfig(merge_every=50))  # exercise delta merges too
    for e in log:
        live.observe(e.app, e)
    bulk = CooccurrenceScorer()
    bulk.rebuild(log)
    for app in ("a", "b"):
        assert_same(live, bulk, app)
    # and both go on identically from there
    extra = random_log(seed + 100, 60)
    for e in extra:
        e2 = Event(e.app, "x" + e.event_id, e.user_id, e.type, e.timestamp + 1e6, e.item_id, e.value)
        live.observe(e2.app, e2)
        bulk.observe(e2.app, e2)
    for app in ("a", "b"):
        assert_same(live, bulk, app)


def test_forget_user_equals_rebuild_without_them():
    log = random_log(5)
    scorer = CooccurrenceScorer()
    for e in log:
        scorer.observe(e.app, e)
    gone = [e for e in log if e.app == "a" and e.user_id == "u3"]
    scorer.forget_user("a", gone)
    clean = CooccurrenceScorer()
    clean.rebuild([e for e in log if not (e.app == "a" and e.user_id == "u3")])
    ids, _ = clean.matrix("a")
    ids_s, cs = scorer.matrix("a")
    _, cc = clean.matrix("a")
    order = [ids_s.index(i) for i in ids]
    np.testing.assert_allclose(cs[np.ix_(order, order)], cc, atol=1e-9)


def test_scores_follow_sequences_and_popularity_for_new_users():
    scorer = CooccurrenceScorer()
    states = StateStore()
    t = 0.0
    for u in range(5):
        for item in ["a", "b", "c"]:
            t += 1
            e = Event("x", f"{u}{item}", f"u{u}", "view", t, item_id=item)
            states.apply(e)
            scorer.observe("x", e)
    e = Event("x", "new-a", "new", "view", t + 1, item_id="b")
    states.apply(e)
    scorer.observe("x", e)
    scored = scorer.score("x", states.get("x", "new"), 3)
    best = scored.item_ids[np.argmax(scored.scores)]
    assert best == "c"
    cold = scorer.score("x", None, 3)
    assert set(cold.item_ids) == {"a", "b", "c"}
    assert scorer.score("nobody", None, 3).item_ids.size == 0


def test_pair_similarity_equals_similar_lists():
    log = random_log(3)
    scorer = CooccurrenceScorer()
    scorer.rebuild(log)
    ids, _ = scorer.matrix("a")
    pairs = scorer.pair_similarity("a", ids + ["unknown"], ids[:6] + ["unknown"])
    for k, col in enumerate(ids[:6]):
        expected = dict(scorer.similar("a", col, len(ids)))
        for r, row in enumerate(ids):
            assert pairs[r, k] == pytest.approx(expected.get(row, 0.0), abs=1e-6)
    assert not pairs[-1].any() and not pairs[:, -1].any()
