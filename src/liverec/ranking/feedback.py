"""The feedback policy: how a user's explicit feedback moves candidates, with time decay.

Reads the user's online state (:class:`liverec.state.UserState`) — likes, dislikes and skips keyed
by (scope, target) with their time — and returns one additive adjustment per candidate, in units
of the pool's normalised model score (see :class:`~liverec.ranking.config.RankingConfig`):

* ``dislike`` / ``skip`` of an item: the item itself drops (``dislike_item``, ``skip_item``) and
  its neighbours drop by ``*_neighbour x similarity``;
* ``dislike`` / ``skip`` with scope ``category`` or any item attribute (``creator``...): every item
  with that value drops (``scoped_dislike``, ``scoped_skip``);
* ``like`` / ``favorite`` / ``share`` / ``purchase``: neighbours rise by ``like_boost x similarity``;
  a ``click`` is a weaker positive: ``click_boost x similarity``;
* an item the user read past without reacting (``passed``, :mod:`liverec.ranking.examined`)
  drops a little itself (``passed_item``), not its neighbours;
* per category, the user's recent item feedback is netted: likes and clicks count for it
  (``like_mass``, ``click_mass``), skips and dislikes against it (``skip_mass``, ``dislike_mass``),
  and items passed over weakly against it (``passed_mass``; they never demote a category alone).
  A category with ``category_repeat`` or more negatives and a negative net is demoted (up to
  ``category_demote``); one with a positive net is boosted (up to ``category_boost``). So a user
  who starts clicking a genre they used to skip gets it back within a few events.

Every effect is multiplied by ``0.5 ** (age / half_life_s)``, age measured from the request's
``now`` (default: the user's latest event, i.e. event time). Item feedback is also weighted by
its recency *in the user's own sequence*: ``0.5 ** (newer events / recency_events)``, so a taste
that changes within one session (where the clock barely moves) is followed as soon as the newer
feedback outweighs the older. Explicit scoped feedback (a disliked category) has only the time
decay: the user said it about the category, not about one item. Everything is recomputed from the
state at request time, so ``undo`` and ``unblock`` (which change the state) reverse an effect at
once, and nothing is stored that could go stale. Blocks are *not* handled here: they are hard
filters (:class:`liverec.recommend.pipeline.Policy`) applied before this stage ever sees a
candidate, and re-checked on the final slate.
"""

from __future__ import annotations

from bisect import bisect_right
from dataclasses import dataclass, field, replace
from typing import Callable, Mapping, Sequence

import numpy as np

from ..catalog import CategoryMatrix
from ..events import CLICKS, DISLIKES, LIKE_LIKE, SKIPS, Feedback, TypeSpec
from ..state import ITEM, TIMESTAMP, TYPE, Interaction, UserState
from ..store.base import Item
from .config import RankingConfig
from .examined import Passed
from .vectors import ItemSpace

# The feedback kind an event type is read as: every type the user state keeps as a like
# (favorite, share, purchase...) counts as a like; a click is a weaker positive.
KIND_OF: dict[str, Feedback] = {
    **{t: Feedback.LIKE for t in LIKE_LIKE},
    **{t: Feedback.CLICK for t in CLICKS},
    **{t: Feedback.DISLIKE for t in DISLIKES},
    **{t: Feedback.SKIP for t in SKIPS},
}
NEGATIVE_KINDS = frozenset({Feedback.DISLIKE, Feedback.SKIP})
POSITIVE_KINDS = frozenset({Feedback.LIKE, Feedback.CLICK})
NEGATIVE_FEEDBACK = DISLIKES | SKIPS


@dataclass(frozen=True, slots=True)
class Signal:
    """One feedback fact from the state: ``type`` on (``scope``, ``target``) at ``timestamp``."""

    type: str  # a Feedback kind (like | click | dislike | skip; like stands for every type kept as a like) or "passed"
    scope: str
    target: str
    timestamp: float
    decay: float
    event_type: str  # the event type as sent (like, favorite, purchase, ...)
    event_id: str | None = None
    pos: int = -1  # position of the event in the user's sequence (-1: trimmed from it, or scoped)


