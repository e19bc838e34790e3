"""The ranking's learned state (bandit posteriors, pending impressions, last slates) is a fold of
the impression log and the event log: a restart rebuilds it, and workers over one store converge
to the same one, whichever of them served a slate and whichever received the feedback."""

from __future__ import annotations

import json
import sqlite3
import threading

import pytest

from liverec.config import Settings
from liverec.events import Event
from liverec.ranking.bandit import RewardTracker, ThompsonBandit
from liverec.ranking.examined import Examined
from liverec.ranking.impressions import Impression, Shown, SQLiteImpressionLog, open_impressions
from liverec.ranking.replicas import ImpressionFollower
from liverec.runtime.compose import build_service
from liverec.service import Service

from .test_impressions import url  # noqa: F401 - the backend fixture

GENRES = "cdhs"


# ---- a service with exploration on and slates read as a feed ----------------------------------------
def _settings(tmp_path, store_url: str | None = None) -> Settings:
    path = tmp_path / "ranking.json"
    path.write_text(json.dumps({"default": {"passed_item": 0.3, "passed_mass": 0.5, "explore_slots": [2, 5]}}))
    return Settings(data_dir=tmp_path / "data", store_url=store_url, scorer="cooccurrence", ranking_config=path,
                    snapshot_interval_s=0)


def _seed(service: Service) -> None:
    service.upsert_items("default", [{"item_id": f"{g}{k}", "title": f"{g}{k}", "categories": [g]}
                                     for g in GENRES for k in range(8)])
    service.ingest("default", [{"user_id": f"bg{u}", "item_id": f"{GENRES[u % 4]}{(k + u) % 8}", "type": "view",
                                "timestamp": 1000 + k, "event_id": f"bg{u}-{k}"} for u in range(16) for k in range(8)])


def _serve(service: Service, users: list[str]) -> dict[str, list[str]]:
    return {u: [i["item_id"] for i in service.recommend("default", u, n=8, explore=True)["items"]] for u in users}


def _react(service: Service, slates: dict[str, list[str]], tag: str) -> None:
    """Per user: a like on an item low in the slate (the items above it are read past), a skip
    on the top one, a dislike on another; the rest of the slate gets nothing (stays pending)."""
    events = []
    for k, (user, items) in enumerate(sorted(slates.items())):
        events.append({"user_id": user, "item_id": items[0], "type": "skip", "event_id": f"{tag}-{user}-s"})
        events.append({"user_id": user, "item_id": items[3 + k % 2], "type": "like", "event_id": f"{tag}-{user}-l"})
        if k % 2:
            events.append({"user_id": user, "item_id": items[5], "type": "dislike", "event_id": f"{tag}-{user}-d"})
    service.ingest("default", events)


def folds(service: Service) -> tuple:
    ranking = service.ranking
    return ranking.bandit.posteriors(), ranking.rewards.pending_ids(), ranking.examined.readings()


def _nontrivial(state: tuple) -> None:
    posteriors, pending, readings = state
    assert any(s > 0 for s, _ in posteriors.values()) and any(f > 0 for _, f in posteriors.values())
    assert pending
    assert any(passed for _, passed in readings.values())


def test_a_restart_folds_the_same_posteriors_pending_impressions_and_last_slates(tmp_path):
    settings = _settings(tmp_path)
    first = build_service(settings)
    first.start()
    _seed(first)
    users = [f"u{k}" for k in range(6)]
    first.ingest("default", [{"user_id": u, "item_id": f"{GENRES[k % 4]}0", "type": "view", "event_id": f"{u}-v"}
                             for k, u in enumerate(users)])
    _react(first, _serve(first, users), "r1")
    _react(first, _serve(first, users[:3]), "r2")  # a second slate for some: the newest one counts
    _serve(first, users[3:])  # served, no reaction yet
    before = folds(first)
    _nontrivial(before)
    first.close()

    again = build_service(settings)
    again.start()
    try:
        assert folds(again) == before
    finally:
        again.close()




