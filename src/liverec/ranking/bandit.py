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

import threading
from collections import deque
from typing import Mapping

import numpy as np

from ..events import DEFAULT_TYPES, Event, TypeSpec
from .config import RankingConfig
from .impressions import Impression, feedback_reward


class ThompsonBandit:
    """Beta posteriors per (app, item) and the seeded slot choice."""

    def __init__(self, seed: int = 0) -> None:
        self._rng = np.random.default_rng(seed)
        self._stats: dict[tuple[str, str], list[float]] = {}  # (app, item) -> [successes, failures]
        self._lock = threading.Lock()

    def update(self, app: str, item_id: str, reward: float) -> None:
        """Fold one reward in [0, 1] into the item's posterior."""
        with self._lock:
            st = self._stats.setdefault((app, item_id), [0.0, 0.0])
            st[0] += reward
            st[1] += 1.0 - reward

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
        ``explore_draws`` draws, mixed with ``explore_epsilon`` of uniform (sums to 1)."""
        p_n = len(alpha)
        with self._lock:
            draws = self._rng.beta(alpha, beta, size=(cfg.explore_draws, p_n))  # (D, P)
        counts = np.bincount(draws.argmax(axis=1), minlength=p_n).astype(np.float64)
        p_ts = counts / counts.sum()
        p = (1.0 - cfg.explore_epsilon) * p_ts + cfg.explore_epsilon / p_n
        return p / p.sum()

    def sample(self, p: np.ndarray) -> int:
        """One index drawn from the distribution ``p`` (the bandit's seeded generator)."""
        with self._lock:
            return int(self._rng.choice(len(p), p=p))

    def choose(self, app: str, pool: list[str], scores: np.ndarray, cfg: RankingConfig) -> tuple[int, np.ndarray]:
        """Index of the chosen pool item and the (P,) distribution it was drawn from."""
        p = self.distribution(app, pool, scores, cfg)
        return self.sample(p), p


class RewardTracker:
    """Joins committed feedback events to pending impressions and updates the bandit.

    An impression waits ``window_s`` for feedback on its (user, item); the first positive or
    negative event in that window gives reward 1 or 0, and an impression still waiting when its
    window closes gives 0.5. ``max_pending`` bounds memory (the oldest waiting impressions are
    closed early with 0.5).
    """

    def __init__(self, bandit: ThompsonBandit, window_s: float, types: Mapping[str, TypeSpec] = DEFAULT_TYPES, max_pending: int = 200_000) -> None:
        self.bandit = bandit
        self.window_s = window_s
        self.types = types
        self.max_pending = max_pending
        self._pending: dict[tuple[str, str, str], deque[tuple[float, str]]] = {}  # key -> (ts, impression id)
        self._order: deque[tuple[float, tuple[str, str, str], str]] = deque()  # by time shown
        self._open: set[str] = set()
        self._lock = threading.Lock()
        self.rewards = {1.0: 0, 0.0: 0, 0.5: 0}

    def shown(self, impressions: list[Impression]) -> None:
        with self._lock:
            for imp in impressions:
                key = (imp.app, imp.user_id, imp.item_id)
                self._pending.setdefault(key, deque()).append((imp.timestamp, imp.impression_id))
                self._order.append((imp.timestamp, key, imp.impression_id))
                self._open.add(imp.impression_id)
            while len(self._open) > self.max_pending and self._order:
                self._close_oldest()

    def _close_oldest(self) -> None:
        _, key, imp_id = self._order.popleft()
        if imp_id not in self._open:
            return  # already rewarded by feedback
        self._open.discard(imp_id)
        waiting = self._pending.get(key)
        if waiting:
            waiting.popleft()  # the oldest waiting impression of this key is this one
            if not waiting:
                del self._pending[key]
        self._reward(key, 0.5)

    def _reward(self, key: tuple[str, str, str], r: float) -> None:
        self.bandit.update(key[0], key[2], r)
        self.rewards[r] = self.rewards.get(r, 0) + 1

    def observe(self, events: list[Event]) -> None:
        """Committed events (a listener of the service): reward the oldest open impression."""
        with self._lock:
            for e in events:
                r = feedback_reward(e, self.types)
                if r is None:
                    continue
                key = (e.app, e.user_id, str(e.item_id))
                waiting = self._pending.get(key)
                while waiting and waiting[0][0] < e.timestamp - self.window_s:
                    _, imp_id = waiting.popleft()  # its window closed before this feedback
                    self._open.discard(imp_id)
                    self._reward(key, 0.5)
                if waiting:
                    _, imp_id = waiting.popleft()
                    self._open.discard(imp_id)
                    self._reward(key, r)
                if waiting is not None and not waiting:
                    del self._pending[key]

    def expire(self, now: float) -> None:
        """Close every impression whose window ended before ``now`` with reward 0.5."""
        with self._lock:
            while self._order and self._order[0][0] + self.window_s < now:
                self._close_oldest()

    def pending(self) -> int:
        """Impressions still waiting for feedback."""
        return len(self._open)
