"""Candidate retrieval: the items with the largest inner product with a query vector.

Small catalogs are scored exactly (every item, one matrix product). From
:attr:`AnnConfig.threshold` items on, a scorer searches an :class:`ItemIndex` for a candidate pool
a few times larger than the slate and scores only those candidates exactly: the ranking stages,
blocks and filters then work on that pool as they work on all items below the threshold.

Why faiss and not hnswlib: faiss has an inverted-file index (IVF) whose lists hold int8
scalar-quantised codes (a 65-d item, padded to 72 for SIMD scans: 72 + 8 bytes against 260 for
float32 plus ~250 for HNSW's links), builds a million items in seconds where HNSW takes minutes
on two cores, returns a pool of hundreds of candidates at the cost of a few lists (HNSW needs
``efSearch`` at least the pool size), searches a batch of queries in one call and adds items to
a built index. hnswlib offers HNSW over float32 vectors only. Measured in
``benchmarks/ann_catalog.py`` (docs/benchmarks.md).

>>> rng = np.random.default_rng(0)
>>> vectors = rng.normal(size=(2_000, 8)).astype(np.float32)
>>> index = ItemIndex.build(vectors, AnnConfig(probes=64))
>>> scores, rows = index.search(vectors[:2], 3)
>>> rows[:, 0].tolist() == np.argmax(vectors[:2] @ vectors.T, axis=1).tolist()
True
>>> index.add(vectors[:1] * 10); index.ntotal, int(index.search(vectors[:1], 1)[1][0, 0])
(2001, 2000)
"""

from __future__ import annotations

import math
import threading
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np

#: fewer training points per list than this and faiss's k-means warns (and clusters poorly)
_POINTS_PER_LIST = 39
#: faiss scans int8 codes with SIMD only when the dimension is a multiple of 8 (4x slower otherwise:
#: a 65-d row is padded to 72 with zeros)
_SIMD_WIDTH = 8


def _padded(vectors: np.ndarray) -> np.ndarray:
    """(K, d) float32 rows, C-contiguous, with zero columns up to a multiple of 8."""
    vectors = np.asarray(vectors, dtype=np.float32)
    pad = (-vectors.shape[1]) % _SIMD_WIDTH
    if pad:
        vectors = np.concatenate([vectors, np.zeros((len(vectors), pad), np.float32)], axis=1)
    return np.ascontiguousarray(vectors)


@dataclass(frozen=True)
class AnnConfig:
    """When and how a scorer retrieves candidates approximately.

    ``threshold``: catalogs of at least this many items are searched approximately (smaller ones
    exactly). ``candidates``: the least pool a search returns; a request that needs more (the
    pipeline's estimate of what filters and ranking stages consume) gets ``2 x`` its need.
    ``probes`` of ``lists`` inverted lists are read per query (``lists`` 0: about sqrt(N)).
    ``matrix``: storage of the item matrix that scores the candidates exactly and feeds the
    encoder ("bf16" halves it; "fp32").
    """

    threshold: int = 50_000
    candidates: int = 500
    lists: int = 0
    probes: int = 128
    matrix: str = "bf16"
    seed: int = 0

    def __post_init__(self) -> None:
        if self.threshold < 1 or self.candidates < 1 or self.probes < 1 or self.lists < 0:
            raise ValueError(f"AnnConfig(threshold={self.threshold}, candidates={self.candidates}, probes={self.probes}, "
                             f"lists={self.lists}): expected threshold, candidates and probes >= 1 and lists >= 0")
        if self.matrix not in ("bf16", "fp32"):
            raise ValueError(f"AnnConfig.matrix={self.matrix!r}: expected 'bf16' or 'fp32'")

    def approximate(self, n_items: int) -> bool:
        """Whether a catalog of ``n_items`` is searched approximately."""
        return n_items >= self.threshold

    def pool(self, wanted: int) -> int:
        """How many candidates to retrieve when the caller needs ``wanted`` of them."""
        return max(self.candidates, 2 * wanted)

    def lists_for(self, n_items: int) -> int:
        """Inverted lists of an index over ``n_items`` rows: about sqrt(N), with enough rows per
        list to train its k-means."""
        if self.lists:
            return max(1, min(self.lists, n_items // _POINTS_PER_LIST))
        return max(1, min(int(math.sqrt(n_items)), n_items // _POINTS_PER_LIST))


class ItemIndex:
    """Approximate maximum-inner-product search over item rows (IVF lists of int8 codes).

    Row ``r`` of the index is the ``r``-th vector given to :meth:`build` and :meth:`add`, so rows
    are the caller's item positions. One search or add runs at a time (faiss does not allow an add
    during a search; concurrent requests reach it as one batched search anyway).
    """

    def __init__(self, index: Any, probes: int) -> None:
        """``index``: a trained ``faiss.IndexIVFScalarQuantizer`` (see :meth:`train`)."""
        self._index = index
        self.probes = probes
        self._lock = threading.Lock()

    @classmethod
    def build(cls, vectors: np.ndarray, cfg: AnnConfig) -> "ItemIndex":
        """An index over ``vectors`` (N, d) float32 (see :meth:`train`, then :meth:`add`)."""
        index = cls.train(lambda rows: vectors[rows], len(vectors), cfg)
        index.add(vectors)
        return index

    @classmethod
    def train(cls, rows: Callable[[np.ndarray], np.ndarray], n_items: int, cfg: AnnConfig) -> "ItemIndex":
        """An empty index for ``n_items`` rows, its k-means lists trained on a seeded sample of at
        most 64 rows per list (``rows(positions)`` -> (K, d) float32); :meth:`add` fills it."""
        if n_items <= 0:
            raise ValueError("an item index needs at least one vector")
        import faiss  # here, not at module import: only a large catalog pays for loading it

        lists = cfg.lists_for(n_items)
        rng = np.random.default_rng(cfg.seed)
        picked = np.arange(n_items) if n_items <= 64 * lists else np.sort(rng.choice(n_items, 64 * lists, replace=False))
        sample = _padded(rows(picked))  # (S, d)
        d = sample.shape[1]
        index = faiss.IndexIVFScalarQuantizer(faiss.IndexFlatIP(d), d, lists, faiss.ScalarQuantizer.QT_8bit,
                                              faiss.METRIC_INNER_PRODUCT)
        index.cp.seed = cfg.seed
        index.train(sample)
        return cls(index, cfg.probes)

    @property
    def probes(self) -> int:
        """Inverted lists read per query (more: higher recall, slower)."""
        return int(self._index.nprobe)

    @probes.setter
    def probes(self, value: int) -> None:
        self._index.nprobe = max(1, min(int(value), self._index.nlist))

    @property
    def lists(self) -> int:
        return int(self._index.nlist)

    @property
    def ntotal(self) -> int:
        return int(self._index.ntotal)


    def nbytes(self) -> int:
        """Bytes the index holds: int8 codes and row ids in the lists, and the list centroids."""
        ix = self._index
        return ix.ntotal * (ix.code_size + 8) + ix.nlist * ix.d * 4

    def add(self, vectors: np.ndarray) -> None:
        """Append rows ``ntotal ..`` (incremental: the lists are not retrained; a new item goes to
        its nearest list)."""
        vectors = _padded(vectors)  # (K, d)
        if len(vectors):
            with self._lock:
                self._index.add(vectors)

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """(B, k) approximate scores and rows of the best ``k`` rows per query, best first; rows
        are -1 where fewer were found."""
        queries = _padded(queries)  # (B, d)
        k = max(1, min(k, self.ntotal))
        with self._lock:
            scores, rows = self._index.search(queries, k)
        return scores, rows