def signals(state: UserState, now: float, cfg: RankingConfig, passed: Sequence[Passed] = ()) -> list[Signal]:
    """The user's feedback facts, newest first, at most ``cfg.max_signals``, then the newest
    ``cfg.max_passed`` items passed over (``passed``) that the user gave no feedback on.

    ``decay`` combines the time decay and, for item feedback, the recency in the sequence.
    """
    # The latest event of each kind per item: its type and id (for explanations) and position.
    seq = state.sequence
    n = len(seq)
    latest: dict[tuple[str, str], tuple[str, str | None, int]] = {}  # (kind, item) -> (type, id, pos)
    for pos, (item_id, etype, _, _, _, event_id) in enumerate(seq):  # oldest -> newest
        if item_id is None:
            continue
        kind = KIND_OF.get(etype)
        if kind is not None:
            latest[(kind, item_id)] = (etype, event_id, pos)

    def newer(pos: int) -> int:  # events after position ``pos`` (an event trimmed from the sequence: all of them)
        return n - 1 - pos if pos >= 0 else n

    out: list[Signal] = []
    for item, t in state.liked.items():
        etype, eid, pos = latest.get((Feedback.LIKE, item), (Feedback.LIKE.value, None, -1))
        out.append(Signal(Feedback.LIKE, "item", item, t, cfg.decay(now - t) * cfg.recency(newer(pos)), etype, eid, pos))
    for (kind, item), (etype, eid, pos) in latest.items():
        if kind != Feedback.CLICK or item in state.liked:
            continue
        later_negative = max(latest.get((k, item), ("", None, -1))[2] for k in NEGATIVE_KINDS)
        if later_negative > pos:  # clicked, then skipped or disliked: the negative stands
            continue
        t = seq[pos][TIMESTAMP]
        out.append(Signal(Feedback.CLICK, "item", item, t, cfg.decay(now - t) * cfg.recency(newer(pos)), etype, eid, pos))
    for kind, table in ((Feedback.DISLIKE, state.disliked), (Feedback.SKIP, state.skipped)):
        for (scope, target), t in table.items():
            if scope == "item":
                _, eid, pos = latest.get((kind, target), (kind, None, -1))
                w = cfg.decay(now - t) * cfg.recency(newer(pos))
            else:
                eid, w, pos = None, cfg.decay(now - t), -1
            out.append(Signal(kind, scope, target, t, w, kind.value, eid, pos))
    out.sort(key=lambda s: -s.timestamp)
    out = out[: cfg.max_signals]
    if passed and cfg.max_passed > 0 and (cfg.passed_item > 0 or cfg.passed_mass > 0):
        told = {item for _, item in latest} | set(state.liked)
        times = [inter[TIMESTAMP] for inter in seq]
        recent: list[Signal] = []
        for item_id, timestamp, _ in reversed(passed):  # newest first
            if item_id in told:
                continue  # the user said something about the item itself
            told.add(item_id)
            w = cfg.decay(now - timestamp) * cfg.recency(n - bisect_right(times, timestamp))
            recent.append(Signal("passed", "item", item_id, timestamp, w, "passed"))
            if len(recent) >= cfg.max_passed:
                break
        out += recent
    return out


def negative_streak(state: UserState | None, types: Mapping[str, TypeSpec]) -> int:
    """How many of the user's newest events in a row are negative feedback (skip, dislike, block)."""
    if state is None:
        return 0
    n = 0
    for inter in reversed(state.sequence):
        if _polarity(inter, types) != "negative":
            break
        n += 1
    return n


@dataclass(frozen=True)
class Stale:
    """What a run of negatives says is out of date: positive feedback before sequence position
    ``before`` on items of ``categories`` (the categories the run's negatives kept hitting)."""

    before: int
    categories: frozenset[str]


def stale_after_streak(app: str, state: UserState | None, types: Mapping[str, TypeSpec], cfg: RankingConfig,
                       item_of: Callable[[str, str], Item | None]) -> Stale | None:
    """The user's newest run of ``streak_negatives`` or more negatives in a row, and what it
    makes stale: the categories two or more of its items share (one, for a run of one).

    A user who loved a genre and then skipped three of its items in a row has told the service
    the taste moved; :func:`summarise` then counts their older likes and clicks in that genre
    ``streak_forget`` as much, also after the run ends (a click elsewhere does not make the old
    likes true again). ``None`` when the sequence holds no such run.
    """
    if state is None or cfg.streak_negatives <= 0:
        return None
    seq = list(state.sequence)
    end = len(seq)
    while end > 0:
        while end > 0 and _polarity(seq[end - 1], types) != "negative":
            end -= 1
        begin = end
        while begin > 0 and _polarity(seq[begin - 1], types) == "negative":
            begin -= 1
        if end - begin >= cfg.streak_negatives:
            hits: dict[str, int] = {}
            for inter in seq[begin:end]:
                item = item_of(app, inter[ITEM]) if inter[ITEM] is not None else None
                for c in item.categories if item is not None else ():
                    hits[c] = hits.get(c, 0) + 1
            need = min(2, end - begin)
            return Stale(begin, frozenset(c for c, k in hits.items() if k >= need))
        end = begin
    return None


