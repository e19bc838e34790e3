"""The feedback policy: how a user's explicit feedback moves candidates, with time decay.

Reads the user's online state (:class:`liverec.state.UserState`) — likes, dislikes and skips keyed
by (scope, target) with their time — and returns one additive adjustment per candidate, in units
of the pool's normalised model score (see :class:`~liverec.ranking.config.RankingConfig`):

* ``dislike`` / ``skip`` of an item: the item itself drops (``dislike_item``, ``skip_item``) and
  its neighbours drop by ``*_neighbour x similarity``;
* ``dislike`` / ``skip`` with scope ``category`` or any item attribute (``creator``...): every item
  with that value drops (``scoped_dislike``, ``scoped_skip``);
* repeated negatives in one category (``category_repeat`` skipped or disliked items of that
  category) demote the whole category (``category_demote``);
* ``like`` / ``favorite`` / ``share`` / ``purchase``: neighbours rise by ``like_boost x similarity``.

Every effect is multiplied by ``0.5 ** (age / half_life_s)``, age measured from the request's
``now`` (default: the user's latest event, i.e. event time). Everything is recomputed from the
state at request time, so ``undo`` and ``unblock`` (which change the state) reverse an effect at
once, and nothing is stored that could go stale. Blocks are *not* handled here: they are hard
filters (:class:`liverec.recommend.pipeline.Policy`) applied before this stage ever sees a
candidate, and re-checked on the final slate.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from ..state import UserState
from ..store.base import Item
from .config import RankingConfig
from .vectors import ItemSpace

POSITIVE_FEEDBACK = ("like", "favorite", "share", "purchase")


@dataclass(frozen=True, slots=True)
class Signal:
    """One feedback fact from the state: ``type`` on (``scope``, ``target``) at ``timestamp``."""

    type: str  # like | dislike | skip (like stands for any positive feedback type)
    scope: str
    target: str
    timestamp: float
    decay: float
    event_type: str  # the event type as sent (like, favorite, purchase, ...)
    event_id: str | None = None


def signals(state: UserState, now: float, cfg: RankingConfig) -> list[Signal]:
    """The user's feedback facts, newest first, at most ``cfg.max_signals``."""
    # The latest event of each kind per item gives the event type and id shown in explanations.
    latest: dict[tuple[str, str], tuple[str, str | None]] = {}  # (like|dislike|skip, item) -> (type, id)
    for inter in state.sequence:  # oldest -> newest
        if inter.item_id is None:
            continue
        if inter.type in POSITIVE_FEEDBACK:
            latest[("like", inter.item_id)] = (inter.type, inter.event_id)
        elif inter.type in ("dislike", "skip"):
            latest[(inter.type, inter.item_id)] = (inter.type, inter.event_id)
    out: list[Signal] = []
    for item, t in state.liked.items():
        etype, eid = latest.get(("like", item), ("like", None))
        out.append(Signal("like", "item", item, t, cfg.decay(now - t), etype, eid))
    for kind, table in (("dislike", state.disliked), ("skip", state.skipped)):
        for (scope, target), t in table.items():
            eid = latest.get((kind, target), (kind, None))[1] if scope == "item" else None
            out.append(Signal(kind, scope, target, t, cfg.decay(now - t), kind, eid))
    out.sort(key=lambda s: -s.timestamp)
    return out[: cfg.max_signals]


@dataclass
class Adjustments:
    """Per-candidate adjustments and what made them, for the pool ``item_ids``."""

    item_ids: list[str]
    total: np.ndarray  # (K,) float64 sum of all effects
    parts: list[list[dict]] = field(default_factory=list)  # per candidate: the effects that applied

    def explain(self, k: int, min_abs: float = 0.01, limit: int = 4) -> list[dict]:
        """The largest effects on candidate ``k`` (|delta| >= ``min_abs``), biggest first."""
        parts = [p for p in self.parts[k] if abs(p["delta"]) >= min_abs]
        parts.sort(key=lambda p: -abs(p["delta"]))
        return [{**p, "delta": round(p["delta"], 4)} for p in parts[:limit]]


