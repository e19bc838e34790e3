"""Off-policy evaluation on a synthetic log whose true policy values are known exactly."""

from __future__ import annotations

import numpy as np
import pytest

from liverec.evaluation.ope import Decision, decisions_from_log, estimate, evaluate, policy_distribution
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