def test_two_workers_over_one_store_reach_the_same_folds(tmp_path, store_url):
    """Slates served by A, feedback received by B (before B has read A's impressions: the race),
    and the other way round: after following, A and B hold the same posteriors, pending
    impressions and last slates."""
    settings = _settings(tmp_path, store_url)
    a, b = build_service(settings), build_service(settings)
    a.start()
    b.start()
    try:
        follow_a, follow_b = a.component(ImpressionFollower), b.component(ImpressionFollower)
        follow_a.stop()  # polled by hand below, so that B reads A's impressions only after the feedback
        follow_b.stop()
        _seed(a)
        users = [f"u{k}" for k in range(6)]
        slates = _serve(a, users)
        a.ranking.impressions.flush()
        _react(b, slates, "r1")  # B folds the feedback first: A's impressions are not read yet
        assert b.ranking.bandit.posteriors() == {}
        assert follow_b.poll() == sum(len(s) for s in slates.values())
        a.follower.catch_up()  # A folds the feedback B received
        assert follow_a.poll() == 0  # its own impressions, folded when shown
        _nontrivial(folds(a))
        assert folds(a) == folds(b)

        # the other way round, in the usual order: B serves, A reads them, then A gets feedback
        slates = _serve(b, users[:4])
        b.ranking.impressions.flush()
        follow_a.poll()
        _react(a, slates, "r2")
        b.follower.catch_up()
        follow_b.poll()
        assert folds(a) == folds(b)
        assert a.ranking.rewards.undecidable == b.ranking.rewards.undecidable == 0
        assert a.ranking.examined.unplaced == b.ranking.examined.unplaced == 0
    finally:
        a.close()
        b.close()


def test_the_follower_thread_keeps_a_worker_current(tmp_path):
    settings = _settings(tmp_path)
    a, b = build_service(settings), build_service(settings)
    a.start()
    b.start()
    try:
        _seed(a)
        slates = _serve(a, ["u0", "u1"])
        _react(b, slates, "r1")
        a.follower.catch_up()
        follow_b = b.component(ImpressionFollower)
        deadline = threading.Event()
        for _ in range(100):  # up to 10 s; one poll every 0.5 s
            if follow_b.adopted >= sum(len(s) for s in slates.values()):
                break
            deadline.wait(0.1)
        assert folds(a) == folds(b)
    finally:
        a.close()
        b.close()


# ---- the pieces -------------------------------------------------------------------------------------
def _imp(k: int, user: str = "u", item: str | None = None, ts: float = 100.0, at: int | None = 0, origin: str = "x",
         request: str | None = None) -> Impression:
    rid = request or f"r{k}"
    return Impression(f"{rid}:{k}", rid, "a", user, item or f"i{k}", k, ts, 1.0, False, "rank", event_seq=at, origin=origin)


def _ev(k: int, item: str, type_: str = "like", ts: float = 110.0, user: str = "u") -> Event:
    return Event("a", f"e{k}", user, type_, ts, item)


def test_an_impression_read_after_its_feedback_gets_the_reward_it_would_have_got_first():
    events = [_ev(1, "i1"), _ev(2, "i2", "dislike"), _ev(3, "i3", "click", ts=500.0), _ev(4, "i4")]
    shown = [_imp(k, at=2 if k == 4 else 0) for k in range(1, 6)]  # i4 shown after the first two events
    in_order, late = RewardTracker(ThompsonBandit(), 60.0), RewardTracker(ThompsonBandit(), 60.0)
    in_order.shown(shown[:3] + shown[4:])
    in_order.observe(events[:2], [1, 2])
    in_order.shown([shown[3]])
    in_order.observe(events[2:], [3, 4])
    late.observe(events, [1, 2, 3, 4])  # every event folded before any impression is read
    late.shown(shown)
    assert late.bandit.posteriors() == in_order.bandit.posteriors() == {
        ("a", "i1"): (1.0, 0.0), ("a", "i2"): (0.0, 1.0), ("a", "i3"): (0.5, 0.5), ("a", "i4"): (1.0, 0.0)}
    assert late.pending_ids() == in_order.pending_ids() == {"r5:5"}


def test_feedback_before_the_position_an_impression_was_shown_at_is_not_its_feedback():
    tracker = RewardTracker(ThompsonBandit(), 60.0)
    tracker.shown([_imp(1, at=5)])  # another worker had folded up to 5 when it showed it
    tracker.observe([_ev(1, "i1", "dislike")], [4])
    assert tracker.pending_ids() == {"r1:1"}
    tracker.observe([_ev(2, "i1", "like")], [6])
    assert tracker.bandit.posteriors() == {("a", "i1"): (1.0, 0.0)} and tracker.pending() == 0


def test_impressions_without_feedback_close_after_window_and_grace():
    tracker = RewardTracker(ThompsonBandit(), 60.0, grace_s=30.0)
    tracker.shown([_imp(1, ts=100.0)])
    tracker.expire(189.0)
    assert tracker.pending() == 1  # within the grace: feedback on its way still counts
    tracker.expire(191.0)
    assert tracker.pending() == 0 and tracker.bandit.posteriors() == {("a", "i1"): (0.5, 0.5)}