def adjust(
    app: str,
    state: UserState | None,
    item_ids: list[str],
    now: float,
    cfg: RankingConfig,
    space: ItemSpace,
    item_of: Callable[[str, str], Item | None],
) -> Adjustments:
    """Compute the feedback adjustments of the candidates ``item_ids`` for this user."""
    k = len(item_ids)
    total = np.zeros(k, dtype=np.float64)
    parts: list[list[dict]] = [[] for _ in range(k)]
    if state is None or k == 0:
        return Adjustments(item_ids, total, parts)
    sigs = signals(state, now, cfg)
    if not sigs:
        return Adjustments(item_ids, total, parts)

    def add(rows: np.ndarray, deltas: np.ndarray, info: dict) -> None:
        for r, d in zip(rows.tolist(), deltas.tolist()):
            total[r] += d
            parts[r].append({**info, "delta": d})

    pos = {item: r for r, item in enumerate(item_ids)}
    # ---- item-scoped signals: the item itself and its neighbours ------------------------------
    item_sigs = [s for s in sigs if s.scope == "item"]
    if item_sigs:
        sims = space.similarity(app, item_ids, [s.target for s in item_sigs])  # (K, S)
        lo = cfg.min_similarity
        near = np.clip((sims - lo) / max(1.0 - lo, 1e-6), 0.0, 1.0)  # (K, S) neighbour strength
        for j, s in enumerate(item_sigs):
            own = pos.get(s.target)
            col = near[:, j].copy()
            if own is not None:
                col[own] = 0.0
            if s.type == "like":
                w, self_w, name = cfg.like_boost, 0.0, "like_boost"
            elif s.type == "dislike":
                w, self_w, name = -cfg.dislike_neighbour, -cfg.dislike_item, "dislike_demote"
            else:
                w, self_w, name = -cfg.skip_neighbour, -cfg.skip_item, "skip_demote"
            info = {"kind": "policy", "adjustment": name, "item_id": s.target, "type": s.event_type}
            if s.event_id:
                info["event_id"] = s.event_id
            rows = np.flatnonzero(col > 0)
            if len(rows) and w != 0.0:
                add(rows, w * s.decay * col[rows], info)
            if own is not None and self_w != 0.0:
                add(np.array([own]), np.array([self_w * s.decay]), info)

    # ---- scoped signals and repeated negatives per category -----------------------------------
    scoped = [s for s in sigs if s.scope != "item"]
    cat_mass: dict[str, float] = {}
    cat_count: dict[str, int] = {}
    for s in sigs:
        if s.scope == "item" and s.type in ("dislike", "skip"):
            item = item_of(app, s.target)
            if item is None:
                continue
            mass = (cfg.dislike_mass if s.type == "dislike" else cfg.skip_mass) * s.decay
            for c in item.categories:
                cat_mass[c] = cat_mass.get(c, 0.0) + mass
                cat_count[c] = cat_count.get(c, 0) + 1
    demoted = {
        c: cfg.category_demote * min(1.0, cat_mass[c] / (cfg.category_repeat * cfg.skip_mass))
        for c, n in cat_count.items() if n >= cfg.category_repeat
    }
    if scoped or demoted:
        for r, item_id in enumerate(item_ids):
            item = item_of(app, item_id)
            if item is None:
                continue
            values = item.attribute_values()
            for s in scoped:
                if s.target in values.get(s.scope, ()):
                    w = cfg.scoped_dislike if s.type == "dislike" else cfg.scoped_skip
                    d = -w * s.decay
                    total[r] += d
                    parts[r].append({"kind": "policy", "adjustment": f"{s.type}_{s.scope}", "scope": s.scope,
                                     "target": s.target, "type": s.event_type, "delta": d})
            cats = [c for c in item.categories if c in demoted]
            if cats:
                d = -max(demoted[c] for c in cats)
                total[r] += d
                parts[r].append({"kind": "policy", "adjustment": "category_demote", "scope": "category",
                                 "target": max(cats, key=lambda c: demoted[c]), "type": "skip/dislike", "delta": d})
    return Adjustments(item_ids, total, parts)
