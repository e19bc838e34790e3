"""Baseline scorer: item-to-item co-occurrence blended with recency-weighted popularity.

Updated per event (``observe``), so the very next request already sees it:

- popularity: ``pop[i] = sum_e w_e * exp((t_e - t_ref) / tau)`` over positive events on ``i``. All
  items share the factor ``exp(-(now - t_ref) / tau)``, so ranking by ``pop`` is ranking by the
  decayed count without touching every item per event (``t_ref`` moves forward now and then to
  keep the exponent small);
- co-occurrence: when a user acts positively on ``i`` (weight ``w``), each of their previous
  ``window`` positive events on an item ``j != i`` (``d`` events back) adds ``w / d`` to ``C[j, i]``
  (what follows ``j``) and ``symmetric * w / d`` to ``C[i, j]``.

A user's score for ``i`` sums the rows ``C[j] / |C[j]|`` of their recent positive items, weighted
by recency and event weight, plus ``pop_weight`` times normalised popularity; a user without
history gets popularity alone.

Storage: ``C`` is a CSR matrix built in bulk from the log at start (:meth:`rebuild`, vectorised)
plus a small dict-of-dicts delta for events since; the delta is merged into the CSR matrix when
it grows. ``rebuild`` gives exactly what ``observe`` on every event gives (tested). Every update
depends only on the user's own events, so deleting a user subtracts what they added.

Snapshots: :meth:`CooccurrenceScorer.capture` copies what ``observe`` mutates in place (the
delta, popularity, totals, the users' recent items) and keeps a reference to the CSR base, which
is replaced, never changed, once built; :meth:`CooccurrenceCapture.export` turns that into
columns outside any lock and :meth:`CooccurrenceScorer.load_state` installs them again.
"""

from __future__ import annotations

import math
import threading
from collections import deque
from dataclasses import dataclass
from typing import Any, Iterable, Mapping, Sequence

import numpy as np
import scipy.sparse as sp

from ..events import DEFAULT_TYPES, Event, TypeSpec
from ..state import UserState
from .scoring import Scored


@dataclass(frozen=True)
class CooccurrenceConfig:
    window: int = 5  # how many previous positive events of the user pair with a new one
    symmetric: float = 0.5  # weight of the backward direction
    history: int = 20  # recent positive items used at request time
    recency: float = 0.85  # weight decay per step back in the history
    pop_weight: float = 0.1  # blend of normalised popularity into the score
    half_life_days: float = 14.0  # popularity half-life (in event time)
    extra_candidates: int = 200  # popular items always among the candidates
    merge_every: int = 200_000  # delta cells before the delta is merged into the CSR base