def test_feedback_that_left_the_recent_index_is_counted_as_undecidable():
    tracker = RewardTracker(ThompsonBandit(), 60.0, max_recent=2)
    tracker.observe([_ev(k, f"i{k}") for k in range(1, 5)], [1, 2, 3, 4])
    tracker.shown([_imp(1, at=0)])
    assert tracker.undecidable == 1


def _e(eid: str, item: str | None, seq_ts: float, type_: str = "click", target: str | None = None) -> Event:
    return Event("a", eid, "u", type_, seq_ts, item, target=target)


def test_a_slate_read_after_the_reactions_to_it_is_read_as_if_it_came_first():
    older, newer = ["a", "b", "c", "d"], ["e", "f", "g", "h"]
    events = [_e("e1", "g", 11.0), _e("e2", "h", 12.0, "skip"), _e("e3", None, 13.0, "undo", target="e2")]
    in_order, late = Examined(), Examined()
    in_order.served("a", "u", older, (0, 1.0, "r1"))
    in_order.served("a", "u", newer, (10, 2.0, "r2"))
    in_order.observe(events, [11, 12, 13])
    late.served("a", "u", older, (0, 1.0, "r1"))
    late.observe(events, [11, 12, 13])  # applied to the older slate: nothing in it is reacted to
    late.served("a", "u", newer, (10, 2.0, "r2"))  # another worker's, read late
    assert late.readings() == in_order.readings()
    assert [p[0] for p in late.passed("a", "u")] == ["e", "f"]
    # a slate older than the current one, read late, takes the reactions between the two
    late2 = Examined()
    late2.served("a", "u", newer, (10, 2.0, "r2"))
    late2.observe([_e("e0", "c", 9.0)], [5])  # a reaction to the older slate...
    late2.served("a", "u", older, (0, 1.0, "r1"))  # ...which arrives after the newer one
    expect = Examined()
    expect.served("a", "u", older, (0, 1.0, "r1"))
    expect.observe([_e("e0", "c", 9.0)], [5])
    expect.served("a", "u", newer, (10, 2.0, "r2"))
    assert late2.readings() == expect.readings() and [p[0] for p in late2.passed("a", "u")] == ["a", "b"]


# ---- the impression log, read by position -------------------------------------------------------------
@pytest.fixture
def log_url(url):
    """The impression log on each backend (the fixture of tests/test_impressions.py)."""
    return url


def test_the_impression_log_is_read_after_a_position(log_url, tmp_path):
    log = open_impressions(log_url, tmp_path)
    try:
        assert log.head() == 0 and log.scan_after(0) == []
        shown = [_imp(k, at=k, origin="w1") for k in range(7)]
        log.append(shown[:3])
        log.append(shown[3:])
        log.flush()
        rows = log.scan_after(0)
        assert [imp for _, imp in rows] == shown  # every field, positions and origin included
        seqs = [s for s, _ in rows]
        assert seqs == sorted(set(seqs)) and log.head() == seqs[-1]
        assert log.scan_after(seqs[2], limit=2) == rows[3:5]
        assert log.scan_after(seqs[-1]) == []
        # what the folds read: every field they need, without this process's own impressions
        log.append([_imp(9, at=9, origin="w2")])
        log.flush()
        shown = log.shown_after(seqs[1], upto=log.head(), other_than="w1")
        assert [(s, imp) for s, imp in shown] == [(log.head(), Shown.of(_imp(9, at=9, origin="w2")))]
        assert [imp.impression_id for _, imp in log.shown_after(0, limit=3, upto=seqs[5])] == ["r0:0", "r1:1", "r2:2"]
        assert log.shown_after(0, upto=seqs[5], other_than="w1") == []
    finally:
        log.close()


def test_an_impression_file_written_before_the_fold_columns_is_still_read(tmp_path):
    path = tmp_path / "impressions.db"
    old = _imp(1, at=None, origin="")
    with sqlite3.connect(path) as conn:  # the table as it was created before
        conn.executescript("""CREATE TABLE impressions (seq INTEGER PRIMARY KEY AUTOINCREMENT, app TEXT NOT NULL,
            user_id TEXT NOT NULL, item_id TEXT NOT NULL, ts REAL NOT NULL, record TEXT NOT NULL);""")
        conn.execute("INSERT INTO impressions (app, user_id, item_id, ts, record) VALUES (?, ?, ?, ?, ?)",
                     (old.app, old.user_id, old.item_id, old.timestamp, json.dumps(old.to_dict())))
    log = SQLiteImpressionLog(path)
    try:
        log.append([_imp(2, at=4, origin="w1")])
        log.flush()
        assert [imp for _, imp in log.shown_after(0, other_than="w2")] == [Shown.of(old), Shown.of(_imp(2, at=4, origin="w1"))]
        assert [imp for _, imp in log.scan_after(0)] == [old, _imp(2, at=4, origin="w1")]
    finally:
        log.close()


