"""Off-policy evaluation on a synthetic log whose true policy values are known exactly."""

from __future__ import annotations

import numpy as np
import pytest

from liverec.evaluation.ope import Decision, decisions_from_log, estimate, evaluate, policy_distribution, slate_pi
from liverec.events import Event
from liverec.ranking.impressions import Impression


def synthetic_log(n: int, seed: int) -> tuple[list[Decision], dict[str, float]]:
    """Pools of 5 with random scores; P(positive) = q(score), P(negative) = 0.2, else no feedback.

    Expected reward of showing a: q + 0.5 * (1 - q - 0.2). The logging policy is a softmax of the
    scores mixed with 10% uniform. True values of the target policies are exact expectations.
    """
    rng = np.random.default_rng(seed)
    decisions: list[Decision] = []
    truth = {"greedy": 0.0, "uniform": 0.0, "softmax:0.2": 0.0, "logging": 0.0}
    for _ in range(n):
        s = rng.random(5)
        q = 0.7 * s  # (5,) P(positive)
        value = q + 0.5 * (1.0 - q - 0.2)  # (5,) expected reward per action
        z = np.exp(s / 0.5)
        mu = 0.9 * z / z.sum() + 0.1 / 5
        a = int(rng.choice(5, p=mu))
        u = rng.random()
        reward = 1.0 if u < q[a] else 0.0 if u < q[a] + 0.2 else 0.5
        decisions.append(Decision([f"i{k}" for k in range(5)], mu, s, a, reward))
        for name in truth:
            truth[name] += float(policy_distribution(name, s, mu) @ value) / n
    return decisions, truth


def test_ips_and_snips_recover_known_values():
    decisions, truth = synthetic_log(20_000, seed=3)
    result = evaluate(decisions, list(truth), n_boot=300, seed=1)
    assert result["decisions"] == 20_000
    for name, true_value in truth.items():
        est = result["policies"][name]
        assert est["ips"] == pytest.approx(true_value, abs=0.01), name
        assert est["snips"] == pytest.approx(true_value, abs=0.01), name
        lo, hi = est["snips_ci"]
        assert lo <= true_value <= hi, (name, lo, hi, true_value)
        assert hi - lo < 0.05
    # the logging policy's IPS is exactly the observed mean; greedy beats the logging policy here
    assert result["policies"]["logging"]["ips"] == pytest.approx(result["observed_mean_reward"])
    assert truth["greedy"] > truth["logging"]
    assert result["policies"]["greedy"]["ess"] < result["policies"]["logging"]["ess"]


def test_wrong_propensities_are_detected_as_bias():
    """A log whose recorded propensities are wrong gives a wrong estimate (the test can fail)."""
    decisions, truth = synthetic_log(5_000, seed=4)
    skewed = [Decision(d.pool, np.full(5, 0.2), d.scores, d.chosen, d.reward) for d in decisions]
    assert abs(estimate(skewed, "greedy", n_boot=50)["ips"] - truth["greedy"]) > 0.05


def test_decisions_from_impressions_and_events():
    imp = Impression("r:4", "r", "a", "u", "i2", 4, 100.0, 0.5, True, "thompson", ["i1", "i2"], [0.5, 0.5], [0.9, 0.1])
    shown = Impression("r:0", "r", "a", "u", "i9", 0, 100.0, 1.0, False, "rank")
    events = [Event("a", "e1", "u", "like", 130.0, "i2")]
    d = decisions_from_log([imp, shown], events, window_s=60.0)
    assert len(d) == 1 and d[0].chosen == 1 and d[0].reward == 1.0
    with pytest.raises(ValueError, match="unknown policy"):
        policy_distribution("best", np.ones(2), np.ones(2) / 2)


# ---- doubly robust and the slate estimator, on a log whose target value is known -------------------
def _featured_log(n: int, seed: int, slots: int = 1) -> list[Decision]:
    """Pools of 5 candidates with 3 features each; P(positive) = 0.8 sigmoid(f @ beta), P(negative)
    = 0.1, else no feedback (0.5). The logging policy is a softmax of a noisy score mixed with 10%
    uniform; ``slots`` decisions per response, each with its own pool (an additive slate reward)."""
    rng = np.random.default_rng(seed)
    m = n * slots
    f = rng.normal(0.0, 1.0, (m, 5, 3))  # (M, P, F)
    q = 0.8 / (1.0 + np.exp(-(f @ BETA)))  # (M, P)
    s = f @ np.array([0.8, 0.3, 0.0]) + rng.normal(0.0, 0.5, (m, 5))
    z = np.exp(s - s.max(axis=1, keepdims=True))
    mu = 0.9 * z / z.sum(axis=1, keepdims=True) + 0.1 / 5
    a = (rng.random((m, 1)) > np.cumsum(mu, axis=1)).sum(axis=1)  # (M,) drawn from mu
    qa, u = q[np.arange(m), a], rng.random(m)
    reward = np.where(u < qa, 1.0, np.where(u < qa + 0.1, 0.0, 0.5))
    pool = [f"i{i}" for i in range(5)]
    return [Decision(pool, mu[k], s[k], int(a[k]), float(reward[k]), f[k], None, f"r{k // slots}") for k in range(m)]


