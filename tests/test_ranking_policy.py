"""Feedback policy through the HTTP API: demotion, boosts, scope, repeated skips, decay, undo,
unblock, explanations and diversity."""

from __future__ import annotations

import pytest

from liverec.ranking.config import RankingConfig, RankingSettings
from liverec.ranking.feedback import adjust
from liverec.state import UserState
from liverec.events import DEFAULT_TYPES, Event

GENRES = {"c": "Comedy", "d": "Drama", "h": "Horror", "s": "SciFi"}
CATALOG = {"items": [
    {"item_id": f"{g}{k}", "title": f"{name} film {k}", "categories": [name], "attributes": {"creator": f"{g}-studio-{k % 2}"}}
    for g, name in GENRES.items() for k in range(8)
]}


def seed(client) -> None:
    """Catalog + background users who watch within one genre (co-occurrence inside genres)."""
    assert client.post("/v1/items", json=CATALOG).status_code == 200
    events = []
    for u in range(16):
        g = "cdhs"[u % 4]
        for k in range(8):
            events.append({"user_id": f"bg{u}", "item_id": f"{g}{(k + u) % 8}", "type": "view", "timestamp": 1000 + k, "event_id": f"bg{u}-{k}"})
    assert client.post("/v1/events", json={"events": events}).json()["accepted"] == len(events)


def post(client, **event) -> None:
    r = client.post("/v1/events", json=event)
    assert r.status_code == 200 and r.json()["accepted"] == 1, r.text


def recs(client, user: str, **params) -> list[dict]:
    r = client.get(f"/v1/users/{user}/recommendations", params={"n": 10, "explore": "false", **params})
    assert r.status_code == 200, r.text
    return r.json()["items"]


def ids(items: list[dict]) -> list[str]:
    return [i["item_id"] for i in items]


def rank_of(items: list[dict], item: str) -> int:
    order = ids(items)
    return order.index(item) if item in order else len(order) + 100


@pytest.fixture
def seeded(client):
    seed(client)
    # the user watched a mix of genres
    for k, item in enumerate(["c0", "d0", "h0", "s0"]):
        post(client, user_id="u", item_id=item, type="view", timestamp=2000 + k, event_id=f"u-{k}")
    return client


def test_every_item_carries_because_with_own_events(seeded):
    items = recs(seeded, "u")
    assert items and all(i["because"] for i in items)
    events = [b for i in items for b in i["because"] if b["kind"] == "event"]
    assert events, "no history event explains any item"
    assert {b["item_id"] for b in events} <= {"c0", "d0", "h0", "s0"}
    assert all(b["type"] == "view" and "event_id" in b for b in events)


def test_dislike_demotes_item_and_neighbours(seeded):
    before = recs(seeded, "u", n=30)
    post(seeded, user_id="u", item_id="d1", type="dislike", timestamp=2010, event_id="dis-1")
    after = recs(seeded, "u", n=30)
    assert rank_of(after, "d1") > rank_of(before, "d1")
    drama_before = sum(rank_of(before, f"d{k}") for k in range(2, 8))
    drama_after = sum(rank_of(after, f"d{k}") for k in range(2, 8))
    assert drama_after > drama_before  # neighbours (same genre) moved down
    d2 = next(i for i in after if i["item_id"] == "d2")
    assert any(b.get("adjustment") == "dislike_demote" and b["item_id"] == "d1" and b["event_id"] == "dis-1" for b in d2["because"])


def test_like_boosts_neighbours(seeded):
    before = recs(seeded, "u", n=30)
    post(seeded, user_id="u", item_id="h1", type="like", timestamp=2010)
    after = recs(seeded, "u", n=30)
    horror_before = sum(rank_of(before, f"h{k}") for k in range(2, 8))
    horror_after = sum(rank_of(after, f"h{k}") for k in range(2, 8))
    assert horror_after < horror_before
    assert ids(after)[0].startswith("h")
    top = after[0]
    assert any(b.get("adjustment") == "like_boost" and b["item_id"] == "h1" for b in top["because"])


def test_scoped_dislike_demotes_the_whole_category(seeded):
    post(seeded, user_id="u", type="dislike", scope="category", target="SciFi", timestamp=2010)
    after = recs(seeded, "u", n=10)
    assert not any(i["item_id"].startswith("s") for i in after[:6])
    scifi = [i for i in recs(seeded, "u", n=40) if i["item_id"].startswith("s")]
    assert scifi and all(any(b.get("adjustment") == "dislike_category" for b in i["because"]) for i in scifi)


def test_repeated_skips_demote_the_category(seeded):
    post(seeded, user_id="u", item_id="c1", type="skip", timestamp=2010)
    one = recs(seeded, "u", n=40)
    assert not any(b.get("adjustment") == "category_demote" for i in one for b in i["because"])
    post(seeded, user_id="u", item_id="c2", type="skip", timestamp=2011)
    two = recs(seeded, "u", n=40)
    comedy = [i for i in two if i["item_id"] in {f"c{k}" for k in range(3, 8)}]
    assert comedy and all(any(b.get("adjustment") == "category_demote" and b["target"] == "Comedy" for b in i["because"]) for i in comedy)
    score = lambda items: sum(i["score"] for i in items if i["item_id"] in {f"c{k}" for k in range(3, 8)})  # noqa: E731
    assert score(two) < score(one) - 0.5


