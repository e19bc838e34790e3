"""The exploration stage: Thompson sampling for a few slate positions, with exact propensities.

For each exploration slot the bandit chooses among the ``explore_pool`` best remaining candidates.
Each candidate ``i`` has a Beta posterior over its reward (1 positive / 0 negative / 0.5 no
feedback, see :mod:`liverec.ranking.impressions`)::

    alpha_i = s * m_i + successes_i        beta_i = s * (1 - m_i) + failures_i

where ``m_i`` in [0.25, 0.75] is a prior mean from the candidate's rank in the pool (the model's
opinion) and ``s = prior_strength``. A reward ``r`` adds ``r`` to successes and ``1 - r`` to
failures, so "no feedback" (0.5) adds half a count to each.

**Category exploration** (``explore_categories``): the first exploration slot chooses a
*category* rather than an item, among those the user has not turned against (demoted, or holding
an item they disliked): category ``c`` has the posterior Beta(prior + positive feedback mass,
prior + negative feedback mass) from the user's own recent likes, clicks, skips and dislikes on
items of ``c`` (:func:`liverec.ranking.feedback.summarise`), and the slot shows the best remaining
candidate of the chosen category. A category the user never reacted to keeps a wide
posterior, so it is tried; one they keep skipping is not. While the user is on a negative streak
this slot moves to the top of the slate: the model's own picks have just been rejected.

Propensities: rather than taking one Thompson draw (whose selection probability has no closed
form), the bandit takes ``explore_draws`` posterior draws, turns the argmax counts into a
distribution ``p_ts``, mixes in ``epsilon`` of uniform, ``p = (1 - eps) p_ts + eps / P``, and
samples the slot's item from ``p``. The logged propensity ``p[chosen]`` is therefore the exact
probability with which the item was chosen, and every pool item has ``p >= eps / P`` (what
off-policy evaluation of other policies needs).
"""

from __future__ import annotations

import heapq
import itertools
import threading
from operator import itemgetter
from sys import intern
from typing import Any, Callable, Hashable, Iterable, Mapping, Sequence

import numpy as np

from ..events import DEFAULT_TYPES, Event, TypeSpec
from .config import RankingConfig
from .contextual import LinearThompson
from .impressions import Impression, Shown, feedback_reward
from .recent import RecentIndex