def test_worker_processes_write_one_sqlite_impression_file_at_once(tmp_path):
    """Several handles on one file (each its own connection, as worker processes have) writing
    concurrently: nothing is lost, positions are unique and increasing."""
    path = tmp_path / "impressions.db"
    logs = [SQLiteImpressionLog(path) for _ in range(4)]
    try:
        assert logs[0]._conn.execute("PRAGMA busy_timeout").fetchone()[0] >= 5000

        def write(w: int) -> None:
            for r in range(50):
                logs[w].append([_imp(k, request=f"w{w}-r{r}", origin=f"w{w}") for k in range(5)])

        threads = [threading.Thread(target=write, args=(w,)) for w in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        for log in logs:
            log.flush()
        rows = logs[1].scan_after(0, limit=10_000)
        assert len(rows) == 4 * 50 * 5 and [s for s, _ in rows] == list(range(1, 1001))
        # one response's impressions are consecutive (the follower folds a response at once)
        requests = [imp.request_id for _, imp in rows]
        assert all(len(set(requests[k:k + 5])) == 1 for k in range(0, 1000, 5))
    finally:
        for log in logs:
            log.close()
    with sqlite3.connect(path) as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


# ---- start-up: what the rebuild folds and what it leaves to the polls ------------------------------------
def _ranking_over(store):
    """A ranking and its impression follower over ``store``, with the service's event log follower."""
    from liverec.catalog import CatalogIndex
    from liverec.events import DEFAULT_TYPES
    from liverec.ranking import MemoryImpressionLog, build_ranking
    from liverec.ranking.config import RankingSettings
    from liverec.runtime.follower import LogFollower

    log = MemoryImpressionLog()
    ranking = build_ranking(CatalogIndex(), lambda: None, lambda app, item, n: [], DEFAULT_TYPES, log,
                            settings=RankingSettings(), seed=0)
    follower = LogFollower(store.events, lambda events: ranking.observe(events, follower.applying), lambda change: None)
    return ranking, log, ImpressionFollower(ranking, log, store.events, lambda: follower), follower


def test_an_impression_shown_after_what_the_rebuild_folded_waits_for_the_event_log(tmp_path):
    from liverec.store import open_store

    store = open_store(f"sqlite:///{tmp_path}/store.db")
    try:
        store.events.append([_ev(k, f"x{k}", "view") for k in range(1, 6)])  # positions 1..5
        ranking, log, follow, follower = _ranking_over(store)
        log.append([_imp(1, item="i1", at=3, ts=200.0, origin="w1"), _imp(2, item="i2", at=7, ts=200.0, origin="w2"),
                    _imp(3, item="i3", at=4, ts=200.0, origin="w1")])
        follow.rebuild()
        assert ranking.rewards.pending_ids() == {"r1:1"} and follow.seq == 1  # i2 and what follows wait
        # the events i2 was shown after, then feedback on i2 and on i3
        store.events.append([_ev(6, "x6", "view", ts=201.0), _ev(7, "i2", "dislike", ts=201.0),
                             _ev(8, "i2", "like", ts=202.0), _ev(9, "i3", "dislike", ts=203.0)])
        assert follow.poll() == 2 and follow.seq == 3  # caught the event log up first
        assert ranking.bandit.posteriors() == {("a", "i2"): (1.0, 0.0), ("a", "i3"): (0.0, 1.0)}
        assert follower.event_seq == 9 and ranking.rewards.pending_ids() == {"r1:1"}
    finally:
        store.close()


def test_impressions_logged_without_a_position_are_rewarded_from_the_event_log(tmp_path):
    from liverec.store import open_store

    store = open_store(f"sqlite:///{tmp_path}/store.db")
    try:
        store.events.append([_ev(1, "i1", "like", ts=110.0), _ev(2, "i2", "skip", ts=50.0)])
        ranking, log, follow, _ = _ranking_over(store)
        now = follow.clock()
        log.append([_imp(1, item="i1", at=None), _imp(2, item="i2", at=None), _imp(3, item="i3", at=None),
                    _imp(4, item="i4", at=None, ts=now)])
        follow.rebuild()
        # i2's skip came before it was shown, i3 got nothing in a window long closed, i4's is open
        assert ranking.bandit.posteriors() == {("a", "i1"): (1.0, 0.0), ("a", "i2"): (0.5, 0.5), ("a", "i3"): (0.5, 0.5)}
        assert ranking.rewards.pending_ids() == {"r4:4"}
    finally:
        store.close()