def _polarity(inter: Interaction, types: Mapping[str, TypeSpec]) -> str | None:
    spec = types.get(inter[TYPE])
    return spec.polarity if spec is not None else None


@dataclass
class Summary:
    """A user's feedback for one request: the signals, and the item feedback netted per category."""

    sigs: list[Signal]
    positive: dict[str, float]  # category -> positive mass (likes, clicks)
    negative: dict[str, float]  # category -> negative mass (skips, dislikes)
    demoted: dict[str, float]  # category -> demotion (> 0)
    boosted: dict[str, float]  # category -> boost (> 0)
    stale: Stale | None = None
    against: frozenset[str] = frozenset()  # categories demoted, or of a disliked item, or disliked as such

    def turned_against(self, categories: tuple[str, ...] | list[str]) -> bool:
        """Whether the user's feedback argues against any of ``categories`` (exploration skips them)."""
        return not self.against.isdisjoint(categories)


def summarise(app: str, state: UserState | None, now: float, cfg: RankingConfig,
              item_of: Callable[[str, str], Item | None], stale: Stale | None = None,
              passed: Sequence[Passed] = ()) -> Summary:
    """Signals and per-category feedback of ``state`` (empty for an unknown user).

    With ``stale`` (from :func:`stale_after_streak`), positive item feedback older than the run of
    negatives on items of its categories counts ``cfg.streak_forget`` as much: the user who loved a
    genre and then skipped it three times in a row no longer gets it back on the strength of old likes.
    ``passed``: the items the user read past (:class:`~liverec.ranking.examined.Examined`).
    """
    if state is None:
        return Summary([], {}, {}, {}, {}, stale)
    sigs = signals(state, now, cfg, passed)
    if stale is not None and cfg.streak_forget < 1.0 and stale.categories:
        forgotten = []
        for sig in sigs:
            if sig.type in POSITIVE_KINDS and sig.scope == "item" and sig.pos < stale.before:
                item = item_of(app, sig.target)
                if item is not None and stale.categories.intersection(item.categories):
                    sig = replace(sig, decay=sig.decay * cfg.streak_forget)
            forgotten.append(sig)
        sigs = forgotten
    net: dict[str, float] = {}
    positive: dict[str, float] = {}
    negative: dict[str, float] = {}
    negatives: dict[str, int] = {}
    disliked: set[str] = {sig.target for sig in sigs if sig.type == Feedback.DISLIKE and sig.scope == "category"}
    masses = {Feedback.LIKE: cfg.like_mass, Feedback.CLICK: cfg.click_mass, Feedback.DISLIKE: -cfg.dislike_mass,
              Feedback.SKIP: -cfg.skip_mass, "passed": -cfg.passed_mass}
    for sig in sigs:
        if sig.scope != "item":
            continue
        item = item_of(app, sig.target)
        if item is None:
            continue
        mass = masses[sig.type] * sig.decay
        side = positive if mass > 0 else negative
        for c in item.categories:
            if sig.type != "passed":  # reading past an item is evidence for exploration, not a verdict
                net[c] = net.get(c, 0.0) + mass
            side[c] = side.get(c, 0.0) + abs(mass)
            if sig.type in NEGATIVE_KINDS:
                negatives[c] = negatives.get(c, 0) + 1
            if sig.type == Feedback.DISLIKE:
                disliked.add(c)
    demoted = {
        c: cfg.category_demote * min(1.0, -net[c] / (cfg.category_repeat * cfg.skip_mass))
        for c, k in negatives.items() if k >= cfg.category_repeat and net[c] < 0
    }
    boosted = {
        c: cfg.category_boost * min(1.0, v / (cfg.category_repeat * cfg.like_mass))
        for c, v in net.items() if v > 0 and cfg.category_boost > 0
    }
    return Summary(sigs, positive, negative, demoted, boosted, stale, frozenset(disliked | set(demoted)))