class ThompsonBandit:
    """Beta posteriors per (app, item) and the seeded slot choice."""

    def __init__(self, seed: int = 0) -> None:
        self._rng = np.random.default_rng(seed)
        self._stats: dict[tuple[str, str], list[float]] = {}  # (app, item) -> [successes, failures]
        self._lock = threading.Lock()
        self._distributions: dict[tuple[bytes, bytes, int, float], np.ndarray] = {}  # see argmax_distribution

    MAX_DISTRIBUTIONS = 2048

    def update(self, app: str, item_id: str, reward: float) -> None:
        """Fold one reward in [0, 1] into the item's posterior."""
        with self._lock:
            st = self._stats.setdefault((app, item_id), [0.0, 0.0])
            st[0] += reward
            st[1] += 1.0 - reward

    def posteriors(self) -> dict[tuple[str, str], tuple[float, float]]:
        """Every (app, item)'s (successes, failures): the fold workers compare."""
        with self._lock:
            return {key: (st[0], st[1]) for key, st in self._stats.items()}

    def clear(self) -> None:
        """Forget every posterior (before they are folded again from the logs)."""
        with self._lock:
            self._stats.clear()

    def adopt(self, other: "ThompsonBandit") -> None:
        """Take ``other``'s posteriors (a refold's); this bandit's random generator stays."""
        with self._lock:
            self._stats = other._stats

    def load(self, rows: list[list]) -> None:
        """Replace the posteriors with ``[app, item, successes, failures]`` rows (a snapshot's)."""
        stats = {(str(app), str(item)): [float(s), float(f)] for app, item, s, f in rows}
        with self._lock:
            self._stats = stats

    def stats(self, app: str, item_id: str) -> tuple[float, float]:
        """(successes, failures) seen for the item; (0, 0) if none (never creates an entry)."""
        st = self._stats.get((app, item_id))
        return (st[0], st[1]) if st is not None else (0.0, 0.0)

    @staticmethod
    def prior_means(scores: np.ndarray) -> np.ndarray:
        """(P,) prior means in [0.25, 0.75] from the pool's scores (min-max)."""
        s = np.asarray(scores, dtype=np.float64)
        span = s.max() - s.min() if len(s) else 0.0
        norm = (s - s.min()) / span if span > 0 else np.full(len(s), 0.5)
        return 0.25 + 0.5 * norm

    def distribution(self, app: str, pool: list[str], scores: np.ndarray, cfg: RankingConfig) -> np.ndarray:
        """(P,) selection probabilities of the pool items for one slot (sums to 1)."""
        m = self.prior_means(scores)
        succ = np.array([self.stats(app, i)[0] for i in pool])
        fail = np.array([self.stats(app, i)[1] for i in pool])
        alpha = cfg.prior_strength * m + succ  # (P,)
        beta = cfg.prior_strength * (1.0 - m) + fail  # (P,)
        return self.argmax_distribution(alpha, beta, cfg)

    def argmax_distribution(self, alpha: np.ndarray, beta: np.ndarray, cfg: RankingConfig) -> np.ndarray:
        """(P,) probability that each arm wins a Thompson draw from Beta(alpha, beta), estimated from
        ``explore_draws`` draws, mixed with ``explore_epsilon`` of uniform (sums to 1), read-only.

        The same posteriors get the same distribution (the last ``MAX_DISTRIBUTIONS`` are kept):
        a slate's two slots, and a user's requests between two of their reactions, share one
        estimate; the draws (~0.25 ms for 20 arms, outside the interpreter lock) were ~12 % of a
        soak worker's non-idle samples. A propensity stays exact: it is the probability of the
        distribution the item was drawn from."""
        p_n = len(alpha)
        key = (alpha.tobytes(), beta.tobytes(), cfg.explore_draws, cfg.explore_epsilon)
        known = self._distributions.get(key)
        if known is not None:
            return known
        if p_n and (alpha == alpha[0]).all() and (beta == beta[0]).all():
            p_ts = np.full(p_n, 1.0 / p_n)  # exchangeable arms: every one wins a draw equally often
        else:
            with self._lock:
                draws = self._rng.beta(alpha, beta, size=(cfg.explore_draws, p_n))  # (D, P)
            counts = np.bincount(draws.argmax(axis=1), minlength=p_n).astype(np.float64)
            p_ts = counts / counts.sum()
        p = (1.0 - cfg.explore_epsilon) * p_ts + cfg.explore_epsilon / p_n
        p /= p.sum()
        p.flags.writeable = False
        with self._lock:
            if len(self._distributions) >= self.MAX_DISTRIBUTIONS:
                del self._distributions[next(iter(self._distributions))]  # the oldest
            self._distributions[key] = p
        return p

    def sample(self, p: np.ndarray) -> int:
        """One index drawn from the distribution ``p`` (the bandit's seeded generator)."""
        with self._lock:
            return int(self._rng.choice(len(p), p=p))

    def choose(self, app: str, pool: list[str], scores: np.ndarray, cfg: RankingConfig) -> tuple[int, np.ndarray]:
        """Index of the chosen pool item and the (P,) distribution it was drawn from."""
        p = self.distribution(app, pool, scores, cfg)
        return self.sample(p), p


Key = tuple[str, str, str]  # (app, user, item)
# (ts shown, tiebreak, key, impression id, event_seq, features): closes at ts shown + window + grace,
# the same offset for every entry, so the queue is ordered by the time shown (no closing time kept)
Due = tuple[float, int, Key, str, int, "tuple[int, ...] | None"]