def test_undo_reverts_a_dislike_exactly(seeded):
    before = ids(recs(seeded, "u", n=20))
    post(seeded, user_id="u", item_id="d1", type="dislike", timestamp=2010, event_id="to-undo")
    assert ids(recs(seeded, "u", n=20)) != before
    post(seeded, user_id="u", type="undo", target="to-undo", timestamp=2011)
    assert ids(recs(seeded, "u", n=20)) == before


def test_block_by_creator_and_unblock(seeded):
    post(seeded, user_id="u", type="block", scope="creator", target="h-studio-1", timestamp=2010)
    blocked = {f"h{k}" for k in (1, 3, 5, 7)}
    assert not blocked & set(ids(recs(seeded, "u", n=40)))
    post(seeded, user_id="u", type="unblock", scope="creator", target="h-studio-1", timestamp=2011)
    assert blocked <= set(ids(recs(seeded, "u", n=40)))


def test_block_survives_likes_of_neighbours_and_exploration(seeded):
    post(seeded, user_id="u", item_id="d3", type="block", timestamp=2010)
    for k, item in enumerate(["d4", "d5", "d6"]):
        post(seeded, user_id="u", item_id=item, type="like", timestamp=2011 + k)
    for _ in range(30):
        r = seeded.get("/v1/users/u/recommendations", params={"n": 30, "explore": "true", "diversity": 0.5})
        assert "d3" not in ids(r.json()["items"])


def test_diversity_knob_spreads_categories(seeded):
    post(seeded, user_id="u", item_id="c1", type="like", timestamp=2010)
    post(seeded, user_id="u", item_id="c2", type="like", timestamp=2011)
    plain = recs(seeded, "u", n=6, diversity=0.0)
    diverse = recs(seeded, "u", n=6, diversity=0.8)
    cats = lambda items: len({i["categories"][0] for i in items})  # noqa: E731
    assert cats(diverse) > cats(plain)
    assert any(b.get("adjustment") == "diversity" for i in diverse for b in i["because"])
    assert seeded.get("/v1/users/u/recommendations", params={"diversity": 1.5}).status_code == 422


def test_decay_halves_the_effect_per_half_life(client):
    seed(client)
    service = client.app.state.service
    cfg = RankingConfig(half_life_s=100.0)
    state = UserState()
    ev = Event(app="default", event_id="x", user_id="u", type="dislike", timestamp=1000.0, item_id="d1")
    state.apply(ev, DEFAULT_TYPES["dislike"])
    pool = ["d1", "d2", "c1"]
    space, items = service.ranking.space, service.catalog.get
    fresh = adjust("default", state, pool, 1000.0, cfg, space, items).total
    aged = adjust("default", state, pool, 1100.0, cfg, space, items).total
    old = adjust("default", state, pool, 1000.0 + 100.0 * 30, cfg, space, items).total
    assert fresh[0] == pytest.approx(-cfg.dislike_item)
    assert fresh[1] < 0 and fresh[2] == 0.0  # a neighbour (same genre) yes, another genre no
    assert aged == pytest.approx(fresh / 2)
    assert abs(old).max() < 1e-6


def test_per_app_settings():
    s = RankingSettings.from_dict({"default": {"half_life_s": 10}, "apps": {"news": {"diversity": 0.3}}})
    assert s.for_app("news").half_life_s == 10 and s.for_app("news").diversity == 0.3
    assert s.for_app("shop").diversity == 0.0
    with pytest.raises(ValueError, match="unknown ranking settings"):
        RankingSettings.from_dict({"default": {"half_lfe": 1}})


def _adjust_after(client, events: list[tuple[str, str]], pool: list[str], **cfg):
    """Adjustments of ``pool`` after the (type, item) events, one second apart (no time decay)."""
    service = client.app.state.service
    state = UserState()
    for k, (typ, item) in enumerate(events):
        state.apply(Event(app="default", event_id=f"e{k}", user_id="u", type=typ, timestamp=5000.0 + k, item_id=item),
                    DEFAULT_TYPES[typ])
    return adjust("default", state, pool, 5000.0 + len(events), RankingConfig(**cfg), service.ranking.space,
                  service.catalog.get)


def test_click_is_a_weaker_positive_than_a_like(client):
    seed(client)
    pool = ["h2", "h3", "c2"]
    clicked = _adjust_after(client, [("click", "h1")], pool).total
    liked = _adjust_after(client, [("like", "h1")], pool).total
    assert 0 < clicked[0] < liked[0] and clicked[2] < clicked[0]  # neighbours (same genre) rise, less than for a like
    skipped_after = _adjust_after(client, [("click", "h1"), ("skip", "h1")], pool).total
    assert skipped_after[0] <= 0  # a skip after the click cancels the click's boost


