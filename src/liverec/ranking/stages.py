"""The ranking stages after the model, in order, for one request.

    scored candidates
      -> hard filters (blocks of any scope, consumed, exclude, category)   [pipeline.Policy]
      -> pool: the best ``pool`` allowed candidates + neighbours of recent likes + the best
         ``category_candidates`` of each category with net positive recent feedback + (when
         exploring categories) the best candidate of every category the pool lacks
         (``streak_pool`` candidates and MMR over the best 100 of them and one candidate per
         category while the user's newest events are a run of ``streak_negatives`` negatives:
         the taste has moved, show something different; older positives on the categories
         such a run kept hitting count ``streak_forget`` as much from then on)
      -> feedback policy (demote / boost with time decay; items the user  [feedback.adjust]
         read past on their last slate count as weak negatives)          [examined.Examined]
      -> diversity (MMR, per-request ``diversity``)                       [diversity.mmr]
      -> exploration (Thompson sampling on ``explore_slots``; the first   [bandit.ThompsonBandit]
         slot over the user's categories, at the top of the slate on a streak; [contextual.LinearThompson]
         the item slots per item posteriors, or with ``explore_policy =
         "contextual"`` a linear Thompson policy over user x candidate features)
      -> hard filters again on the final slate (blocks are the last word)
      -> explanations (``because``) and impressions with propensities

Every candidate any stage can place comes from the allowed pool, and the final slate is checked
once more, so no boost, neighbour expansion or exploration can bring back a blocked item.

What the stages learn from traffic (bandit posteriors, the contextual policy's reward regression,
impressions waiting for feedback, each user's last slates) is a fold of the impression log and the event log: every impression records
the event log position it was shown at, and events and impressions enter the folds under one lock
(:meth:`RankingStages.observe`, the request's own impressions, :meth:`RankingStages.adopt` for
other workers'), so that position is exact. :mod:`liverec.ranking.replicas` rebuilds the folds at
start and adopts the impressions other workers log.
"""

from __future__ import annotations

import threading
import time
import uuid
from dataclasses import dataclass, replace
from typing import Callable, Mapping, Sequence

import numpy as np

from ..catalog import CategoryMatrix
from ..events import DEFAULT_TYPES, TypeSpec
from ..recommend.pipeline import Recommendation, RecommendRequest
from ..recommend.scoring import Scored
from ..state import UserState
from ..store.base import Item
from .bandit import RewardTracker, ThompsonBandit
from .config import RankingConfig, RankingSettings
from .contextual import N_FEATURES, LinearThompson, quantise
from .diversity import mmr
from .examined import Examined
from .feedback import Adjustments, Summary, adjust, negative_streak, recent_positives, stale_after_streak, summarise
from .impressions import Impression, ImpressionLog, Shown
from .vectors import ItemSpace


@dataclass
class RankStats:
    """Counters of the ranking stage (for benchmarks and /metrics)."""

    requests: int = 0
    explored: int = 0
    late_filtered: int = 0  # items dropped by the final hard-filter check (must stay 0)


def explain_history(
    app: str,
    state: UserState | None,
    slate: list[str],
    space: ItemSpace,
    types: Mapping[str, TypeSpec],
    limit: int,
    recent: int = 50,
) -> list[list[dict]]:
    """Per slate item, the user's own positive events that most support it.

    Support of history event ``h`` for item ``i`` = ``sim(i, item_h) x weight(type_h) x 0.95**k``
    (``k`` = how many positive events back); events with support below 0.05 are left out.
    """
    out: list[list[dict]] = [[] for _ in slate]
    if state is None or not slate:
        return out
    hist: list[tuple[str, str, str | None, float]] = []  # (item, type, event_id, weight)
    seen: set[str] = set()
    for item_id, kind, value, _, _, event_id in reversed(state.sequence):
        spec = types.get(kind)
        if item_id is None or spec is None or spec.polarity != "positive" or item_id in seen:
            continue
        seen.add(item_id)
        w = max(spec.weight, 1.0) / 5.0 * (0.95 ** len(hist))
        if spec.rated and value is not None:
            w *= value / 5.0
        hist.append((item_id, kind, event_id, w))
        if len(hist) >= recent:
            break
    if not hist:
        return out
    sims = space.similarity(app, slate, [h[0] for h in hist])  # (n, H)
    support = np.clip(sims, 0.0, 1.0) * np.array([h[3] for h in hist])[None, :]  # (n, H)
    for r in range(len(slate)):
        top = np.argsort(-support[r], kind="stable")[:limit]
        for h in top.tolist():
            if support[r, h] < 0.05:
                break
            item, etype, eid, _ = hist[h]
            entry = {"kind": "event", "item_id": item, "type": etype, "weight": round(float(support[r, h]), 4)}
            if eid:
                entry["event_id"] = eid
            out[r].append(entry)
    return out


