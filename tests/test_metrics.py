"""Metric functions against hand-computed cases."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from liverec.evaluation.metrics import RankingAccumulator, coverage, ranking_metrics, target_ranks
from liverec.model.train import mask_seen


def test_target_ranks_counts_strictly_higher_scores() -> None:
    scores = torch.tensor([[0.1, 0.9, 0.5, 0.2], [3.0, 2.0, 1.0, 0.0]])
    assert target_ranks(scores, torch.tensor([2, 3])).tolist() == [1, 3]


def test_ranking_metrics_hand_computed() -> None:
    ranks = np.array([0, 1, 9, 10, 60])
    m = ranking_metrics(ranks)
    assert m["HR@1"] == pytest.approx(1 / 5)
    assert m["HR@10"] == pytest.approx(3 / 5)
    assert m["HR@50"] == pytest.approx(4 / 5)
    assert m["HR@200"] == pytest.approx(1.0)
    ndcg10 = (1 / math.log2(2) + 1 / math.log2(3) + 1 / math.log2(11)) / 5
    assert m["NDCG@10"] == pytest.approx(ndcg10)
    ndcg50 = ndcg10 + (1 / math.log2(12)) / 5
    assert m["NDCG@50"] == pytest.approx(ndcg50)
    assert m["MRR"] == pytest.approx((1 + 1 / 2 + 1 / 10 + 1 / 11 + 1 / 61) / 5)
    assert m["precision@10"] == pytest.approx(0.06)
    assert m["recall@10"] == pytest.approx(0.6)
    assert m["F1@10"] == pytest.approx(2 * 0.06 * 0.6 / 0.66)


def test_coverage_counts_distinct_items() -> None:
    assert coverage(np.array([[0, 1], [1, 2]]), 10) == pytest.approx(0.3)


def test_accumulator_full_ranking_and_coverage() -> None:
    acc = RankingAccumulator(n_items=12)
    scores = torch.arange(12, dtype=torch.float32).repeat(2, 1)  # item 11 best, item 0 worst
    acc.add(scores, torch.tensor([11, 0]))
    s = acc.summary()
    assert s["HR@1"] == pytest.approx(0.5)
    assert s["HR@10"] == pytest.approx(0.5)
    assert s["HR@50"] == pytest.approx(1.0)  # rank 11 of 12: every item takes part in the ranking
    assert s["coverage@10"] == pytest.approx(10 / 12)
    assert s["users"] == 2


def test_mask_seen_only_masks_seen_items() -> None:
    scores = torch.zeros(2, 5)
    seen = torch.tensor([[0, 0, 1, 3], [0, 5, 5, 0]])  # 1-based; 0 = padding
    out = mask_seen(scores, seen)
    assert torch.isinf(out[0, [0, 2]]).all() and torch.isfinite(out[0, [1, 3, 4]]).all()
    assert torch.isinf(out[1, 4]) and torch.isfinite(out[1, :4]).all()