BETA = np.array([1.5, -1.0, 0.8])


def _true_value(policy: str, n: int = 200_000, seed: int = 12345) -> float:
    """The target policy's expected reward per decision over the context distribution (Monte Carlo)."""
    rng = np.random.default_rng(seed)
    f = rng.normal(0.0, 1.0, (n, 5, 3))
    q = 0.8 / (1.0 + np.exp(-(f @ BETA)))  # (n, P)
    value = q + 0.5 * (1.0 - q - 0.1)
    s = f @ np.array([0.8, 0.3, 0.0]) + rng.normal(0.0, 0.5, (n, 5))
    z = np.exp(s - s.max(axis=1, keepdims=True))
    mu = 0.9 * z / z.sum(axis=1, keepdims=True) + 0.1 / 5
    return float((policy_distribution(policy, s, mu) * value).sum(axis=1).mean())


class ConstantModel:
    """A deliberately wrong reward model: the same prediction for every candidate."""

    def fit(self, x, y):
        return self

    def predict(self, x):
        return np.full(len(x), 0.95)


def test_every_estimators_interval_covers_the_truth_at_its_rate_and_dr_has_less_variance():
    policy, seeds = "softmax:0.5", 40
    truth = _true_value(policy)
    hits = {"ips_ci": 0, "ips_normal_ci": 0, "snips_ci": 0, "dr_ci": 0, "dr_normal_ci": 0}
    values: dict[str, list[float]] = {"ips": [], "dr": [], "dr_wrong": [], "dm_wrong": []}
    for seed in range(seeds):
        decisions = _featured_log(1000, seed)
        est = estimate(decisions, policy, n_boot=200, seed=seed)
        wrong = estimate(decisions, policy, n_boot=200, seed=seed, reward_model=ConstantModel)
        for name in hits:
            lo, hi = est[name]
            hits[name] += lo <= truth <= hi
        values["ips"].append(est["ips"])
        values["dr"].append(est["dr"])
        values["dr_wrong"].append(wrong["dr"])
        values["dm_wrong"].append(wrong["dm"])
    for name, h in hits.items():  # 95% intervals: 38 of 40 expected; 34 is ~3 binomial sd below
        assert h >= 34, (name, h, seeds)
    sd_ips, sd_dr = np.std(values["ips"]), np.std(values["dr"])
    assert sd_dr < 0.7 * sd_ips, (sd_dr, sd_ips)
    # a wrong reward model: the direct method is far off, DR stays unbiased (mean over seeds)
    assert abs(np.mean(values["dm_wrong"]) - truth) > 0.1
    se = np.std(values["dr_wrong"]) / np.sqrt(seeds)
    assert abs(np.mean(values["dr_wrong"]) - truth) < 3 * se + 0.003, (np.mean(values["dr_wrong"]), truth, se)
    assert abs(np.mean(values["dr"]) - truth) < 0.01


def test_the_slate_pi_estimate_covers_the_summed_value_of_its_slots():
    policy, seeds = "greedy", 30
    truth = 2 * _true_value(policy)  # two slots, each its own pool: the slate value is their sum
    hits, values = 0, []
    for seed in range(seeds):
        decisions = _featured_log(1000, 1000 + seed, slots=2)
        est = slate_pi(decisions, policy, n_boot=200, seed=seed)
        assert est["slates"] == 1000
        lo, hi = est["pi_normal_ci"]
        hits += lo <= truth <= hi
        values.append(est["pi"])
    assert hits >= 25, hits  # 95%: 28.5 of 30 expected
    assert abs(np.mean(values) - truth) < 0.03


def test_evaluate_reports_dr_and_the_slate_estimate_for_responses_with_several_slots():
    decisions = _featured_log(300, 5, slots=2)
    out = evaluate(decisions, ["greedy"], n_boot=50)["policies"]["greedy"]
    assert {"dr", "dr_ci", "dr_normal_ci", "dm", "slate"} <= set(out) and out["slate"]["slates"] == 300