def top_order(scores: np.ndarray, k: int) -> np.ndarray:
    """The first ``k`` of ``np.argsort(-scores, kind="stable")`` without sorting every score:
    everything at or above the k-th best value, in score order, ties in candidate order.

    >>> top_order(np.array([0.1, 0.9, 0.5, 0.9, 0.2]), 3).tolist()
    [1, 3, 2]
    """
    n = len(scores)
    if k >= n:
        return np.argsort(-scores, kind="stable")
    kth = np.partition(scores, n - k)[n - k]  # the k-th best value
    cand = np.flatnonzero(scores >= kth)  # ascending index: ties stay in candidate order
    return cand[np.argsort(-scores[cand], kind="stable")][:k]


def best_first(scores: np.ndarray, among: np.ndarray | None, k: int, take: Callable[[int], bool]) -> int:
    """Offer the candidates ``among`` (positions into ``scores``; ``None``: all) to ``take`` best
    score first (ties in position order) until it accepted ``k``; returns how many it accepted.
    A top-k selection, not a sort of every score, unless ``take`` refuses most of it: then the
    next, wider selection continues where the last one ended."""
    sub = scores if among is None else scores[among]
    accepted = seen = 0
    width = min(len(sub), 2 * k + 32)
    while accepted < k and seen < len(sub):
        order = top_order(sub, width)
        for j in order[seen:].tolist():
            if take(j if among is None else int(among[j])):
                accepted += 1
                if accepted >= k:
                    break
        seen, width = len(order), min(len(sub), 4 * width)
    return accepted


Slot = tuple[int, float, "dict | None"]  # (pool index, propensity, exploration info or None)
Featurise = Callable[[list[int], "int | np.ndarray"], np.ndarray]  # (pool indices, slate position(s)) -> (K, F) int features


@dataclass(frozen=True)
class RankContext:
    """What the stages of one request share."""

    request: RecommendRequest
    state: UserState | None
    cfg: RankingConfig
    now: float  # reference time of feedback decay
    streak: bool  # the newest events are a run of negatives
    summary: Summary  # the user's feedback by category and item
    explore: bool
    explore_categories: bool
    diversity: float


