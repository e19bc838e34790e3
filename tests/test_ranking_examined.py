"""Items read past without a reaction (the cascade reading of a slate): what is inferred, what is
not, undo, and the effect through the HTTP API."""

from __future__ import annotations

import json

import pytest
from fastapi.testclient import TestClient

from liverec.api.app import create_app
from liverec.config import Settings
from liverec.events import DEFAULT_TYPES, Event
from liverec.ranking.config import RankingConfig
from liverec.ranking.examined import Examined
from liverec.ranking.feedback import signals, summarise
from liverec.state import UserState
from liverec.store.base import Item

from .test_ranking_policy import ids, post, recs, seed, seeded  # noqa: F401  (fixture)

FEED = {"passed_item": 0.3, "passed_mass": 0.5}


@pytest.fixture
def feed(tmp_path, monkeypatch):
    """A service whose app reads its slates as a feed (passed-over items on)."""
    path = tmp_path / "ranking.json"
    path.write_text(json.dumps({"default": FEED}))
    monkeypatch.setenv("LIVEREC_RANKING_CONFIG", str(path))
    with TestClient(create_app(Settings(data_dir=tmp_path / "data"))) as c:
        seed(c)
        for k, item in enumerate(["c0", "d0", "h0", "s0"]):
            post(c, user_id="u", item_id=item, type="view", timestamp=2000 + k, event_id=f"u-{k}")
        yield c


def ev(eid: str, etype: str, item: str | None, t: float, target: str | None = None) -> Event:
    return Event("default", eid, "u", etype, t, item, target=target)


def passed_ids(ex: Examined) -> list[str]:
    return [item_id for item_id, _, _ in ex.passed("default", "u")]


def test_a_reaction_marks_the_items_above_it_and_nothing_below():
    ex = Examined()
    ex.served("default", "u", ["a", "b", "c", "d", "e"])
    ex.observe([ev("e1", "click", "c", 10.0)])
    assert passed_ids(ex) == ["a", "b"]
    # reading on: a skip further down adds what lies between, never the items reacted to
    ex.observe([ev("e2", "skip", "e", 11.0)])
    assert passed_ids(ex) == ["a", "b", "d"]


def test_items_reacted_to_are_not_passed_and_other_users_and_slates_are_apart():
    ex = Examined()
    ex.served("default", "u", ["a", "b", "c"])
    ex.served("default", "v", ["a", "b", "c"])
    ex.observe([ev("e1", "skip", "a", 1.0), ev("e2", "click", "c", 2.0)])  # read top-down: a skipped, b passed
    assert passed_ids(ex) == ["b"]
    assert ex.passed("default", "v") == []
    # an event on an item not in the user's latest slate says nothing about reading order
    ex.served("default", "u", ["x", "y"])
    ex.observe([ev("e3", "click", "b", 3.0)])
    assert passed_ids(ex) == ["b"]
    # neither do events that are not reactions to an item
    ex.observe([ev("e4", "unblock", "y", 4.0)])
    assert passed_ids(ex) == ["b"]


def test_undo_of_the_reaction_takes_back_what_it_showed():
    ex = Examined()
    ex.served("default", "u", ["a", "b", "c"])
    ex.observe([ev("e1", "click", "c", 1.0)])
    assert passed_ids(ex) == ["a", "b"]
    ex.observe([ev("e2", "undo", None, 2.0, target="e1")])
    assert passed_ids(ex) == []


def test_passed_items_are_weak_evidence_against_their_categories_but_never_a_verdict():
    cfg = RankingConfig(**FEED)
    items = {"a": Item("default", "a", "", "", ("Drama",)), "b": Item("default", "b", "", "", ("Drama",)),
             "c": Item("default", "c", "", "", ("Comedy",))}
    state = UserState()
    state.apply(ev("e1", "click", "c", 10.0), DEFAULT_TYPES["click"])
    ex = Examined()
    ex.served("default", "u", ["a", "b", "c"])
    ex.observe([ev("e1", "click", "c", 10.0)])
    s = summarise("default", state, 10.0, cfg, lambda app, i: items.get(i), passed=ex.passed("default", "u"))
    assert s.negative["Drama"] == 2 * cfg.passed_mass
    assert "Drama" not in s.demoted and "Drama" not in s.against  # two passes do not turn the user against Drama
    # an item the user later gave feedback on speaks for itself
    state.apply(ev("e2", "like", "a", 11.0), DEFAULT_TYPES["like"])
    sigs = signals(state, 11.0, cfg, ex.passed("default", "u"))
    assert [s.target for s in sigs if s.type == "passed"] == ["b"]
    # off by default (a grid: reading order unknown)
    assert not [s for s in signals(state, 11.0, RankingConfig(), ex.passed("default", "u")) if s.type == "passed"]


def test_read_past_items_drop_and_say_why_through_the_api(feed):
    first = recs(feed, "u", n=6)
    slate = ids(first)
    # the user reads the first three, reacts to the fourth
    post(feed, user_id="u", item_id=slate[3], type="click", timestamp=2100, event_id="c-4")
    after = recs(feed, "u", n=40)
    for item in slate[:3]:
        entry = next(i for i in after if i["item_id"] == item)
        delta = [b["delta"] for b in entry["because"] if b.get("adjustment") == "passed_over"]
        assert delta and -FEED["passed_item"] <= delta[0] < -0.2, entry
    assert not any(b.get("adjustment") == "passed_over" for i in after if i["item_id"] not in slate[:3] for b in i["because"])
    # undo of the click takes the inference back: the slate is what it would be with no reaction
    post(feed, user_id="u", type="undo", target="c-4", timestamp=2101)
    again = recs(feed, "u", n=40)
    assert not any(b.get("adjustment") == "passed_over" for i in again for b in i["because"])


def test_off_by_default_through_the_api(seeded):  # noqa: F811
    slate = ids(recs(seeded, "u", n=6))
    post(seeded, user_id="u", item_id=slate[3], type="click", timestamp=2100)
    after = recs(seeded, "u", n=40)
    assert not any(b.get("adjustment") == "passed_over" for i in after for b in i["because"])


def test_an_apps_own_event_types_are_reactions_too():
    ex = Examined(reactions=["click", "watched_half", "unblock"])
    ex.served("default", "u", ["a", "b", "c"])
    ex.observe([ev("e1", "unblock", "b", 1.0)])  # lifting a block is not reading
    assert passed_ids(ex) == []
    ex.observe([ev("e2", "watched_half", "c", 2.0)])
    assert passed_ids(ex) == ["a", "b"]