def recent_positives(state: UserState, k: int) -> list[tuple[str, float]]:
    """The ``k`` newest (item, time) the user liked or clicked (and did not skip or dislike since)."""
    out: dict[str, float] = dict(state.liked)
    negative: set[str] = set()
    for item_id, kind, _, timestamp, _, _ in reversed(state.sequence):  # newest first
        if item_id is None or item_id in out or item_id in negative:
            continue
        if kind in CLICKS:
            out[item_id] = timestamp
        elif kind in NEGATIVE_FEEDBACK:
            negative.add(item_id)
        if len(out) >= k + len(state.liked):
            break
    return sorted(out.items(), key=lambda kv: -kv[1])[:k]


@dataclass(frozen=True)
class ScopedEffect:
    """One effect that applies to every candidate of a scope at once: a scoped signal (a disliked
    category or creator) or the net category feedback. ``delta[k]`` moved candidate ``k``;
    ``targets`` (per candidate, with ``names``) says which category did, where that varies."""

    info: dict
    delta: np.ndarray  # (K,) float64
    targets: np.ndarray | None = None  # (K,) int: index into ``names`` of the category that applied
    names: Sequence[str] = ()


@dataclass
class Adjustments:
    """Per-candidate adjustments and what made them, for the pool ``item_ids``.

    The item-scoped signals' effects are one row each of ``effects`` (S, K), described by
    ``effect_info``; the scoped ones one :class:`ScopedEffect` each. A candidate's list of what
    applied (``parts``) is only put together for the candidates a response explains."""

    item_ids: list[str]
    total: np.ndarray  # (K,) float64 sum of all effects
    effects: np.ndarray | None = None  # (S, K) float64: item-scoped signal s moved candidate k by effects[s, k]
    effect_info: list[dict] = field(default_factory=list)  # (S,) what each effects row is
    scoped: list[ScopedEffect] = field(default_factory=list)  # scoped signals, then category demotion and boost

    def parts_of(self, k: int) -> list[dict]:
        """Every effect on candidate ``k``: item signals in signal order, then the scoped ones."""
        out = []
        if self.effects is not None:
            col = self.effects[:, k]
            out = [{**self.effect_info[j], "delta": float(col[j])} for j in np.flatnonzero(col).tolist()]
        for effect in self.scoped:
            d = float(effect.delta[k])
            if d != 0.0:
                part = {**effect.info, "delta": d}
                if effect.targets is not None:
                    part["target"] = effect.names[int(effect.targets[k])]
                out.append(part)
        return out

    @property
    def parts(self) -> list[list[dict]]:
        return [self.parts_of(k) for k in range(len(self.item_ids))]

    def explain(self, k: int, min_abs: float = 0.01, limit: int = 4) -> list[dict]:
        """The largest effects on candidate ``k`` (|delta| >= ``min_abs``), biggest first."""
        parts = [p for p in self.parts_of(k) if abs(p["delta"]) >= min_abs]
        parts.sort(key=lambda p: -abs(p["delta"]))
        return [{**p, "delta": round(p["delta"], 4)} for p in parts[:limit]]


def membership(app: str, item_ids: Sequence[str], item_of: Callable[[str, str], Item | None],
               categories: CategoryMatrix | None = None, rows: np.ndarray | None = None) -> tuple[np.ndarray, list[str], Mapping[str, int]]:
    """(K, G) category membership of ``item_ids``, the category names and their columns: the
    app's :class:`~liverec.catalog.CategoryMatrix` when given (``rows``: its rows of ``item_ids``,
    when the caller has them already), else one of the items themselves."""
    if categories is None:
        categories = CategoryMatrix.of_items([item for item in (item_of(app, i) for i in item_ids) if item is not None])
    return categories.of(item_ids) if rows is None else rows, categories.names, categories.col


