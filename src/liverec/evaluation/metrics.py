"""Ranking metrics for leave-one-out evaluation with full ranking over all items.

Each evaluated user has exactly one held-out target. Its **rank** is the number of catalog items
scored strictly higher than the target (0 = first place); ties are resolved in the target's
favour only when scores are exactly equal, which does not happen with float model scores except
for filtered items (-inf), which never outrank anything. With one relevant item per user:

* HR@k = P(rank < k); precision@k = HR@k / k; recall@k = HR@k; F1@k = 2PR / (P + R)
* NDCG@k = mean(1 / log2(rank + 2) if rank < k else 0)
* MRR = mean(1 / (rank + 1)) (over the full ranking, no cut-off)
* coverage@10 = distinct items in all users' top-10 lists / catalog size

>>> import numpy as np
>>> m = ranking_metrics(np.array([0, 1, 20]), ks=(1, 10))
>>> round(m["HR@10"], 4), round(m["NDCG@10"], 4), round(m["MRR"], 4)
(0.6667, 0.5436, 0.5159)
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

HR_KS = (1, 10, 50, 200)
NDCG_KS = (10, 50, 200)


def target_ranks(scores: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """(B,) 0-based rank of each target column among all columns of ``scores`` (B, N)."""
    t = scores.gather(1, targets[:, None])  # (B, 1)
    return (scores > t).sum(1)


def ranking_metrics(ranks: np.ndarray, ks: tuple[int, ...] = HR_KS, ndcg_ks: tuple[int, ...] = NDCG_KS) -> dict[str, float]:
    """HR@k, NDCG@k, MRR, precision/recall/F1@10 from 0-based target ranks (one target per user)."""
    r = np.asarray(ranks, dtype=np.float64)
    out: dict[str, float] = {}
    if len(r) == 0:
        return out
    for k in ks:
        out[f"HR@{k}"] = float(np.mean(r < k))
    gains = 1.0 / np.log2(r + 2.0)
    for k in ndcg_ks:
        out[f"NDCG@{k}"] = float(np.mean(np.where(r < k, gains, 0.0)))
    out["MRR"] = float(np.mean(1.0 / (r + 1.0)))
    hr10 = float(np.mean(r < 10))
    p, rec = hr10 / 10.0, hr10
    out["precision@10"] = p
    out["recall@10"] = rec
    out["F1@10"] = 2 * p * rec / (p + rec) if p + rec > 0 else 0.0
    return out


def coverage(top_items: np.ndarray, n_items: int) -> float:
    """Share of the catalog that appears in at least one top list ``(U, k)`` of column indices."""
    if n_items == 0:
        return 0.0
    return float(len(np.unique(np.asarray(top_items).ravel())) / n_items)


def set_metrics(top: np.ndarray, future: np.ndarray, k: int = 10) -> dict[str, float]:
    """Precision, recall and F1 at ``k`` of top lists against multi-item future sets.

    ``top`` (U, >=k) 0-based item columns, best first; ``future`` (U, N) 1-based items (0 =
    padding). Per user: hits = distinct future items in the top ``k``; P = hits / k,
    R = hits / distinct future items, F1 = 2PR / (P + R) (0 without hits); each averaged over users.

    >>> m = set_metrics(np.array([[0, 1, 2], [5, 6, 7]]), np.array([[1, 4], [9, 9]]), k=3)
    >>> round(m["P@3"], 4), m["R@3"], round(m["F1@3"], 4)
    (0.1667, 0.25, 0.2)
    """
    top = np.asarray(top)[:, :k] + 1  # (U, k) 1-based
    fut = np.asarray(future)
    if len(top) == 0:
        return {}
    p = np.zeros(len(top))
    r = np.zeros(len(top))
    for u in range(len(top)):
        want = set(int(x) for x in fut[u] if x > 0)
        hits = len(want.intersection(int(x) for x in top[u]))
        p[u], r[u] = hits / k, hits / max(len(want), 1)
    f1 = np.where(p + r > 0, 2 * p * r / np.maximum(p + r, 1e-12), 0.0)
    return {f"P@{k}": float(p.mean()), f"R@{k}": float(r.mean()), f"F1@{k}": float(f1.mean()), "users": float(len(top))}


@dataclass
class RankingAccumulator:
    """Collects target ranks and top-10 lists batch by batch, then summarises.

    >>> acc = RankingAccumulator(n_items=4)
    >>> acc.add(torch.tensor([[0.1, 0.9, 0.5, 0.2]]), torch.tensor([2]))
    >>> acc.summary()["HR@1"], acc.summary()["HR@10"]
    (0.0, 1.0)
    """

    n_items: int
    ranks: list[np.ndarray] = field(default_factory=list)
    tops: list[np.ndarray] = field(default_factory=list)

    def add(self, scores: torch.Tensor, targets: torch.Tensor) -> None:
        """scores (B, N) over every catalog item, targets (B,) column indices."""
        self.ranks.append(target_ranks(scores, targets).cpu().numpy())
        k = min(10, scores.shape[1])
        self.tops.append(scores.topk(k, dim=1).indices.cpu().numpy())

    def all_ranks(self) -> np.ndarray:
        return np.concatenate(self.ranks) if self.ranks else np.zeros(0, dtype=np.int64)

    def summary(self) -> dict[str, float]:
        out = ranking_metrics(self.all_ranks())
        if self.tops:
            out["coverage@10"] = coverage(np.concatenate(self.tops), self.n_items)
        out["users"] = float(len(self.all_ranks()))
        return out