class _AppModel:
    def __init__(self) -> None:
        self.index: dict[str, int] = {}
        self.ids: list[str] = []
        self.ids_array = np.empty(0, dtype=object)
        self.pop = np.zeros(64, dtype=np.float64)
        self.total = np.zeros(64, dtype=np.float64)  # row sums of C (base + delta)
        self.t_ref: float | None = None
        self.base = sp.csr_matrix((0, 0), dtype=np.float64)
        self.delta: dict[int, dict[int, float]] = {}
        self.delta_cells = 0
        self.recent: dict[str, deque[tuple[int, float]]] = {}

    def idx(self, item_id: str) -> int:
        i = self.index.get(item_id)
        if i is None:
            i = self.index[item_id] = len(self.ids)
            self.ids.append(item_id)
            if i >= len(self.pop):
                grow = np.zeros(len(self.pop))
                self.pop = np.concatenate([self.pop, grow])
                self.total = np.concatenate([self.total, grow])
        return i

    def id_array(self) -> np.ndarray:
        if len(self.ids_array) != len(self.ids):
            self.ids_array = np.array(self.ids, dtype=object)
        return self.ids_array

    def row(self, j: int) -> list[tuple[np.ndarray, np.ndarray]]:
        """Row ``j`` of C as (columns, values) parts: the CSR base and the delta."""
        parts = []
        if j < self.base.shape[0]:
            lo, hi = self.base.indptr[j], self.base.indptr[j + 1]
            if hi > lo:
                parts.append((self.base.indices[lo:hi], self.base.data[lo:hi]))
        cells = self.delta.get(j)
        if cells:
            parts.append((np.fromiter(cells.keys(), np.int64, len(cells)), np.fromiter(cells.values(), np.float64, len(cells))))
        return parts

    @classmethod
    def from_columns(cls, columns: Mapping[str, Any], window: int) -> "_AppModel":
        """The model :meth:`CooccurrenceCapture.export` wrote for one app."""
        model = cls()
        model.ids = list(columns["ids"])
        n = len(model.ids)
        model.index = dict(zip(model.ids, range(n)))
        capacity = max(64, n)
        model.pop = np.zeros(capacity, dtype=np.float64)
        model.pop[:n] = columns["pop"]
        model.total = np.zeros(capacity, dtype=np.float64)
        model.total[:n] = columns["total"]
        t_ref = float(columns["t_ref"][0])
        model.t_ref = None if math.isnan(t_ref) else t_ref
        rows, cols = (int(x) for x in columns["base_shape"])
        model.base = sp.csr_matrix((columns["base_data"], columns["base_indices"], columns["base_indptr"]), shape=(rows, cols))
        delta: dict[int, dict[int, float]] = {}
        for r, c, v in zip(columns["delta_rows"].tolist(), columns["delta_cols"].tolist(), columns["delta_values"].tolist()):
            cells = delta.get(r)
            if cells is None:
                cells = delta[r] = {}
            cells[c] = v
        model.delta = delta
        model.delta_cells = int(columns["delta_cells"][0])
        at = columns["recent_offsets"].tolist()
        items, weights = columns["recent_items"].tolist(), columns["recent_weights"].tolist()
        model.recent = {
            user: deque(zip(items[at[k]:at[k + 1]], weights[at[k]:at[k + 1]]), maxlen=window)
            for k, user in enumerate(columns["recent_users"])
        }
        return model

    def merge(self) -> None:
        """Fold the delta into the CSR base."""
        n = len(self.ids)
        rows, cols, vals = [], [], []
        for r, cells in self.delta.items():
            rows.extend([r] * len(cells))
            cols.extend(cells.keys())
            vals.extend(cells.values())
        base = self.base
        if base.shape != (n, n):
            base = sp.csr_matrix((base.data, base.indices, np.concatenate([base.indptr, np.full(n - base.shape[0], base.indptr[-1])])), shape=(n, n))
        delta = sp.csr_matrix((vals, (rows, cols)), shape=(n, n))
        merged = (base + delta).tocsr()
        merged.data[merged.data < 1e-9] = 0.0
        merged.eliminate_zeros()
        merged.sort_indices()  # pair_similarity binary-searches rows
        self.base = merged
        self.delta = {}
        self.delta_cells = 0


@dataclass(frozen=True)
class _AppCapture:
    ids: list[str]
    pop: np.ndarray
    total: np.ndarray
    t_ref: float | None
    base: sp.csr_matrix  # shared, not copied: a base is replaced, never changed, once published
    delta: dict[int, dict[int, float]]
    delta_cells: int
    recent: dict[str, tuple[tuple[int, float], ...]]


class CooccurrenceCapture:
    """The counters of every app at one moment, independent of later ``observe`` calls."""

    def __init__(self, apps: dict[str, _AppCapture]):
        self._apps = apps

    def export(self) -> dict[str, dict[str, Any]]:
        """Per app, columns: numbers as numpy arrays, strings as lists (the file format encodes
        them); :meth:`CooccurrenceScorer.load_state` reads them back."""
        out: dict[str, dict[str, Any]] = {}
        for app, m in self._apps.items():
            rows: list[int] = []
            cols: list[int] = []
            vals: list[float] = []
            for r, cells in m.delta.items():
                rows.extend([r] * len(cells))
                cols.extend(cells)
                vals.extend(cells.values())
            recent_items: list[int] = []
            recent_weights: list[float] = []
            lengths: list[int] = []
            for pairs in m.recent.values():
                recent_items.extend(p[0] for p in pairs)
                recent_weights.extend(p[1] for p in pairs)
                lengths.append(len(pairs))
            offsets = np.zeros(len(lengths) + 1, dtype=np.int64)
            np.cumsum(lengths, out=offsets[1:])
            out[app] = {
                "ids": list(m.ids),
                "pop": m.pop,
                "total": m.total,
                "t_ref": np.array([math.nan if m.t_ref is None else m.t_ref], dtype=np.float64),
                "base_shape": np.array(m.base.shape, dtype=np.int64),
                "base_data": np.asarray(m.base.data, dtype=np.float64),
                "base_indices": m.base.indices,  # scipy's own index dtype (int32 below 2**31 cells)
                "base_indptr": m.base.indptr,
                "delta_rows": np.array(rows, dtype=np.int64),
                "delta_cols": np.array(cols, dtype=np.int64),
                "delta_values": np.array(vals, dtype=np.float64),
                "delta_cells": np.array([m.delta_cells], dtype=np.int64),
                "recent_users": list(m.recent),
                "recent_offsets": offsets,
                "recent_items": np.array(recent_items, dtype=np.int64),
                "recent_weights": np.array(recent_weights, dtype=np.float64),
            }
        return out