class RewardTracker:
    """Joins committed feedback events to pending impressions and updates the bandit.

    The reward of an impression is decided by the first feedback event (positive or negative) on
    its (app, user, item) committed after the event log position it was shown at
    (``Impression.event_seq``): 1 or 0 when the event's timestamp lies within ``window_s`` of the
    impression's, 0.5 when it lies beyond. An impression with no such feedback is closed with 0.5
    by the first :meth:`expire` past ``window_s + grace_s`` (the grace lets feedback that was on
    its way, or timestamped by a clock a little behind this one, still count). Every impression
    waiting on the same item of the same user is decided by the same event.

    That definition reads only the two logs, so it has the same value in every process whatever
    order it learns of impressions and events in: an impression another process showed can be
    read from the impression log after its feedback was applied here, and is then decided from
    the recent feedback this tracker keeps (``max_recent`` events, by (app, user, item), with their
    log positions). ``max_pending`` bounds memory (the oldest waiting impressions are closed early
    with 0.5).

    Every reward updates the item's Beta posterior of ``bandit`` and, for an impression logged with
    policy features, the reward regression of ``contextual``.
    """

    def __init__(self, bandit: ThompsonBandit, window_s: float, types: Mapping[str, TypeSpec] = DEFAULT_TYPES,
                 max_pending: int = 200_000, grace_s: float = 60.0, max_recent: int = 100_000,
                 contextual: LinearThompson | None = None) -> None:
        self.bandit = bandit
        self.contextual = contextual
        self.window_s = window_s
        self.grace_s = grace_s
        self.types = types
        self.max_pending = max_pending
        self.max_recent = max_recent
        # key -> its waiting impressions; tuples, replaced on change: made of numbers and strings
        # alone, the collector stops tracking them, and a full pass does not walk 200,000 of them
        self._pending: dict[Key, tuple[Due, ...]] = {}
        # heap of every impression shown (``Due``), whole, so that a snapshot copies this list and
        # ``_open`` alone; entries of impressions decided early stay until popped, and ``_open``
        # tells them apart. Keys and their strings are interned: one object per distinct (app,
        # user, item) however many impressions wait on it (those read from the impression log
        # arrive as new strings each), a third of what a waiting impression held.
        self._due: list[Due] = []
        self._tiebreak = itertools.count()
        self._open: set[str] = set()  # ids of the impressions still waiting
        self._recent: RecentIndex[Key, tuple[float, float]] = RecentIndex(max_recent)  # key -> (seq, (ts, reward))
        self.position = 0  # the last event position observed
        self.undecidable = 0  # impressions read after their feedback had left the recent index
        self._lock = threading.Lock()
        self.rewards = {1.0: 0, 0.0: 0, 0.5: 0}

    def shown(self, impressions: Iterable[Impression | Shown]) -> None:
        """Impressions shown after the events observed so far (or, for another process's, after
        ``event_seq``): each one waits for feedback, unless feedback on it was already observed."""
        with self._lock:
            for imp in impressions:
                key = self._key(imp.app, imp.user_id, imp.item_id)
                after = self.position if imp.event_seq is None else imp.event_seq
                feats = tuple(imp.features) if imp.features else None
                if after < self.position:  # read late: its feedback may have been observed already
                    if after < self._recent.horizon:
                        self.undecidable += 1
                    first = next((f for seq, f in self._recent.get(key) if seq > after), None)
                    if first is not None:
                        self._reward(key, self._decide(imp.timestamp, first[0], first[1]), feats)
                        continue
                entry = (imp.timestamp, next(self._tiebreak), key, imp.impression_id, after, feats)
                self._pending[key] = self._pending.get(key, ()) + (entry,)
                heapq.heappush(self._due, entry)
                self._open.add(imp.impression_id)
            while len(self._open) > self.max_pending and self._due:
                self._close_first()

    @staticmethod
    def _key(app: str, user_id: str, item_id: str) -> Key:
        return intern(app), intern(user_id), intern(item_id)

    def _decide(self, shown_at: float, feedback_at: float, reward: float) -> float:
        return reward if feedback_at <= shown_at + self.window_s else 0.5

    def _close_first(self) -> None:
        entry = heapq.heappop(self._due)
        _, _, key, imp_id, _, feats = entry
        if imp_id not in self._open:
            return  # already rewarded by feedback
        self._open.remove(imp_id)
        rest = tuple(w for w in self._pending.get(key, ()) if w is not entry)
        if rest:
            self._pending[key] = rest
        else:
            self._pending.pop(key, None)
        self._reward(key, 0.5, feats)

    def _reward(self, key: Key, r: float, features: tuple[int, ...] | None = None) -> None:
        self.bandit.update(key[0], key[2], r)
        if features is not None and self.contextual is not None:
            self.contextual.update(key[0], features, r)
        self.rewards[r] = self.rewards.get(r, 0) + 1

    def observe(self, events: Sequence[Event], seqs: Sequence[int] | None = None) -> None:
        """Committed events in log order, with their positions (a listener of the service):
        feedback decides every impression waiting on its (app, user, item)."""
        with self._lock:
            if seqs is None:  # a caller without positions: number them on from the last one
                seqs = range(self.position + 1, self.position + 1 + len(events))
            for e, seq in zip(events, seqs, strict=True):
                r = feedback_reward(e, self.types)
                if r is None:
                    continue
                key = self._key(e.app, e.user_id, str(e.item_id))
                self._remember(seq, key, e.timestamp, r)
                waiting = self._pending.get(key)
                if waiting is None:
                    continue
                # an impression read from another process that had seen more of the log than this
                # one has is not decided by events it was shown after
                later = tuple(w for w in waiting if w[4] >= seq)
                for shown_at, _, _, imp_id, after, feats in waiting:
                    if after < seq:
                        self._open.remove(imp_id)
                        self._reward(key, self._decide(shown_at, e.timestamp, r), feats)
                if later:
                    self._pending[key] = later
                else:
                    del self._pending[key]
            if len(seqs):
                self.position = max(self.position, seqs[-1])

    def _remember(self, seq: int, key: Key, ts: float, r: float) -> None:
        self._recent.add(seq, key, (ts, r))

    def expire(self, now: float) -> None:
        """Close every impression whose window and grace ended before ``now`` with reward 0.5."""
        with self._lock:
            while self._due and self._due[0][0] + self.window_s + self.grace_s < now:
                self._close_first()

    def advance(self, position: int) -> None:
        """Every event up to ``position`` has been observed (a rebuild that read them elsewhere)."""
        with self._lock:
            self.position = max(self.position, position)

    def clear(self, position: int = 0) -> None:
        """Forget pending impressions and recent feedback (the bandit is not touched); the next
        events observed come after ``position``."""
        with self._lock:
            self._pending.clear()
            self._due.clear()
            self._open.clear()
            self._recent.clear(position)
            self.position = position
            self.undecidable = 0
            self.rewards = {1.0: 0, 0.0: 0, 0.5: 0}

    def copy(self) -> dict[str, Any]:
        """What the fold holds, copied (the caller keeps events and impressions out meanwhile):
        three flat copies, whose entries never change, so the locks are held for milliseconds;
        :func:`encode_rewards` turns it into plain data after they are released."""
        with self._lock:
            return {
                "due": list(self._due),
                "open": set(self._open),
                "recent": self._recent.frozen(),
                "position": self.position,
                "undecidable": self.undecidable,
                "rewards": dict(self.rewards),
            }

    def load(self, data: Mapping[str, Any]) -> None:
        """Replace the fold with :func:`encode_rewards`'s data."""
        pending: dict[Key, tuple[Due, ...]] = {}
        opened: set[str] = set()
        due: list[Due] = []
        p = data["pending"]
        for app, user, item, ts, imp, after, tie, feats in zip(p["app"], p["user"], p["item"], p["shown_at"], p["impression"],
                                                                p["after"], p["tie"], p["features"], strict=True):
            key = self._key(app, user, item)
            feats = tuple(feats) if feats else None
            entry = (ts, tie, key, imp, after, feats)
            pending[key] = pending.get(key, ()) + (entry,)
            opened.add(imp)
            due.append(entry)
        heapq.heapify(due)
        recent: RecentIndex[Key, tuple[float, float]] = load_recent(
            self.max_recent, data["recent"], lambda k: (k[0], k[1], k[2]), lambda v: (float(v[0]), float(v[1])))
        rewards = {float(r): int(n) for r, n in data["rewards"]}
        with self._lock:
            self._pending, self._due, self._open, self._recent = pending, due, opened, recent
            # only the order of the waiting impressions' closing times needs the tiebreak
            self._tiebreak = itertools.count(max((d[1] for d in due), default=-1) + 1)
            self.position = int(data["position"])
            self.undecidable = int(data["undecidable"])
            self.rewards = rewards

    def empty_like(self, bandit: ThompsonBandit, contextual: LinearThompson | None = None) -> RewardTracker:
        """A tracker with this one's settings and nothing folded, updating ``bandit`` (and ``contextual``)."""
        return RewardTracker(bandit, self.window_s, self.types, self.max_pending, self.grace_s, self.max_recent, contextual)

    def forget(self, app: str, matches: Callable[[str], bool]) -> int:
        """Drop the impressions of a deleted user of ``app`` that wait for feedback and the user's
        recent feedback (``matches`` tells the user's id); returns how many impressions. What their
        decided impressions added to the posteriors stays: a refold takes it out
        (:meth:`liverec.ranking.replicas.ImpressionFollower.refold`)."""
        with self._lock:
            keys = [k for k in self._pending if k[0] == app and matches(k[1])]
            dropped = 0
            for key in keys:
                for _, _, _, imp_id, _, _ in self._pending.pop(key):
                    if imp_id in self._open:  # its closing entry is skipped when popped
                        self._open.remove(imp_id)
                        dropped += 1
            self._recent.discard({k for k in self._recent.keys() if k[0] == app and matches(k[1])})
            return dropped

    def users(self, app: str) -> set[str]:
        """The users of ``app`` with impressions waiting for feedback."""
        with self._lock:
            return {key[1] for key in self._pending if key[0] == app}

    def waiting(self, app: str, user_id: str) -> list[tuple[str, float, str]]:
        """The user's impressions waiting for feedback: (item, time shown, impression id)."""
        with self._lock:
            return sorted((key[2], ts, imp) for key, waiting in self._pending.items()
                          if key[0] == app and key[1] == user_id for ts, _, _, imp, _, _ in waiting)

    def pending(self) -> int:
        """Impressions still waiting for feedback."""
        return len(self._open)

    def pending_ids(self) -> set[str]:
        """The ids of the impressions still waiting for feedback."""
        with self._lock:
            return set(self._open)


