"""Category-level feedback: the category exploration slot, stale likes after a run of negatives,
and the best items of a category the user turned to joining the pool."""

from __future__ import annotations

import numpy as np
import pytest

from liverec.catalog import CatalogIndex
from liverec.events import DEFAULT_TYPES, Event
from liverec.ranking.config import RankingConfig, RankingSettings
from liverec.ranking.feedback import stale_after_streak, summarise
from liverec.recommend.scoring import Scored
from liverec.state import UserState
from liverec.store.base import Item

from .test_ranking_policy import post, recs, seed

GENRE_OF = {"c": "Comedy", "d": "Drama", "h": "Horror", "s": "SciFi"}


def test_category_matrix_follows_the_catalog():
    cat = CatalogIndex()
    cat.put(Item("a", "x", "X", "", ("g1", "g2")))
    first = cat.category_matrix("a")
    assert cat.category_matrix("a") is first  # cached
    assert first.of(["x", "unknown"]).tolist() == [[True, True], [False, False]]
    cat.put(Item("a", "y", "Y", "", ("g3",)))  # a change rebuilds it
    again = cat.category_matrix("a")
    assert again.names == ["g1", "g2", "g3"] and again.of(["y"]).tolist() == [[False, False, True]]


def test_category_matrix_maps_a_scorer_table_once():
    cat = CatalogIndex()
    for k in range(6):
        cat.put(Item("a", f"i{k}", "", "", (f"g{k % 3}",)))
    cm = cat.category_matrix("a")
    table = np.array([f"i{k}" for k in (5, 4, 3, 9, 1, 0)], dtype=object)  # i9: not in the catalog
    index = np.array([3, 0, 5, 2])
    assert cm.of_table(table).tolist() == cm.of(table).tolist()
    assert cm.of_table(table, index).tolist() == cm.of(table[index]).tolist()
    assert len(cm._tables) == 1
    other = table.copy()  # another table object, even with equal contents, is its own entry
    other[0] = "i2"
    assert cm.of_table(other, index).tolist() == cm.of(other[index]).tolist()
    for g in range(len(cm.names)):  # each category's positions in the table
        assert cm.in_table(table, g).tolist() == np.flatnonzero(cm.of(table)[:, g]).tolist()
        assert cm.in_table(other, g).tolist() == np.flatnonzero(cm.of(other)[:, g]).tolist()


@pytest.mark.parametrize("seed_", range(20))
def test_best_first_offers_candidates_in_score_order(seed_):
    """The pool walk: what ``take`` accepts comes best score first, ties in position order, as a
    full stable sort would give, however much ``take`` refuses."""
    from liverec.ranking.stages import best_first

    rng = np.random.default_rng(seed_)
    scores = rng.integers(0, 30, size=500).astype(np.float32)  # many ties
    among = np.sort(rng.choice(500, size=200, replace=False)) if seed_ % 2 else None
    refused = set(rng.choice(500, size=int(rng.integers(0, 450)), replace=False).tolist())
    k = int(rng.integers(1, 120))
    got: list[int] = []
    n = best_first(scores, among, k, lambda j: j not in refused and (got.append(j) or True))
    cand = np.arange(500) if among is None else among
    want = [int(j) for j in cand[np.argsort(-scores[cand], kind="stable")] if int(j) not in refused][:k]
    assert got == want and n == len(want)


def test_scored_scores_of_reads_through_the_table():
    table = np.array(["a", "b", "c", "d", "e"], dtype=object)
    index = np.array([4, 1, 2])
    sub = Scored(table[index], np.array([0.5, 0.25, 0.75], dtype=np.float32), table, index)
    assert sub.scores_of(["b", "e", "a", "zz", "c"], -1.0).tolist() == [0.25, 0.5, -1.0, -1.0, 0.75]
    whole = Scored(table, np.arange(5, dtype=np.float32))
    assert whole.scores_of(["d", "x"], 9.0).tolist() == [3.0, 9.0]
    assert whole.base()[1] is None and sub.base()[0] is table


def _category_impressions(service) -> list:
    return [i for i in service.ranking.impressions.scan("default") if i.policy == "thompson-category"]


def test_category_slot_logs_exact_propensities(client):
    seed(client)
    service = client.app.state.service
    post(client, user_id="u", item_id="c0", type="view", timestamp=2000)
    for _ in range(30):
        body = client.get("/v1/users/u/recommendations", params={"n": 10, "explore": "true"}).json()
        tagged = [(pos, i, b) for pos, i in enumerate(body["items"]) for b in i["because"] if b.get("policy") == "thompson-category"]
        assert len(tagged) == 1
        pos, item, because = tagged[0]
        assert pos == min(RankingConfig().explore_slots) and because["category"] in item["categories"]
    logged = _category_impressions(service)
    assert len(logged) == 30
    for imp in logged:
        p = np.array(imp.pool_propensities)
        assert p.sum() == pytest.approx(1.0, abs=1e-9) and p.min() > 0
        assert imp.propensity == pytest.approx(p[imp.pool.index(imp.item_id)])
        assert len({GENRE_OF[i[0]] for i in imp.pool}) == len(imp.pool)  # one candidate per category