class RankingStages:
    """Feedback policy, diversity, exploration and explanations (one instance per service)."""

    def __init__(
        self,
        settings: RankingSettings,
        space: ItemSpace,
        items: Callable[[str, str], Item | None],
        bandit: ThompsonBandit | None = None,
        impressions: ImpressionLog | None = None,
        types: Mapping[str, TypeSpec] | None = None,
        clock: Callable[[], float] = time.time,
        categories: Callable[[str], CategoryMatrix] | None = None,
        contextual: LinearThompson | None = None,
    ) -> None:
        self.settings = settings
        self.space = space
        self.items = items
        self.bandit = bandit or ThompsonBandit(0)
        self.contextual = contextual or LinearThompson(0)
        self.impressions = impressions
        self.types = dict(types or DEFAULT_TYPES)
        self.clock = clock
        self.categories = categories
        self.rewards = RewardTracker(self.bandit, settings.default.reward_window_s, self.types, contextual=self.contextual)
        self.examined = Examined(reactions=self.types)
        self.stats = RankStats()
        self._lock = threading.Lock()
        self.origin = uuid.uuid4().hex  # tags this process's impressions, which it folds when it shows them
        self.position = 0  # the last event log position folded into rewards and readings
        self._fold = threading.Lock()  # events and impressions enter the folds one at a time
        self._reads: dict[str, bool] = {}

    def config(self, request: RecommendRequest) -> RankingConfig:
        """The request's ranking config: an experiment variant's, else the app's."""
        return request.config if request.config is not None else self.settings.for_app(request.app)

    def candidates_wanted(self, request: RecommendRequest, state: UserState | None = None) -> int:
        """The pool size of the request's app (the pipeline adds it to what it asks the scorer)."""
        cfg = self.config(request)
        return cfg.streak_pool if self._on_streak(state, cfg) else cfg.pool

    def _on_streak(self, state: UserState | None, cfg: RankingConfig) -> bool:
        return cfg.streak_negatives > 0 and negative_streak(state, self.types) >= cfg.streak_negatives

    def reads_slates(self, app: str) -> bool:
        """Whether ``app`` reads its slates top-down (items read past count as weak negatives)."""
        reads = self._reads.get(app)
        if reads is None:
            cfg = self.settings.for_app(app)
            reads = self._reads[app] = cfg.passed_item > 0 or cfg.passed_mass > 0
        return reads

    def observe(self, events: Sequence, seqs: Sequence[int] | None = None) -> None:
        """Service listener: committed events, in log order with their log positions (``None``:
        numbered on from the last one), close pending impressions with their reward and say which
        items of the user's last slate they read past."""
        with self._fold:
            if seqs is None:
                seqs = range(self.position + 1, self.position + 1 + len(events))
            if not len(seqs):
                return
            self.rewards.observe(events, seqs)
            read = [k for k, e in enumerate(events) if self.reads_slates(e.app)]
            if len(read) == len(events):
                self.examined.observe(events, seqs)
            elif read:
                self.examined.observe([events[k] for k in read], [seqs[k] for k in read])
            self.position = max(self.position, seqs[-1])

    def adopt(self, impressions: Sequence[Shown]) -> None:
        """Impressions another process showed, read from the impression log in log order (their
        ``event_seq`` at most the position folded here): folded as if shown here at that position."""
        with self._fold:
            start = 0
            for k in range(1, len(impressions) + 1):
                if k < len(impressions) and impressions[k].request_id == impressions[start].request_id:
                    continue
                shown = impressions[start:k]  # one response
                first = shown[0]
                at = self.position if first.event_seq is None else first.event_seq
                if self.reads_slates(first.app):
                    slate = [i.item_id for i in sorted(shown, key=lambda i: i.position)]
                    self.examined.served(first.app, first.user_id, slate, (at, first.timestamp, first.request_id))
                self.rewards.expire(first.timestamp)  # as the process that showed them did
                self.rewards.shown(shown)
                start = k

    def reset(self, position: int = 0) -> None:
        """Forget everything folded (posteriors, pending impressions, readings): nothing up to
        ``position`` of the event log is to be folded again."""
        with self._fold:
            self.bandit.clear()
            self.contextual.clear()
            self.rewards.clear(position)
            self.examined.clear(position)
            self.position = position

    def advance(self, position: int) -> None:
        """Every event up to ``position`` has been folded (read by a rebuild, not observed)."""
        with self._fold:
            self.rewards.advance(position)
            self.examined.advance(position)
            self.position = max(self.position, position)

    # ------------------------------------------------------------------------------ deletion
    def fresh(self) -> RankingStages:
        """Stages with these settings and empty folds that log nothing: what a refold replays
        the logs into before :meth:`install` swaps its folds in."""
        other = RankingStages(self.settings, self.space, self.items, ThompsonBandit(0), None, self.types, self.clock,
                              self.categories, LinearThompson(0))
        other.rewards = self.rewards.empty_like(other.bandit, other.contextual)
        other.examined = self.examined.empty_like()
        other.origin = self.origin
        return other

    def install(self, other: RankingStages) -> None:
        """Take the folds of ``other`` (a :meth:`fresh` one, replayed up to this one's position):
        posteriors, pending impressions, slates. The caller holds ``_fold``."""
        self.bandit.adopt(other.bandit)
        self.contextual.adopt(other.contextual)
        other.rewards.bandit = self.bandit
        other.rewards.contextual = self.contextual
        self.rewards = other.rewards
        self.examined = other.examined
        self.position = other.position

    def forget_user(self, app: str, matches: Callable[[str], bool]) -> dict[str, int]:
        """Drop a deleted user's pending impressions, last slates and recent reactions from the
        folds; their share of the posteriors is taken out by a refold."""
        with self._fold:
            return {"pending_impressions": self.rewards.forget(app, matches),
                    "last_slates": self.examined.forget(app, matches)}

    def users(self, app: str) -> set[str]:
        """The users of ``app`` the folds hold something of (pending impressions, slates)."""
        with self._fold:
            return self.rewards.users(app) | self.examined.users(app)

    def user_view(self, app: str, user_id: str) -> dict[str, list]:
        """What the folds hold of one user: impressions waiting for feedback, last slates."""
        with self._fold:
            pending = [{"item_id": item, "shown_at": ts, "impression_id": imp} for item, ts, imp in self.rewards.waiting(app, user_id)]
            return {"pending_rewards": pending, "last_slates": self.examined.slates(app, user_id)}

    # ------------------------------------------------------------------------------ pool
    def _pool(self, request: RecommendRequest, state: UserState | None, scored: Scored, allow: Callable[[str], bool], cfg: RankingConfig, now: float,
              pool: int, summary: Summary, every_category: bool) -> tuple[list[str], np.ndarray]:
        """The best ``pool`` allowed candidates, plus allowed neighbours of recent likes, plus the
        best candidates of the categories the user has recently been positive about (and, with
        ``every_category``, the best candidate of each category the pool does not have yet)."""
        want = max(pool, request.n)
        ids: list[str] = []
        scores: list[float] = []
        taken: set[str] = set()

        def take(j: int) -> bool:  # candidate ``j`` joins the pool if allowed and not in it yet
            item_id = str(scored.item_ids[j])
            if item_id in taken or not allow(item_id):
                return False
            ids.append(item_id)
            scores.append(float(scored.scores[j]))
            taken.add(item_id)
            return True

        best_first(scored.scores, None, want, take)
        if state is not None and cfg.neighbour_candidates > 0 and ids:
            floor = min(scores)
            recent = recent_positives(state, 5)
            added: list[str] = []
            for liked, t in recent:
                if cfg.decay(now - t) < 0.05:
                    continue
                for other, _ in self.space.neighbours(request.app, liked, cfg.neighbour_candidates, cfg.min_similarity):
                    if other in taken or not allow(other):
                        continue
                    added.append(other)
                    taken.add(other)
            if added:
                ids.extend(added)
                scores.extend(scored.scores_of(added, floor).tolist())
        liked_cats = sorted(summary.boosted, key=lambda c: -summary.boosted[c])[:3] if cfg.category_candidates > 0 else []
        if (liked_cats or every_category) and self.categories is not None and ids:
            cm = self.categories(request.app)
            table, index = scored.base()
            member = cm.of_table(table, index) if index is not None else None  # (S, G) in candidate order
            wanted = [(cm.col[c], cfg.category_candidates) for c in liked_cats if c in cm.col]
            if every_category:  # categories the user has not turned against
                have = cm.of(ids).any(axis=0)  # (G,)
                wanted += [(g, 1) for g in np.flatnonzero(~have).tolist() if cm.names[g] not in summary.against]
            for g, k in wanted:
                # every item scored: the category's positions in the table are its candidates
                in_g = cm.in_table(table, g) if member is None else np.flatnonzero(member[:, g])
                best_first(scored.scores, in_g, k, take)
        return ids, np.asarray(scores, dtype=np.float64)

    def _against(self, app: str, item_id: str, summary: Summary) -> bool:
        item = self.items(app, item_id)
        return item is not None and summary.turned_against(item.categories)

    def _streak_head(self, app: str, ids: list[str], order: np.ndarray, adj: np.ndarray, summary: Summary, cfg: RankingConfig,
                     size: int, n: int, cm: CategoryMatrix | None, pool_member: np.ndarray | None) -> np.ndarray:
        """What MMR chooses from on a negative streak: something different, among what the user's
        feedback does not argue against (MMR favours the unlike, and a rejected genre is unlike the
        rest): no category they turned against, nothing pushed down as far as a skipped item. The
        best ``size`` such candidates, plus the best one of every category; the plain ``order``
        head when fewer than ``n`` are left."""
        ok = adj[order] > -cfg.skip_item
        member = None
        if cm is not None and pool_member is not None:
            member = pool_member[order]  # (K, G) in ``order``
            cols = [cm.col[c] for c in summary.against if c in cm.col]
            if cols:
                ok &= ~member[:, cols].any(axis=1)
        else:
            ok &= np.array([not self._against(app, ids[k], summary) for k in order], dtype=bool)
        open_ = order[ok]
        if len(open_) < n:
            return order[:size]
        head = open_[:size]
        if member is not None:
            member = member[ok]  # (K', G) in ``open_``
            firsts = np.unique(member.argmax(axis=0)[member.any(axis=0)])
            head = np.concatenate([head, open_[firsts[firsts >= size]]])
        return head

    def _category_slot(self, ids: list[str], final: np.ndarray, order: list[int], used: np.ndarray, summary: Summary,
                       cfg: RankingConfig, cm: CategoryMatrix | None, pool_member: np.ndarray | None) -> tuple[int, float, dict] | None:
        """Thompson sampling over the categories the user has not turned against (none demoted by
        their feedback, none of an item they disliked): the chosen category's best unused candidate.

        Returns (pool index, propensity, exploration info), or ``None`` when fewer than two
        categories have a candidate. The propensity of the shown item is the probability of every
        category it was the representative of.
        """
        if cm is None or pool_member is None or not cm.names:
            return None
        free = [k for k in order if not used[k]]
        member = pool_member[free]  # (F, G), best first
        has = member.any(axis=0) & np.array([c not in summary.against for c in cm.names])  # not turned against
        if int(has.sum()) < 2:
            return None
        cols = np.flatnonzero(has)
        reps = [free[int(np.argmax(member[:, g]))] for g in cols.tolist()]  # best candidate per category
        names = [cm.names[g] for g in cols.tolist()]
        alpha = cfg.category_prior + np.array([summary.positive.get(c, 0.0) for c in names])
        beta = cfg.category_prior + np.array([summary.negative.get(c, 0.0) for c in names])
        p_cat = self.bandit.argmax_distribution(alpha, beta, cfg)
        c = self.bandit.sample(p_cat)
        items: dict[int, float] = {}
        for k, p in zip(reps, p_cat.tolist()):
            items[k] = items.get(k, 0.0) + p
        pool = list(items)
        chosen = reps[c]
        info = {"pool": [ids[k] for k in pool], "p": [items[k] for k in pool], "s": final[pool].tolist(),
                "policy": "thompson-category", "category": names[c]}
        return chosen, items[chosen], info

    # ------------------------------------------------------------------------------ rank
    def rank(self, request: RecommendRequest, state: UserState | None, scored: Scored, allow: Callable[[str], bool]) -> list[Recommendation]:
        """The slate for ``request`` with ``because``, propensities, and impressions logged."""
        recs, impressions = self.slate(request, state, scored, allow)
        self.log(request, recs, impressions)
        return recs

    def slate(self, request: RecommendRequest, state: UserState | None, scored: Scored,
              allow: Callable[[str], bool]) -> tuple[list[Recommendation], list[Impression]]:
        """The slate and the impressions it would log, logged nowhere (:meth:`log` logs them):
        an interleaving experiment ranks twice and logs the merged slate."""
        ctx = self._context(request, state)
        ids, raw = self._pool(request, state, scored, allow, ctx.cfg, ctx.now, ctx.cfg.streak_pool if ctx.streak else ctx.cfg.pool,
                              ctx.summary, every_category=ctx.explore_categories or ctx.streak)
        if not ids:
            return [], []
        cm = self.categories(request.app) if self.categories is not None else None
        # the pool's (K, G) category membership, looked up once for every stage below
        member = cm.of(ids) if cm is not None else None
        final, adj = self._final_scores(ctx, ids, raw, cm, member)
        order, diversified = self._diversify(ctx, ids, final, adj, cm, member)
        # features only where the learned policy chooses, or is evaluated beside the Thompson slots
        learned = ctx.cfg.explore_policy == "contextual" or ctx.cfg.explore_shadow
        featurise = self._featuriser(ctx, ids, final, adj, order, scored.user, cm, member) if ctx.explore and learned else None
        slate = self._fill_slate(ctx, ids, final, order, featurise, cm, member)
        slate = self._blocks_last(slate, ids, allow)
        return self._explain(ctx, ids, final, adj, slate, diversified, self.position, featurise)

    def log(self, request: RecommendRequest, recs: list[Recommendation], impressions: list[Impression]) -> None:
        """Count the slate, remember it, and log its impressions (see :meth:`slate`)."""
        with self._lock:
            self.stats.requests += 1
            self.stats.explored += sum(1 for r in recs if r.explored)
        if not impressions:
            return
        first = impressions[0]
        with self._fold:
            if first.event_seq != self.position:
                # events were folded while this request ranked: the slate is shown after them
                impressions = [replace(i, event_seq=self.position) for i in impressions]
            if self.reads_slates(request.app):
                self.examined.served(request.app, first.user_id, [r.item_id for r in recs],
                                     (self.position, first.timestamp, first.request_id))
            self.rewards.expire(first.timestamp)
            self.rewards.shown(impressions)
            # queued while the folds are held: whoever holds them (a refold's swap) and flushes
            # the log finds every impression folded so far in it
            if self.impressions is not None:
                self.impressions.append(impressions)

    def _context(self, request: RecommendRequest, state: UserState | None) -> RankContext:
        """What every stage of one request reads: config, reference time, streak, feedback summary."""
        cfg = self.config(request)
        now = request.now if request.now is not None else (state.last_timestamp if state is not None else 0.0)
        stale = stale_after_streak(request.app, state, self.types, cfg, self.items)
        passed = self.examined.passed(request.app, request.user_id) if state is not None else []
        explore = (cfg.explore if request.explore is None else request.explore) and request.user_id is not None
        diversity = cfg.diversity if request.diversity is None else request.diversity
        streak = self._on_streak(state, cfg)
        return RankContext(
            request=request, state=state, cfg=cfg, now=now, streak=streak,
            summary=summarise(request.app, state, now, cfg, self.items, stale, passed), explore=explore,
            explore_categories=explore and cfg.explore_categories and bool(cfg.explore_slots) and self.categories is not None,
            diversity=max(diversity, cfg.streak_diversity) if streak else diversity,
        )

    def _final_scores(self, ctx: RankContext, ids: list[str], raw: np.ndarray, cm: CategoryMatrix | None,
                      member: np.ndarray | None) -> tuple[np.ndarray, Adjustments]:
        """(K,) model relevance scaled to [0, 1] plus the feedback policy's adjustments
        (``cm``: the app's category membership, ``member``: the pool's rows of it)."""
        span = raw.max() - raw.min()
        rel = (raw - raw.min()) / span if span > 0 else np.ones(len(raw))  # (K,) in [0, 1]
        adj = adjust(ctx.request.app, ctx.state, ids, ctx.now, ctx.cfg, self.space, self.items, ctx.summary, cm, member)
        return rel + adj.total, adj  # (K,)

    def _diversify(self, ctx: RankContext, ids: list[str], final: np.ndarray, adj: Adjustments, cm: CategoryMatrix | None,
                   member: np.ndarray | None) -> tuple[np.ndarray, set[int]]:
        """The pool in slate order (MMR over its head when diversity is on) and the pool indices
        that diversity placed (on a streak: the whole slate it chose)."""
        order = np.argsort(-final, kind="stable")
        n = min(ctx.request.n, len(ids))
        if not (ctx.diversity > 0 and n > 1):
            return order, set()
        app = ctx.request.app
        # on a streak, MMR reaches deeper (the wider pool, demotions applied, is re-sorted)
        head = order[: min(len(order), max(10 * n, 100) if ctx.streak else max(4 * n, n + 10))]
        relevance_top = set(order[:n].tolist())  # the slate without diversity (what it changes is marked)
        if ctx.streak:
            head = self._streak_head(app, ids, order, adj.total, ctx.summary, ctx.cfg, len(head), n, cm, member)
        table = self.space.table(app)
        head_ids = [ids[k] for k in head]
        sim = self.space.similarity(app, head_ids, head_ids, table)  # (M, M)
        chosen = [int(head[p]) for p in mmr(final[head], sim, n, ctx.diversity)]
        diversified = set(chosen) if ctx.streak else {k for k in chosen if k not in relevance_top}
        picked = set(chosen)
        rest = [int(k) for k in order if int(k) not in picked]
        return np.asarray(chosen + rest, dtype=np.int64), diversified

    def _featuriser(self, ctx: RankContext, ids: list[str], final: np.ndarray, adj: Adjustments, order: np.ndarray,
                    user: np.ndarray | None, cm: CategoryMatrix | None, pool_member: np.ndarray | None) -> Featurise:
        """The contextual policy's features (:data:`liverec.ranking.contextual.FEATURES`) of pool
        candidates at a slate position, as the integers they are logged as."""
        app, cfg, summary = ctx.request.app, ctx.cfg, ctx.summary
        rel = final - adj.total  # (K,) model score min-max scaled over the pool
        rank_of = np.empty(len(order), dtype=np.float64)
        rank_of[order] = np.arange(len(order))
        table = self.space.table(app) if user is not None else None
        if table is not None and (table.source != "model" or table.matrix.shape[1] != len(user)):
            table = None  # the cosine needs the model's own item vectors
        unit_user = user / max(float(np.linalg.norm(user)), 1e-12) if table is not None else None  # (D,)
        if cm is not None and cm.names and pool_member is not None:  # the user's feedback per category, over the app's categories
            pos_g = np.tanh(np.array([summary.positive.get(c, 0.0) for c in cm.names]) / 2.0)  # (G,)
            neg_g = np.tanh(np.array([summary.negative.get(c, 0.0) for c in cm.names]) / 2.0)  # (G,)
            against_g = np.array([c in summary.against for c in cm.names], dtype=np.float64)  # (G,)
        else:
            cm = None

        def featurise(ks: list[int], position: int | np.ndarray) -> np.ndarray:
            x = np.zeros((len(ks), N_FEATURES))  # (K', F)
            x[:, 0] = 1.0
            x[:, 1] = rel[ks]
            x[:, 2] = adj.total[ks]
            x[:, 3] = np.minimum(rank_of[ks], cfg.explore_pool) / cfg.explore_pool
            if cm is not None:
                member = pool_member[ks].astype(np.float64)  # (K', G)
                n_cats = np.maximum(member.sum(axis=1), 1.0)
                x[:, 4] = member @ pos_g / n_cats
                x[:, 5] = member @ neg_g / n_cats
                x[:, 6] = (member @ against_g) > 0
            for j, k in enumerate(ks):
                if cm is None:
                    item = self.items(app, ids[k])
                    cats = item.categories if item is not None else ()
                    if cats:
                        x[j, 4] = float(np.mean([np.tanh(summary.positive.get(c, 0.0) / 2.0) for c in cats]))
                        x[j, 5] = float(np.mean([np.tanh(summary.negative.get(c, 0.0) / 2.0) for c in cats]))
                        x[j, 6] = float(summary.turned_against(cats))
                succ, fail = self.bandit.stats(app, ids[k])
                x[j, 7] = 2.0 * (succ + 1.0) / (succ + fail + 2.0) - 1.0
            x[:, 8] = np.asarray(position, dtype=np.float64) / 10.0
            if table is not None:
                at, rows = table.rows([ids[k] for k in ks])
                x[at, 9] = table.matrix[rows] @ unit_user  # (K',) cosine: the table's rows are unit vectors
            return quantise(x)

        return featurise

    def _explore_item(self, ctx: RankContext, ids: list[str], final: np.ndarray, remaining: list[int], position: int,
                      featurise: Featurise | None) -> tuple[int, float, dict]:
        """One item exploration slot over the ``remaining`` candidates, by the app's
        ``explore_policy``: (chosen pool index, its propensity, exploration info)."""
        cfg, app = ctx.cfg, ctx.request.app
        pool_ids = [ids[k] for k in remaining]
        feats = featurise(remaining, position) if featurise is not None else None  # (P, F)
        contextual = cfg.explore_policy == "contextual" and feats is not None
        shadow = None
        if contextual:
            dist = self.contextual.distribution(app, feats, cfg.contextual_ridge, cfg.contextual_noise, cfg.explore_draws,
                                                cfg.explore_epsilon)
            choice = self.contextual.sample(dist)
            if cfg.explore_shadow:
                shadow = self.bandit.distribution(app, pool_ids, final[remaining], cfg)
        else:
            choice, dist = self.bandit.choose(app, pool_ids, final[remaining], cfg)
            if cfg.explore_shadow and feats is not None:
                shadow = self.contextual.distribution(app, feats, cfg.contextual_ridge, cfg.contextual_noise, cfg.explore_draws,
                                                      cfg.explore_epsilon)
        info = {"pool": pool_ids, "p": dist.tolist(), "s": final[remaining].tolist(),
                "policy": "contextual" if contextual else "thompson"}
        if feats is not None:
            info["features"] = feats.tolist()
        if shadow is not None:
            info["shadow"] = shadow.tolist()
        return remaining[choice], float(dist[choice]), info

    def _fill_slate(self, ctx: RankContext, ids: list[str], final: np.ndarray, order: np.ndarray,
                    featurise: Featurise | None, cm: CategoryMatrix | None,
                    member: np.ndarray | None) -> list[Slot]:
        """The slate's (pool index, propensity, exploration info) in order: the ranked order,
        with the configured positions filled by exploration (Thompson over categories, then the
        app's item policy)."""
        cfg = ctx.cfg
        n = min(ctx.request.n, len(ids))
        slots = set(p for p in cfg.explore_slots if p < n) if ctx.explore else set()
        category_slot = None
        if ctx.explore_categories and slots:
            category_slot = 0 if ctx.streak else min(slots)
            slots.discard(min(slots))
        used = np.zeros(len(ids), dtype=bool)
        queue = [int(k) for k in order]
        slate: list[Slot] = []
        qpos = 0
        for p in range(n):
            if p == category_slot:
                picked = self._category_slot(ids, final, queue, used, ctx.summary, cfg, cm, member)
                if picked is not None:
                    used[picked[0]] = True
                    slate.append(picked)
                    continue
            if p in slots:
                remaining = [k for k in queue if not used[k]][: cfg.explore_pool]
                if len(remaining) >= 2:
                    picked = self._explore_item(ctx, ids, final, remaining, p, featurise)
                    used[picked[0]] = True
                    slate.append(picked)
                    continue
            while qpos < len(queue) and used[queue[qpos]]:
                qpos += 1
            if qpos >= len(queue):
                break
            k = queue[qpos]
            used[k] = True
            slate.append((k, 1.0, None))
        return slate

    def _blocks_last(self, slate: list[Slot], ids: list[str], allow: Callable[[str], bool]) -> list[Slot]:
        """Blocks are the last word: whatever a stage brought in, the hard filters apply again."""
        kept = [(k, prop, info) for k, prop, info in slate if allow(ids[k])]
        if len(kept) != len(slate):
            with self._lock:
                self.stats.late_filtered += len(slate) - len(kept)
        return kept

    def _explain(self, ctx: RankContext, ids: list[str], final: np.ndarray, adj: Adjustments, slate: list[Slot],
                 diversified: set[int], position: int, featurise: Featurise | None = None) -> tuple[list[Recommendation], list[Impression]]:
        """Recommendations with ``because`` (the user's own events, the policy's adjustments,
        diversity, exploration) and the impressions to log (shown at event log ``position``)."""
        request, state = ctx.request, ctx.state
        slate_ids = [ids[k] for k, _, _ in slate]
        history = explain_history(request.app, state, slate_ids, self.space, self.types, ctx.cfg.because_events)
        recs: list[Recommendation] = []
        request_id = uuid.uuid4().hex
        shown_at = self.clock() if request.now is None else request.now
        impressions: list[Impression] = []
        # every shown item's policy features (what the contextual policy's posterior learns from)
        learn = [pos for pos, (_, _, info) in enumerate(slate) if ctx.cfg.contextual_learn == "shown" or info is not None]
        shown_feats: dict[int, list[int]] = {}
        if featurise is not None and learn and request.user_id is not None:
            shown_feats = dict(zip(learn, featurise([slate[pos][0] for pos in learn], np.asarray(learn)).tolist()))
        for pos, ((k, prop, info), hist) in enumerate(zip(slate, history)):
            because = list(hist)
            because.extend(adj.explain(k))
            if k in diversified:
                entry = {"kind": "policy", "adjustment": "diversity", "diversity": round(ctx.diversity, 3)}
                if ctx.streak:
                    entry["reason"] = "negative streak"
                because.append(entry)
            if info is not None:
                entry = {"kind": "exploration", "policy": info.get("policy", "thompson"), "propensity": round(prop, 6)}
                if "category" in info:
                    entry["category"] = info["category"]
                because.append(entry)
            if not because:
                because.append({"kind": "model", "reason": "model score" if state is not None and state.sequence else "popular"})
            recs.append(Recommendation(ids[k], float(final[k]), because, propensity=prop, explored=info is not None,
                                       request_id=request_id))
            if request.user_id is not None:
                impressions.append(Impression(
                    impression_id=f"{request_id}:{pos}", request_id=request_id, app=request.app,
                    user_id=request.user_id, item_id=ids[k], position=pos, timestamp=shown_at,
                    propensity=prop, explored=info is not None, policy=info.get("policy", "thompson") if info is not None else "rank",
                    pool=info["pool"] if info else [], pool_propensities=info["p"] if info else [],
                    pool_scores=info["s"] if info else [], event_seq=position, origin=self.origin,
                    features=shown_feats.get(pos),
                    pool_features=info.get("features", []) if info else [],
                    shadow_propensities=info.get("shadow", []) if info else [],
                    experiment=request.experiment, variant=request.variant,
                ))
        return recs, impressions