def adjust(
    app: str,
    state: UserState | None,
    item_ids: list[str],
    now: float,
    cfg: RankingConfig,
    space: ItemSpace,
    item_of: Callable[[str, str], Item | None],
    summary: Summary | None = None,
    categories: CategoryMatrix | None = None,
    member: np.ndarray | None = None,
) -> Adjustments:
    """Compute the feedback adjustments of the candidates ``item_ids`` for this user
    (``summary``: :func:`summarise` of the same user, when the caller has it already;
    ``categories``: the app's category membership, else read off the items; ``member``: its
    (K, G) rows of ``item_ids``, when the caller has them already)."""
    k = len(item_ids)
    out = Adjustments(item_ids, np.zeros(k, dtype=np.float64))
    if state is None or k == 0:
        return out
    if summary is None:
        summary = summarise(app, state, now, cfg, item_of)
    sigs = summary.sigs
    if not sigs:
        return out
    total = out.total

    # ---- item-scoped signals: the item itself and its neighbours ------------------------------
    item_sigs = [s for s in sigs if s.scope == "item"]
    if item_sigs:
        pos = {item: r for r, item in enumerate(item_ids)}
        sims = space.similarity(app, item_ids, [s.target for s in item_sigs])  # (K, S)
        lo = cfg.min_similarity
        near = np.clip((sims - lo) / max(1.0 - lo, 1e-6), 0.0, 1.0).T.astype(np.float64)  # (S, K) neighbour strength
        effects = np.zeros_like(near)
        for j, s in enumerate(item_sigs):
            own = pos.get(s.target)
            col = near[j]
            if own is not None:
                col[own] = 0.0
            if s.type == Feedback.LIKE:
                w, self_w, name = cfg.like_boost, 0.0, "like_boost"
            elif s.type == Feedback.CLICK:
                w, self_w, name = cfg.click_boost, 0.0, "click_boost"
            elif s.type == Feedback.DISLIKE:
                w, self_w, name = -cfg.dislike_neighbour, -cfg.dislike_item, "dislike_demote"
            elif s.type == "passed":
                w, self_w, name = 0.0, -cfg.passed_item, "passed_over"
            else:
                w, self_w, name = -cfg.skip_neighbour, -cfg.skip_item, "skip_demote"
            info = {"kind": "policy", "adjustment": name, "item_id": s.target, "type": s.event_type}
            if s.event_id:
                info["event_id"] = s.event_id
            if w != 0.0:
                effects[j] = (w * s.decay) * col
            if own is not None:
                effects[j, own] = self_w * s.decay
            out.effect_info.append(info)
        out.effects = effects
        total += effects.sum(axis=0)

    # ---- scoped signals, and the net item feedback per category -----------------------------
    scoped = [s for s in sigs if s.scope != "item"]
    demoted, boosted = summary.demoted, summary.boosted
    if not (scoped or demoted or boosted):
        return out
    member, names, col_of = membership(app, item_ids, item_of, categories, member)  # (K, G)
    values: list[dict[str, set[str]]] | None = None  # other scopes than category: read off the items
    for s in scoped:
        w = cfg.scoped_dislike if s.type == Feedback.DISLIKE else cfg.scoped_skip
        if s.scope == "category":
            c = col_of.get(s.target)
            hit = member[:, c] if c is not None else np.zeros(k, dtype=bool)
        else:
            if values is None:
                values = [item.attribute_values() if item is not None else {} for item in (item_of(app, i) for i in item_ids)]
            hit = np.array([s.target in v.get(s.scope, ()) for v in values], dtype=bool)
        if hit.any():
            delta = np.where(hit, -w * s.decay, 0.0)
            total += delta
            out.scoped.append(ScopedEffect({"kind": "policy", "adjustment": f"{s.type}_{s.scope}", "scope": s.scope,
                                            "target": s.target, "type": s.event_type}, delta))
    # a candidate in several demoted (boosted) categories takes the strongest one
    for by_category, sign, name, what in ((demoted, -1.0, "category_demote", "skip/dislike"),
                                          (boosted, 1.0, "category_boost", "like/click")):
        if not by_category:
            continue
        strength = np.array([by_category.get(c, 0.0) for c in names])  # (G,)
        weighted = member * strength  # (K, G)
        best = weighted.argmax(axis=1) if len(names) else np.zeros(k, dtype=np.int64)  # (K,)
        delta = sign * (weighted.max(axis=1) if len(names) else np.zeros(k))
        if delta.any():
            total += delta
            out.scoped.append(ScopedEffect({"kind": "policy", "adjustment": name, "scope": "category", "type": what},
                                           delta, best, names))
    return out