def test_category_slot_leads_the_slate_on_a_negative_streak(client):
    seed(client)
    post(client, user_id="u", item_id="c0", type="like", timestamp=2000)
    for k, item in enumerate(["c1", "c2", "c3"]):
        post(client, user_id="u", item_id=item, type="skip", timestamp=2001 + k)
    body = client.get("/v1/users/u/recommendations", params={"n": 10, "explore": "true"}).json()
    assert any(b.get("policy") == "thompson-category" for b in body["items"][0]["because"])


def test_categories_the_user_rejects_are_explored_less(client):
    seed(client)
    service = client.app.state.service
    post(client, user_id="u", item_id="c0", type="like", timestamp=2000)
    for k in range(6):  # horror, again and again: disliked
        post(client, user_id="u", item_id=f"h{k}", type="dislike", timestamp=2001 + k)
        post(client, user_id="u", item_id=f"c{k + 1}", type="click", timestamp=2001.5 + k)
    for _ in range(60):
        client.get("/v1/users/u/recommendations", params={"n": 10, "explore": "true"})
    chosen = [GENRE_OF[i.item_id[0]] for i in _category_impressions(service)]
    assert chosen.count("Horror") < min(chosen.count("Drama"), chosen.count("SciFi"))


def _state(events: list[tuple[str, str]]) -> UserState:
    st = UserState()
    for k, (typ, item) in enumerate(events):
        st.apply(Event("default", f"e{k}", "u", typ, 5000.0 + k, item), DEFAULT_TYPES[typ])
    return st


def test_a_run_of_skips_makes_older_likes_of_its_genre_stale(client):
    seed(client)
    get = client.app.state.service.catalog.get
    cfg = RankingConfig(recency_events=0.0)
    loved = [("like", "c1"), ("like", "c2"), ("click", "c3")]
    run = [("skip", "c4"), ("skip", "c5"), ("skip", "c6")]
    assert stale_after_streak("default", _state(loved), DEFAULT_TYPES, cfg, get) is None
    for after in ([], [("click", "d1")]):  # on the run, and after it ended elsewhere
        st = _state(loved + run + after)
        stale = stale_after_streak("default", st, DEFAULT_TYPES, cfg, get)
        assert stale is not None and stale.categories == {"Comedy"} and stale.before == 3
        fresh = summarise("default", st, 6000.0, cfg, get)
        forgot = summarise("default", st, 6000.0, cfg, get, stale)
        assert "Comedy" in fresh.boosted  # two likes and a click outweigh three skips...
        assert "Comedy" in forgot.demoted and "Comedy" not in forgot.boosted  # ...unless the run made them stale
    # a like after the run counts in full again
    back = _state(loved + run + [("like", "c7"), ("like", "c0")])
    assert "Comedy" in summarise("default", back, 6000.0, cfg, get, stale_after_streak("default", back, DEFAULT_TYPES, cfg, get)).boosted
    with pytest.raises(ValueError, match="streak_forget"):
        RankingConfig(streak_forget=1.5)


def test_a_liked_category_brings_its_best_items_into_the_pool(client):
    seed(client)
    service = client.app.state.service
    for k in range(6):
        post(client, user_id="u", item_id=f"d{k}", type="view", timestamp=2000 + k)
    # a new sci-fi item nobody else has watched: liking it moves no co-occurrence score
    assert client.post("/v1/items", json={"items": [{"item_id": "s9", "title": "new", "categories": ["SciFi"]}]}).status_code == 200
    post(client, user_id="u", item_id="s9", type="like", timestamp=2010)
    # a pool of 4 holds only the dramas the history points to; the liked genre's items join it
    service.ranking.settings = RankingSettings(default=RankingConfig(pool=4, neighbour_candidates=0, explore=False))
    assert any(i["item_id"].startswith("s") for i in recs(client, "u", n=4))
    service.ranking.settings = RankingSettings(default=RankingConfig(pool=4, neighbour_candidates=0, explore=False,
                                                                     category_candidates=0))
    assert not any(i["item_id"].startswith("s") for i in recs(client, "u", n=4))


def test_the_category_matrix_follows_upserts_as_a_rebuild_would():
    """Items upserted one by one (new, recategorised, into new categories, out of the last item
    of one) keep the cached membership equal to one built from the catalog afresh."""
    import random

    from liverec.catalog import CatalogIndex
    from liverec.store.base import Item

    rng = random.Random(0)
    cats = [f"c{k}" for k in range(8)]
    live = CatalogIndex()
    for k in range(30):
        live.put(Item("a", f"i{k}", f"t{k}", "", tuple(rng.sample(cats[:4], rng.randint(0, 2)))))
    live.category_matrix("a")  # cached from here on
    for step in range(300):
        item_id = f"i{rng.randrange(45)}"
        live.put(Item("a", item_id, "t", "", tuple(rng.sample(cats, rng.randint(0, 3)))))
        got = live.category_matrix("a")
        fresh = CatalogIndex()
        fresh.load(live.items("a"))
        want = fresh.category_matrix("a")
        assert (got.names, got.col, got.row) == (want.names, want.col, want.row), step
        assert (got.member == want.member).all(), step
