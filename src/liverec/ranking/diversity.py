"""Diversity reranking: maximal marginal relevance (MMR) over item vectors.

Greedy: at each step take the candidate maximising

    (1 - diversity) * relevance(i) - diversity * max_{j already chosen} sim(i, j)

with relevance min-max normalised over the pool and ``sim`` the cosine of the item vectors
(:class:`~liverec.ranking.vectors.ItemSpace`). ``diversity=0`` keeps the relevance order exactly;
``diversity=1`` ignores relevance after the first pick.

>>> import numpy as np
>>> sim = np.array([[1.0, 0.99, 0.0], [0.99, 1.0, 0.0], [0.0, 0.0, 1.0]])
>>> mmr(np.array([1.0, 0.9, 0.5]), sim, 2, 0.0), mmr(np.array([1.0, 0.9, 0.5]), sim, 2, 0.5)
([0, 1], [0, 2])
"""

from __future__ import annotations

import numpy as np


def mmr(relevance: np.ndarray, sim: np.ndarray, n: int, diversity: float) -> list[int]:
    """Indices of ``n`` picks from ``relevance`` (K,) with pairwise similarities ``sim`` (K, K)."""
    k = len(relevance)
    n = min(n, k)
    if n <= 0:
        return []
    rel = np.asarray(relevance, dtype=np.float64)
    if diversity <= 0.0:
        return np.argsort(-rel, kind="stable")[:n].tolist()
    span = rel.max() - rel.min()
    rel = (rel - rel.min()) / span if span > 0 else np.zeros(k)
    chosen: list[int] = []
    max_sim = np.full(k, -np.inf)  # (K,) similarity to the closest chosen item
    free = np.ones(k, dtype=bool)
    for _ in range(n):
        penalty = np.where(np.isfinite(max_sim), max_sim, 0.0)
        value = (1.0 - diversity) * rel - diversity * penalty
        value[~free] = -np.inf
        best = int(np.argmax(value))  # first maximum: ties keep relevance order
        chosen.append(best)
        free[best] = False
        max_sim = np.maximum(max_sim, sim[:, best])
    return chosen


def intra_list_diversity(sim: np.ndarray) -> float:
    """Mean pairwise dissimilarity ``1 - sim`` of a list (its (n, n) similarity matrix)."""
    n = sim.shape[0]
    if n < 2:
        return 0.0
    off = sim[~np.eye(n, dtype=bool)]
    return float(np.mean(1.0 - off))
