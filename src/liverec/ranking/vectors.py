"""Item vectors and neighbours for the ranking stages.

The feedback policy needs "neighbours of an item" and the diversity reranker "how alike two items
are". Both read one :class:`ItemSpace`, which takes its vectors from the best source available:

1. the model's item embeddings, when the scorer offers ``item_embeddings(app)`` (the Transformer's
   output vectors: items the model treats alike; a large catalog's neighbours come from the
   scorer's index over them);
2. text vectors of the catalog: a category one-hot block plus hashed title/text tokens
   (:class:`liverec.model.text.HashingEncoder`), so a new item has neighbours from its first second;
3. the scorer's own ``similar`` lists (co-occurrence) for items that have no vector at all.

Vectors are L2-normalised, so a dot product is a cosine similarity.
"""

from __future__ import annotations

import threading
from typing import Any, Callable, Protocol

import numpy as np

from ..catalog import CatalogIndex
from ..model.text import HashingEncoder


class VectorTable:
    """Row ``index[item_id]`` of ``matrix`` (N, D) float32 is the item's unit vector.

    ``nearest(item_id, k)``, when given, answers :meth:`ItemSpace.neighbours` from an index over
    the same vectors instead of a pass over every row (a catalog retrieved approximately).

    A table never changes once built (a new catalog or model version builds a new one), so each
    item's neighbours are computed once and kept (``NEIGHBOUR_CACHE`` lists at most): the feedback
    stage asks for them for every recent like on every request. A table that only appends rows
    to ``carry`` (an item upserted while serving) keeps its lists: each records how many rows it
    was taken over and is topped up with the new rows on its next use, so a new item joins its
    neighbours' lists at once and the cache survives a steady stream of new items.
    """

    NEIGHBOUR_CACHE = 20_000

    __slots__ = ("index", "matrix", "source", "ids", "nearest", "_near")

    def __init__(self, index: dict[str, int], matrix: np.ndarray, source: str,
                 nearest: Callable[[str, int], list[tuple[str, float]]] | None = None,
                 carry: VectorTable | None = None) -> None:
        if len(index) != matrix.shape[0]:
            raise ValueError(f"{len(index)} item ids for {matrix.shape[0]} vector rows")
        self.index = index
        self.matrix = matrix  # (N, D) float32, rows L2-normalised
        self.source = source
        self.nearest = nearest
        self.ids: list[str] = [""] * len(index)  # item ids in row order
        for item, r in index.items():
            self.ids[r] = item
        # (item, k) -> (rows the list was taken over, neighbours); shared with ``carry`` when this
        # table extends it (same rows first), so lists taken over more rows than a table has are
        # another table's and not used by it
        self._near: dict[tuple[str, int], tuple[int, list[tuple[str, float]]]] = {}
        if carry is not None and self.extends(carry):
            self._near = carry._near

    def extends(self, other: VectorTable) -> bool:
        """Whether this table's first rows are ``other``'s rows, same items, same vectors."""
        n = len(other.ids)
        return (n <= len(self.ids) and self.ids[:n] == other.ids and self.matrix.shape[1] == other.matrix.shape[1]
                and bool(np.array_equal(self.matrix[:n], other.matrix)))

    def neighbours(self, item_id: str, k: int) -> list[tuple[str, float]]:
        """The ``k`` items most similar to ``item_id`` (a row of this table; not itself), best first."""
        n = len(self.ids)
        row = self.index[item_id]
        hit = self._near.get((item_id, k))
        if hit is not None and hit[0] == n:
            return hit[1]
        if hit is not None and hit[0] < n and row < hit[0]:  # taken over fewer rows: add the new ones
            found = sorted(hit[1] + self._top(self.matrix[hit[0]:] @ self.matrix[row], k, hit[0]),
                           key=lambda pair: -pair[1])[:k]
        elif self.nearest is not None:
            found = self.nearest(item_id, k)
        else:
            sims = self.matrix @ self.matrix[row]  # (N,)
            sims[row] = -np.inf
            found = self._top(sims, min(k, n - 1), 0)
        if hit is None or hit[0] <= n:  # never replace a longer table's list
            if len(self._near) >= self.NEIGHBOUR_CACHE:
                self._near.clear()  # a bound, not an LRU: the hot set refills at once
            self._near[(item_id, k)] = (n, found)
        return found

    def _top(self, sims: np.ndarray, k: int, first: int) -> list[tuple[str, float]]:
        """The ``k`` best of ``sims`` (rows ``first`` on), best first, as (item, similarity)."""
        k = min(k, len(sims))
        if k <= 0:
            return []
        top = np.argpartition(-sims, k - 1)[:k]
        top = top[np.argsort(-sims[top], kind="stable")]
        return [(self.ids[first + int(t)], float(sims[t])) for t in top]

    def rows(self, item_ids: list[str] | np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(positions that have a vector, their rows) for ``item_ids``."""
        pos, rows = [], []
        for k, item in enumerate(item_ids):
            r = self.index.get(item)
            if r is not None:
                pos.append(k)
                rows.append(r)
        return np.asarray(pos, dtype=np.int64), np.asarray(rows, dtype=np.int64)


class VectorSource(Protocol):
    def table(self, app: str) -> VectorTable | None:
        """The app's item vectors, or ``None`` when this source has none."""


def _normalise(m: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(m, axis=1, keepdims=True)
    return (m / np.maximum(norms, 1e-12)).astype(np.float32)


class CatalogTextVectors:
    """Category one-hot (weight ``category_weight``) + hashed title/text tokens, per app.

    Rebuilt when the app's catalog size changes (items are rarely edited in place; a changed item
    takes effect with the next new item or restart).
    """

    def __init__(self, catalog: CatalogIndex, text_dim: int = 64, category_weight: float = 1.5) -> None:
        self.catalog = catalog
        self.encoder = HashingEncoder(text_dim)
        self.category_weight = category_weight
        self._cache: dict[str, tuple[int, VectorTable]] = {}
        self._lock = threading.Lock()

    def table(self, app: str) -> VectorTable | None:
        count = self.catalog.count(app)
        if count == 0:
            return None
        hit = self._cache.get(app)
        if hit is not None and hit[0] == count:
            return hit[1]
        with self._lock:
            items = self.catalog.items(app)
            cats = sorted({c for it in items for c in it.categories})
            cat_index = {c: k for k, c in enumerate(cats)}
            onehot = np.zeros((len(items), len(cats)), dtype=np.float32)  # (N, C)
            for r, it in enumerate(items):
                for c in it.categories:
                    onehot[r, cat_index[c]] = 1.0
            onehot = _normalise(onehot) * self.category_weight if len(cats) else onehot
            text = self.encoder.encode([f"{it.title} {it.text}" for it in items])  # (N, text_dim)
            matrix = _normalise(np.concatenate([onehot, text], axis=1))  # (N, C + text_dim)
            table = VectorTable({it.item_id: r for r, it in enumerate(items)}, matrix, "text",
                                carry=hit[1] if hit is not None else None)
            self._cache[app] = (count, table)
            return table


class ScorerEmbeddings:
    """The model's item vectors, when the served scorer has them.

    Accepted shapes: a scorer with ``item_embeddings(app) -> (ids, (N, D))``; a Transformer
    scorer (``model`` + ``item_ids``: the model's output item vectors); or a per-app router with
    ``by_app`` holding such scorers. Cached per scorer object, so a newly served model version is
    picked up at once.
    """

    def __init__(self, scorer: Callable[[], Any]) -> None:
        self._scorer = scorer
        self._cache: dict[str, tuple[Any, VectorTable]] = {}

    @staticmethod
    def _vectors(scorer: Any, app: str) -> tuple[list[str], np.ndarray] | None:
        fn = getattr(scorer, "item_embeddings", None)
        if fn is not None:
            return fn(app)
        model, ids = getattr(scorer, "model", None), getattr(scorer, "item_ids", None)
        if model is None or ids is None or getattr(scorer, "app", app) != app:
            return None
        import torch

        with torch.no_grad():
            vecs = model.item_vectors()[1:].detach().cpu().numpy()  # (N, D)
        return [str(i) for i in ids], vecs

    def table(self, app: str) -> VectorTable | None:
        scorer = self._scorer()
        by_app = getattr(scorer, "by_app", None)
        if isinstance(by_app, dict):
            scorer = by_app.get(app)
            if scorer is None:
                return None
        hit = self._cache.get(app)
        if hit is not None and hit[0] is scorer:
            return hit[1]
        got = self._vectors(scorer, app)
        if got is None:
            return None
        ids, vecs = got
        nearest = None
        if getattr(scorer, "approximate", False):  # its similar items come from an index over these vectors
            nearest = lambda item_id, k, s=scorer: s.similar(app, item_id, k)  # noqa: E731
        table = VectorTable({str(i): r for r, i in enumerate(ids)}, _normalise(np.asarray(vecs, dtype=np.float32)), "model",
                            nearest, carry=hit[1] if hit is not None else None)
        self._cache[app] = (scorer, table)
        return table


class ItemSpace:
    """Similarities between items from the first source that knows them (model, text, scorer).

    ``similar`` is the scorer's ``similar(app, item, n)`` (co-occurrence), the last resort.
    """

    def __init__(
        self,
        sources: list[VectorSource],
        similar: Callable[[str, str, int], list[tuple[str, float]]] | None = None,
        pairs: Callable[[str, list[str], list[str]], np.ndarray] | None = None,
    ) -> None:
        self.sources = sources
        self._similar = similar
        self._pairs = pairs  # (rows, cols) similarities from the scorer, for pairs without vectors

    def table(self, app: str) -> VectorTable | None:
        for source in self.sources:
            t = source.table(app)
            if t is not None:
                return t
        return None

    def similarity(self, app: str, rows_ids: list[str], cols_ids: list[str], table: VectorTable | None = None) -> np.ndarray:
        """(len(rows_ids), len(cols_ids)) cosine similarities; 0 where unknown.

        Pairs without vectors fall back to ``pairs`` (the co-occurrence similarities), else to the
        scorer's ``similar`` list of the column item.
        """
        out = np.zeros((len(rows_ids), len(cols_ids)), dtype=np.float32)
        if not rows_ids or not cols_ids:
            return out
        table = table if table is not None else self.table(app)
        known = np.zeros((len(rows_ids), len(cols_ids)), dtype=bool)  # (R, C) pairs with vectors
        if table is not None:
            rp, rr = table.rows(rows_ids)
            cp, cr = table.rows(cols_ids)
            if len(rp) and len(cp):
                out[np.ix_(rp, cp)] = table.matrix[rr] @ table.matrix[cr].T  # (R', C')
                known[np.ix_(rp, cp)] = True
        if not known.all():
            cols = np.flatnonzero(~known.all(axis=0))
            if self._pairs is not None:
                fallback = np.minimum(self._pairs(app, rows_ids, [cols_ids[k] for k in cols]), 1.0)  # (R, C'')
                sub = out[:, cols]
                unknown = ~known[:, cols]
                sub[unknown] = fallback[unknown]
                out[:, cols] = sub
            elif self._similar is not None:
                row_pos = {item: k for k, item in enumerate(rows_ids)}
                for k in cols:
                    for other, sim in self._similar(app, cols_ids[k], 50):
                        r = row_pos.get(other)
                        if r is not None and not known[r, k]:
                            out[r, k] = min(float(sim), 1.0)
        return out

    def neighbours(self, app: str, item_id: str, k: int, min_similarity: float = 0.0) -> list[tuple[str, float]]:
        """The ``k`` items most similar to ``item_id`` (not itself), best first."""
        table = self.table(app)
        if table is not None and item_id in table.index:
            return [(i, s) for i, s in table.neighbours(item_id, k) if s >= min_similarity]
        if self._similar is not None:
            return [(i, s) for i, s in self._similar(app, item_id, k) if s >= min_similarity]
        return []
