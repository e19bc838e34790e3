"""Exploration: logged propensities, reward scheme 1 / 0 / 0.5, seeded reproducibility."""

from __future__ import annotations

import numpy as np
import pytest

from liverec.events import Event
from liverec.ranking.bandit import RewardTracker, ThompsonBandit
from liverec.ranking.config import RankingConfig
from liverec.ranking.impressions import Impression, SQLiteImpressionLog, assign_rewards

from .test_ranking_policy import seed


def _ev(user: str, item: str, type_: str, ts: float) -> Event:
    return Event(app="a", event_id=f"{user}-{item}-{type_}-{ts}", user_id=user, type=type_, timestamp=ts, item_id=item)


def _imp(user: str, item: str, ts: float, k: int = 0) -> Impression:
    return Impression(f"r{k}:{item}", f"r{k}", "a", user, item, 0, ts, 1.0, False, "rank")


def test_logged_propensities_are_exact_and_sum_to_one(client):
    seed(client)
    service = client.app.state.service
    client.post("/v1/events", json={"user_id": "u", "item_id": "c0", "type": "view"})
    explored = []
    for _ in range(40):
        body = client.get("/v1/users/u/recommendations", params={"n": 10, "explore": "true"}).json()
        explored += [i for i in body["items"] if i.get("explored")]
    assert explored, "exploration never placed an item"
    cfg = RankingConfig()
    logged = [i for i in service.ranking.impressions.scan("default") if i.explored]
    assert len(logged) == len(explored)
    for imp in logged:
        p = np.array(imp.pool_propensities)
        assert p.sum() == pytest.approx(1.0, abs=1e-9)
        assert p.min() >= cfg.explore_epsilon / len(p) - 1e-12
        assert imp.propensity == pytest.approx(p[imp.pool.index(imp.item_id)])
        assert imp.position in cfg.explore_slots
    deterministic = [i for i in service.ranking.impressions.scan("default") if not i.explored]
    assert deterministic and all(i.propensity == 1.0 for i in deterministic)


def test_choice_frequencies_match_the_logged_distribution():
    bandit = ThompsonBandit(seed=7)
    cfg = RankingConfig(explore_draws=512)
    pool = ["a", "b", "c", "d"]
    scores = np.array([1.0, 0.8, 0.5, 0.1])
    for _ in range(30):
        bandit.update("x", "c", 1.0)  # c is known to be good
    dist = bandit.distribution("x", pool, scores, cfg)
    counts = np.zeros(4)
    for _ in range(3000):
        k, _ = bandit.choose("x", pool, scores, cfg)
        counts[k] += 1
    assert dist.argmax() == 2
    assert np.abs(counts / counts.sum() - dist).max() < 0.05


def test_same_seed_same_choices():
    cfg = RankingConfig()
    pool, scores = ["a", "b", "c"], np.array([0.3, 0.2, 0.1])
    a, b = ThompsonBandit(3), ThompsonBandit(3)
    assert [a.choose("x", pool, scores, cfg)[0] for _ in range(50)] == [b.choose("x", pool, scores, cfg)[0] for _ in range(50)]


def test_reward_scheme_live_tracker():
    bandit = ThompsonBandit(0)
    tracker = RewardTracker(bandit, window_s=60.0)
    tracker.shown([_imp("u", "good", 100.0, 1), _imp("u", "bad", 100.0, 1), _imp("u", "quiet", 100.0, 1), _imp("u", "late", 100.0, 1)])
    tracker.observe([_ev("u", "good", "like", 110.0), _ev("u", "bad", "dislike", 120.0), _ev("u", "late", "click", 500.0)])
    tracker.expire(1000.0)
    assert bandit.stats("a", "good") == (1.0, 0.0)
    assert bandit.stats("a", "bad") == (0.0, 1.0)
    assert bandit.stats("a", "quiet") == (0.5, 0.5)
    assert bandit.stats("a", "late") == (0.5, 0.5)  # the click came after the window
    assert tracker.pending() == 0


def test_reward_scheme_from_the_log(tmp_path):
    log = SQLiteImpressionLog(tmp_path / "imp.db")
    imps = [_imp("u", "good", 100.0, 1), _imp("u", "bad", 100.0, 2), _imp("u", "quiet", 100.0, 3), _imp("u", "open", 990.0, 4)]
    log.append(imps)
    assert [i.impression_id for i in log.scan("a")] == [i.impression_id for i in imps]
    events = [_ev("u", "good", "purchase", 150.0), _ev("u", "bad", "skip", 101.0), _ev("u", "quiet", "view", 5000.0)]
    rewards = {imp.item_id: r for imp, r in assign_rewards(log.scan("a"), events, window_s=60.0, now=1000.0)}
    assert rewards == {"good": 1.0, "bad": 0.0, "quiet": 0.5}  # "open" is still inside its window
    log.close()


def test_one_distribution_per_posterior_and_exact_for_exchangeable_arms() -> None:
    cfg = RankingConfig(explore_draws=256, explore_epsilon=0.1)
    bandit = ThompsonBandit(seed=0)
    alpha, beta = np.array([9.0, 1.0, 1.0]), np.array([1.0, 9.0, 1.0])
    p = bandit.argmax_distribution(alpha, beta, cfg)
    assert p.sum() == pytest.approx(1.0) and p[0] > 0.8 and p.min() >= 0.1 / 3
    assert bandit.argmax_distribution(alpha.copy(), beta.copy(), cfg) is p  # the same posteriors: no new draws
    with pytest.raises(ValueError):
        p[0] = 0.0  # shared, so read-only
    other = bandit.argmax_distribution(np.array([1.0, 9.0, 1.0]), np.array([9.0, 1.0, 1.0]), cfg)
    assert other[1] > 0.8  # other posteriors: another estimate
    assert bandit.argmax_distribution(alpha, beta, RankingConfig(explore_draws=256, explore_epsilon=0.5)) is not p
    # arms alike in every parameter win equally often: exactly uniform, not an estimate of it
    uniform = bandit.argmax_distribution(np.full(7, 2.0), np.full(7, 3.0), cfg)
    assert np.ptp(uniform) == 0.0 and uniform.sum() == pytest.approx(1.0)
    for k in range(ThompsonBandit.MAX_DISTRIBUTIONS + 10):  # bounded
        bandit.argmax_distribution(np.array([1.0 + k, 2.0]), np.array([2.0, 1.0]), cfg)
    assert len(bandit._distributions) <= ThompsonBandit.MAX_DISTRIBUTIONS