def test_taste_shift_turns_a_demoted_category_into_a_boosted_one(client):
    seed(client)
    pool = ["c5", "c6", "d5"]
    skipped = [("skip", "c1"), ("skip", "c2"), ("skip", "c3")]
    demoted = _adjust_after(client, skipped, pool)
    assert demoted.total[0] < -0.5 and any(p["adjustment"] == "category_demote" for p in demoted.parts[0])
    # the user now clicks and likes comedies: the newer positives outweigh the older skips
    shifted = _adjust_after(client, skipped + [("click", "c4"), ("like", "c4"), ("click", "c7")], pool)
    assert not any(p["adjustment"] == "category_demote" for p in shifted.parts[0])
    assert any(p["adjustment"] == "category_boost" and p["target"] == "Comedy" for p in shifted.parts[0])
    assert shifted.total[0] > 0 > demoted.total[0]


def test_category_matrix_gives_the_same_adjustments_as_the_items(client):
    """The request path reads category membership off the catalog's matrix (vectorised); the
    effects must be those the items themselves give, over random feedback of every scope."""
    import random

    import numpy as np

    seed(client)
    service = client.app.state.service
    cm = service.catalog.category_matrix("default")
    everything = [i["item_id"] for i in CATALOG["items"]]
    rng = random.Random(7)
    for trial in range(40):
        state = UserState()
        for k in range(rng.randint(1, 14)):
            typ = rng.choice(["like", "click", "skip", "dislike", "view"])
            scoped = typ in ("skip", "dislike") and rng.random() < 0.3
            ev = Event(app="default", event_id=f"t{trial}-{k}", user_id="u", type=typ, timestamp=5000.0 + k,
                       **({"scope": rng.choice(["category", "creator"]),
                           "target": rng.choice(["Comedy", "Horror", "c-studio-0", "h-studio-1"])} if scoped
                          else {"item_id": rng.choice(everything)}))
            state.apply(ev, DEFAULT_TYPES[typ])
        pool = rng.sample(everything, 20)
        cfg = RankingConfig(category_repeat=rng.choice([1, 2]))
        args = ("default", state, pool, 5020.0, cfg, service.ranking.space, service.catalog.get)
        by_items, by_matrix = adjust(*args), adjust(*args, categories=cm)
        assert np.allclose(by_items.total, by_matrix.total)
        for k in range(len(pool)):
            a, b = by_items.parts_of(k), by_matrix.parts_of(k)
            assert [(p["adjustment"], round(p["delta"], 9)) for p in a] == [(p["adjustment"], round(p["delta"], 9)) for p in b]
            item = service.catalog.get("default", pool[k])
            for p in b:  # one category per item here: the target is the item's own
                if p["adjustment"] in ("category_demote", "category_boost"):
                    assert p["target"] in item.categories


def test_item_feedback_fades_with_newer_events_of_the_user(client):
    seed(client)
    pool = ["d2"]
    fresh = _adjust_after(client, [("dislike", "d1")], pool, recency_events=10.0).total[0]
    later = _adjust_after(client, [("dislike", "d1")] + [("view", f"s{k}") for k in range(10)], pool,
                          recency_events=10.0).total[0]
    off = _adjust_after(client, [("dislike", "d1")] + [("view", f"s{k}") for k in range(10)], pool,
                        recency_events=0.0).total[0]
    assert fresh < 0 and later == pytest.approx(fresh / 2, rel=1e-4) and off == pytest.approx(fresh, rel=1e-4)


def test_a_run_of_negatives_widens_the_slate(seeded):
    """Likes pull comedy up; then three skips in a row: the taste has moved, the slate spreads
    over the other genres (MMR over a wider pool, without the genre just skipped) and says why;
    one positive event ends the streak."""
    for k in range(1, 4):
        post(seeded, user_id="u", item_id=f"c{k}", type="like", timestamp=2010 + k)
    before = recs(seeded, "u", n=6, diversity=0.0)
    for k, item in enumerate(["c4", "c5", "c6"]):
        post(seeded, user_id="u", item_id=item, type="skip", timestamp=2020 + k)
    after = recs(seeded, "u", n=6, diversity=0.0)
    cats = lambda items: {i["categories"][0] for i in items}  # noqa: E731
    assert "Comedy" in cats(before) and cats(after) == {"Drama", "Horror", "SciFi"}
    assert any(b.get("reason") == "negative streak" for i in after for b in i["because"])
    post(seeded, user_id="u", item_id="d1", type="click", timestamp=2030)
    assert not any(b.get("reason") == "negative streak" for i in recs(seeded, "u", n=6) for b in i["because"])


def test_negative_streak_counts_only_the_newest_run():
    from liverec.ranking.feedback import negative_streak

    st = UserState()
    for k, t in enumerate(["skip", "like", "skip", "dislike", "skip"]):
        st.apply(Event("a", f"e{k}", "u", t, 100.0 + k, f"i{k}"), DEFAULT_TYPES[t])
    assert negative_streak(st, DEFAULT_TYPES) == 3
    assert negative_streak(None, DEFAULT_TYPES) == 0
    with pytest.raises(ValueError, match="streak_diversity"):
        RankingConfig(streak_diversity=2.0)