# ---- snapshots of the folds ----------------------------------------------------------------------
def recent_entries(frozen: tuple[list, int], value_out: Callable[[Any], Any] | None = None) -> dict[str, Any]:
    """A recent index's :meth:`~liverec.ranking.recent.RecentIndex.frozen` copy as plain data:
    its (seq, key, value) entries in log order and its horizon. Keys and values of tuples of
    strings and numbers are JSON as they are (no object made per entry: a pass that makes
    hundreds of thousands of them pays for the collector's passes over every fold);
    ``value_out`` turns any other value into such."""
    order, horizon = frozen
    if value_out is not None:
        order = [(seq, key, value_out(value)) for seq, key, value in order]
    return {"entries": order, "horizon": horizon}


def load_recent(limit: int, data: Mapping[str, Any], key_in: Callable[[Any], Hashable], value_in: Callable[[Any], Any]) -> RecentIndex:
    """The recent index :func:`recent_entries` described."""
    index: RecentIndex = RecentIndex(limit)
    for seq, key, value in data["entries"]:
        index.add(int(seq), key_in(key), value_in(value))
    index.horizon = max(index.horizon, int(data["horizon"]))
    return index


def waiting_rows(copied: Mapping[str, Any]) -> list[Due]:
    """The closing-queue entries of :meth:`RewardTracker.copy` still waiting, in the order they
    were shown (their tiebreaks): entries of impressions decided early are left out."""
    opened = copied["open"]
    rows = [d for d in copied["due"] if d[3] in opened]
    rows.sort(key=itemgetter(1))
    return rows


def shown_at_position(rows: list[Due], position: int) -> list[str]:
    """The ids of the waiting impressions among ``rows`` (:func:`waiting_rows`) shown at event
    log position ``position``, sorted."""
    return sorted(d[3] for d in rows if d[4] == position)


def encode_rewards(copied: Mapping[str, Any], rows: list[Due] | None = None) -> dict[str, Any]:
    """:meth:`RewardTracker.copy` as plain data (JSON: lists, strings and numbers); ``rows``:
    its :func:`waiting_rows`, when the caller has them already."""
    rows = waiting_rows(copied) if rows is None else rows
    # the waiting impressions in columns (one list per field, no list per impression); the
    # closing queue is rebuilt from them, each with its tiebreak
    return {
        "pending": {"app": [d[2][0] for d in rows], "user": [d[2][1] for d in rows], "item": [d[2][2] for d in rows],
                    "shown_at": [d[0] for d in rows], "impression": [d[3] for d in rows], "after": [d[4] for d in rows],
                    "tie": [d[1] for d in rows], "features": [d[5] for d in rows]},
        "recent": recent_entries(copied["recent"]),
        "position": copied["position"],
        "undecidable": copied["undecidable"],
        "rewards": [[r, n] for r, n in copied["rewards"].items()],
    }
