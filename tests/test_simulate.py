"""Simulated users through the HTTP API: aversions learned, blocks never recur."""

from __future__ import annotations

from liverec.evaluation.simulate import SimConfig, ndcg_at, run, synthetic_world

import numpy as np


def test_simulated_users_aversions_and_blocks(client):
    world = synthetic_world(n_categories=6, per_category=15, n_background=40, seed=2)
    report = run(client, world, SimConfig(users=8, steps=10, shift_at=6, seed=1), app="sim")
    assert report["requests"] == 2 * 8 * 10
    for cohort in ("explore", "no_explore"):
        r = report["cohorts"][cohort]
        assert r["blocked_recurrences"] == 0
        assert r["users_measured_for_aversion"] >= 3
        assert r["averse_share_reduction"] >= 0.6, r  # quality floor (the benchmark target is 0.8)
        assert len(r["ctr_per_step"]) == 10
        assert 0 < r["coverage"] <= 1 and 0 <= r["intra_list_diversity"] <= 1


def test_ndcg_graded_by_hidden_utility():
    ideal = np.array([3.0, 2.0, 1.0, -1.0])
    assert ndcg_at(np.array([3.0, 2.0, 1.0]), ideal) == 1.0
    assert 0 < ndcg_at(np.array([1.0, -1.0, 2.0]), ideal) < 1.0