class CooccurrenceScorer:
    """Per-event co-occurrence + popularity scorer; one instance serves every app."""

    name = "cooccurrence"

    def __init__(self, config: CooccurrenceConfig | None = None, types: Mapping[str, TypeSpec] | None = None):
        self.config = config or CooccurrenceConfig()
        self.types = dict(types or DEFAULT_TYPES)
        self._tau = self.config.half_life_days * 86400.0 / math.log(2.0)
        self._apps: dict[str, _AppModel] = {}
        self._lock = threading.RLock()

    def _weight(self, event: Event) -> float:
        spec = self.types.get(event.type)
        if spec is None or spec.polarity != "positive" or event.item_id is None or spec.weight <= 0:
            return 0.0
        return spec.weight

    # ---- event path -------------------------------------------------------------------------
    def observe(self, app: str, event: Event) -> None:
        self._update(app, event, sign=1.0, recent=None)

    def forget_user(self, app: str, events: Sequence[Event]) -> None:
        """Subtract the contributions of one user's events (replayed in log order)."""
        recent: dict[str, deque[tuple[int, float]]] = {}
        for event in events:
            self._update(app, event, sign=-1.0, recent=recent)
        with self._lock:
            model = self._apps.get(app)
            if model is not None and events:
                model.recent.pop(events[0].user_id, None)

    def _model(self, app: str) -> _AppModel:
        model = self._apps.get(app)
        if model is None:
            model = self._apps[app] = _AppModel()
        return model

    def _update(self, app: str, event: Event, sign: float, recent: dict | None) -> None:
        w = self._weight(event)
        if w == 0.0:
            return
        cfg = self.config
        with self._lock:
            model = self._model(app)
            i = model.idx(event.item_id)  # type: ignore[arg-type]
            if model.t_ref is None:
                model.t_ref = event.timestamp
            exponent = (event.timestamp - model.t_ref) / self._tau
            if exponent > 50.0:  # move the reference forward, rescaling every stored value alike
                model.pop *= math.exp(-exponent)
                model.t_ref = event.timestamp
                exponent = 0.0
            model.pop[i] += sign * w * math.exp(exponent)
            if abs(model.pop[i]) < 1e-9:
                model.pop[i] = 0.0
            recents = (model.recent if recent is None else recent).setdefault(event.user_id, deque(maxlen=cfg.window))
            # Inlined cell updates: this loop is the hot part of ingestion.
            delta, total = model.delta, model.total
            row_i = delta.get(i)
            if row_i is None:
                row_i = delta[i] = {}
            added_i = 0.0
            new_cells = 0
            for d, (j, _) in enumerate(reversed(recents), start=1):
                if j == i:
                    continue
                forward = sign * w / d
                backward = cfg.symmetric * forward
                row_j = delta.get(j)
                if row_j is None:
                    row_j = delta[j] = {}
                old = row_j.get(i)
                if old is None:
                    new_cells += 1
                    row_j[i] = forward
                else:
                    row_j[i] = old + forward
                old = row_i.get(j)
                if old is None:
                    new_cells += 1
                    row_i[j] = backward
                else:
                    row_i[j] = old + backward
                t = total[j] + forward
                total[j] = t if t > 1e-9 else 0.0
                added_i += backward
            if added_i:
                t = total[i] + added_i
                total[i] = t if t > 1e-9 else 0.0
            model.delta_cells += new_cells
            recents.append((i, w))
            if model.delta_cells > cfg.merge_every:
                model.merge()

    def rebuild(self, events: Iterable[Event]) -> None:
        """Recompute everything from the log (vectorised); equal to ``observe`` on each event."""
        cfg = self.config
        per_app: dict[str, list[tuple[str, int, float, float]]] = {}
        with self._lock:
            self._apps = {}
            for event in events:
                w = self._weight(event)
                if w > 0.0:
                    model = self._model(event.app)
                    per_app.setdefault(event.app, []).append((event.user_id, model.idx(event.item_id), w, event.timestamp))  # type: ignore[arg-type]
            for app, rows in per_app.items():
                model = self._apps[app]
                n = len(model.ids)
                users = np.array([r[0] for r in rows], dtype=object)
                items = np.fromiter((r[1] for r in rows), np.int64, len(rows))
                weights = np.fromiter((r[2] for r in rows), np.float64, len(rows))
                times = np.fromiter((r[3] for r in rows), np.float64, len(rows))
                # Popularity, referenced to the first event as observe() does, then rebased the
                # same way if the span is long.
                model.t_ref = float(times[0])
                span = (times.max() - model.t_ref) / self._tau
                if span > 50.0:
                    model.t_ref = float(times.max())
                model.pop[:n] = np.bincount(items, weights * np.exp((times - model.t_ref) / self._tau), minlength=n)
                # Pairs within each user's positive events, by lag.
                _, user_codes = np.unique(users, return_inverse=True)
                order = np.argsort(user_codes, kind="stable")  # keeps log order within a user
                u, it, wt = user_codes[order], items[order], weights[order]
                row_parts, col_parts, val_parts = [], [], []
                for d in range(1, cfg.window + 1):
                    if d >= len(u):
                        break
                    keep = (u[:-d] == u[d:]) & (it[:-d] != it[d:])
                    prev, cur, w = it[:-d][keep], it[d:][keep], wt[d:][keep] / d
                    row_parts += [prev, cur]
                    col_parts += [cur, prev]
                    val_parts += [w, cfg.symmetric * w]
                if row_parts:
                    rows_ = np.concatenate(row_parts)
                    cols_ = np.concatenate(col_parts)
                    vals_ = np.concatenate(val_parts)
                    model.base = sp.csr_matrix((vals_, (rows_, cols_)), shape=(n, n))
                    model.base.sum_duplicates()
                    model.base.sort_indices()
                    model.total[:n] = np.asarray(model.base.sum(axis=1)).ravel()
                else:
                    model.base = sp.csr_matrix((n, n), dtype=np.float64)
                # Each user's last `window` positive events, for pairs with what comes next.
                ends = np.flatnonzero(np.r_[u[1:] != u[:-1], True])
                starts = np.r_[0, ends[:-1] + 1]
                user_names = users[order]
                for s, e in zip(starts, ends):
                    lo = max(s, e + 1 - cfg.window)
                    model.recent[user_names[s]] = deque(zip(it[lo:e + 1].tolist(), wt[lo:e + 1].tolist()), maxlen=cfg.window)

    # ---- snapshots --------------------------------------------------------------------------
    def capture(self) -> CooccurrenceCapture:
        """Copy what ``observe`` changes in place; cheap enough to run while the log follower's
        lock holds events back, so the copy matches one log position."""
        with self._lock:
            apps = {}
            for app, model in self._apps.items():
                n = len(model.ids)
                apps[app] = _AppCapture(
                    ids=list(model.ids),
                    pop=model.pop[:n].copy(),
                    total=model.total[:n].copy(),
                    t_ref=model.t_ref,
                    base=model.base,
                    delta={r: dict(cells) for r, cells in model.delta.items() if cells},
                    delta_cells=model.delta_cells,
                    recent={user: tuple(pairs) for user, pairs in model.recent.items()},
                )
            return CooccurrenceCapture(apps)

    def export_state(self) -> dict[str, dict[str, Any]]:
        """Every app's counters as columns (see :meth:`CooccurrenceCapture.export`)."""
        return self.capture().export()

    def load_state(self, apps: Mapping[str, Mapping[str, Any]]) -> None:
        """Replace every app's counters with those :meth:`export_state` wrote."""
        models = {app: _AppModel.from_columns(columns, self.config.window) for app, columns in apps.items()}
        with self._lock:
            self._apps = models

    def adopt(self, app: str, other: "CooccurrenceScorer") -> None:
        """Take ``other``'s counters of ``app`` (rebuilt off the request path) in one assignment."""
        with self._lock, other._lock:
            model = other._apps.get(app)
            if model is None:
                self._apps.pop(app, None)
            else:
                self._apps[app] = model

    # ---- request path -----------------------------------------------------------------------
    def serves(self, app: str) -> bool:
        """Popularity answers for every app, even one without events (an empty slate)."""
        return True

    def score(self, app: str, state: UserState | None, n: int) -> Scored:
        cfg = self.config
        with self._lock:
            model = self._apps.get(app)
            if model is None or not model.ids:
                return Scored.empty()
            size = len(model.ids)
            pop = model.pop[:size]
            top = pop.max()
            pop_norm = pop / top if top > 0 else pop
            scores = np.zeros(size, dtype=np.float64)
            used = 0
            if state is not None:
                for item_id, kind, _, _, _, _ in reversed(state.sequence):
                    spec = self.types.get(kind)
                    if spec is None or spec.polarity != "positive" or item_id is None or spec.weight <= 0:
                        continue
                    j = model.index.get(item_id)
                    if j is None:
                        continue
                    total = model.total[j]
                    if total > 0:
                        a = (cfg.recency ** used) * spec.weight / total
                        for cols, vals in model.row(j):
                            scores[cols] += a * vals
                    used += 1
                    if used >= cfg.history:
                        break
            k = min(size, n + cfg.extra_candidates)
            popular = np.argpartition(-pop, k - 1)[:k]
            if used and scores.max() > 0:
                scores /= scores.max()
                mask = scores > 0
                mask[popular] = True
                candidates = np.flatnonzero(mask)
                final = scores[candidates] + cfg.pop_weight * pop_norm[candidates]
            else:
                candidates = popular
                final = pop_norm[candidates]
            table = model.id_array()
            return Scored(table[candidates], final.astype(np.float32), table, candidates)

    def similar(self, app: str, item_id: str, n: int) -> list[tuple[str, float]]:
        with self._lock:
            model = self._apps.get(app)
            if model is None or item_id not in model.index:
                return []
            j = model.index[item_id]
            sims = self._similarities(model, j)
            sims[j] = 0.0
            top = np.flatnonzero(sims > 1e-12)
            if len(top) > n:
                top = top[np.argpartition(-sims[top], n - 1)[:n]]
            order = top[np.argsort(-sims[top], kind="stable")]
            return [(model.ids[int(k)], float(sims[k])) for k in order]

    def _similarities(self, model: _AppModel, j: int) -> np.ndarray:
        """(N,) similarity of every item to item ``j``: ``C[j, i] / sqrt(|C[i]| |C[j]|)``, a
        cosine-like normalisation so that merely popular items do not dominate."""
        n = len(model.ids)
        sims = np.zeros(n)
        for cols, vals in model.row(j):
            sims[cols] += vals
        sims /= np.sqrt(np.maximum(model.total[:n], 1e-12) * max(model.total[j], 1e-12))
        return sims

    def pair_similarity(self, app: str, rows_ids: Sequence[str], cols_ids: Sequence[str]) -> np.ndarray:
        """(len(rows_ids), len(cols_ids)) similarities as :meth:`similar` gives them; 0 where an
        item is unknown. One pass per column, no sorting: the request path's explanations use it."""
        out = np.zeros((len(rows_ids), len(cols_ids)), dtype=np.float32)
        with self._lock:
            model = self._apps.get(app)
            if model is None:
                return out
            rows = np.array([model.index.get(i, -1) for i in rows_ids], dtype=np.int64)
            valid = np.flatnonzero(rows >= 0)
            if len(valid) == 0:
                return out
            r = rows[valid]
            cols = np.array([model.index.get(i, -1) for i in cols_ids], dtype=np.int64)
            known = np.flatnonzero(cols >= 0)
            if len(known) == 0:
                return out
            j = cols[known]
            # C[j, r] from the CSR base in one sliced gather, then the delta's cells.
            got = np.zeros((len(j), len(r)))  # (C', R')
            base = model.base
            in_base_j, in_base_r = j < base.shape[0], r < base.shape[1]
            if in_base_j.any() and in_base_r.any():
                block = base[j[in_base_j]][:, r[in_base_r]].toarray()
                got[np.ix_(np.flatnonzero(in_base_j), np.flatnonzero(in_base_r))] = block
            for a, col in enumerate(j.tolist()):
                cells = model.delta.get(col)
                if cells:
                    got[a] += [cells.get(x, 0.0) for x in r.tolist()]
            got[j[:, None] == r[None, :]] = 0.0  # an item is not its own neighbour
            norm = np.sqrt(np.maximum(model.total[j], 1e-12))[:, None] * np.sqrt(np.maximum(model.total[r], 1e-12))[None, :]
            out[np.ix_(valid, known)] = (got / norm).T
        return out

    def popularity(self, app: str) -> dict[str, float]:
        """Decayed popularity per item (relative units; for tests and the dashboard)."""
        with self._lock:
            model = self._apps.get(app)
            if model is None:
                return {}
            return {item: float(model.pop[i]) for i, item in enumerate(model.ids)}

    def matrix(self, app: str) -> tuple[list[str], np.ndarray]:
        """Item ids and the dense co-occurrence matrix (small data only: tests, inspection)."""
        with self._lock:
            model = self._apps.get(app)
            if model is None:
                return [], np.zeros((0, 0))
            n = len(model.ids)
            dense = np.zeros((n, n))
            base = model.base.toarray()
            dense[: base.shape[0], : base.shape[1]] = base
            for r, cells in model.delta.items():
                for c, v in cells.items():
                    dense[r, c] += v
            return list(model.ids), dense
