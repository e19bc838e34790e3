"""The learned exploration policy: linear Thompson sampling over features of (user, candidate).

``RankingConfig.explore_policy = "contextual"`` fills the item exploration slots from this policy
instead of the per-item Beta posteriors of :class:`~liverec.ranking.bandit.ThompsonBandit`. One
Bayesian linear regression per app predicts an impression's reward (1 / 0 / 0.5, the same
rewards) from :data:`FEATURES` of the candidate for this user at this request:

* ``relevance``: the model's score of the candidate, min-max scaled over the pool (the
  Transformer's user state against the candidate's item vector, with its bias);
* ``adjustment``: what the feedback policy added or took away (neighbours of the user's likes,
  dislikes and skips in the model's item space, demoted and boosted categories);
* ``rank``: the candidate's place in the ranked order, over ``explore_pool``;
* ``category_positive`` / ``category_negative``: the user's recent positive and negative
  feedback mass on the candidate's categories (squashed), and ``turned_against`` (1 when the user
  disliked or demoted one of them);
* ``item_rate``: the candidate's reward rate across users so far (the Beta posterior's mean,
  scaled to [-1, 1]);
* ``position``: the slate position, over 10 (a lower slot is read less often);
* ``user_cosine``: the cosine of the Transformer's user vector (its state after the user's newest
  event, ``Scored.user``) and the candidate's item vector (0 with a scorer that has no user vector).

Only inner products and feedback enter, never raw embedding coordinates: a retrained model's
vectors live in another basis, and the posterior outlives model versions.

Prior: ``theta ~ N(theta0, noise^2 / ridge I)`` with ``theta0`` the bandit's rank prior (reward
``0.25 + 0.5 * relevance``), so a fresh app explores as the Thompson slots do. Posterior after
impressions ``(x, r)``: precision ``A = ridge I + sum x x^T``, mean ``A^-1 (ridge theta0 +
sum r x)``, covariance ``noise^2 A^-1``. A slot takes ``explore_draws`` draws of ``theta``, turns
the argmax counts over the pool into a distribution, mixes in ``explore_epsilon`` of uniform and
samples from it, so the logged propensity is exact, as for the Thompson slots.

The fold: in an app that runs this policy (or logs it beside the Thompson slots,
``explore_shadow``), features are logged with every impression shown while exploring
(``contextual_learn = "explored"``: only with its own slots' impressions), integers in units of
``1 / FEATURE_SCALE``, clipped to ``+-FEATURE_CLIP``, and the sums ``sum x x^T``, ``sum 2 r x`` and
the count are kept as integers, so the posterior is the same whatever order rewards are folded in
(every worker, a restart, a refold after a deletion reach it exactly).

>>> pol = LinearThompson(seed=0)
>>> x = quantise(np.array([1.0, 0.9, 0.0, 0.0, 0.5, 0.0, 0.0, 0.2, 0.4, 0.3]))
>>> for _ in range(20):
...     pol.update("shop", x.tolist(), 1.0)
>>> pol.count("shop"), round(float(pol.mean("shop", 4.0) @ (x / FEATURE_SCALE)), 2)
(20, 0.98)
"""

from __future__ import annotations

import threading
from typing import Sequence

import numpy as np

FEATURES = ("bias", "relevance", "adjustment", "rank", "category_positive", "category_negative", "turned_against",
            "item_rate", "position", "user_cosine")
N_FEATURES = len(FEATURES)
FEATURE_SCALE = 64  # logged features are integers in units of 1/64
FEATURE_CLIP = 4.0  # |feature| <= 4 (the integer sums stay exact for 2^40 impressions)
PRIOR_MEAN = np.zeros(N_FEATURES)
PRIOR_MEAN[FEATURES.index("bias")] = 0.25  # the Thompson slots' rank prior: 0.25 + 0.5 * relevance
PRIOR_MEAN[FEATURES.index("relevance")] = 0.5


def quantise(x: np.ndarray) -> np.ndarray:
    """(..., F) features as the integers they are logged and folded as."""
    return np.rint(np.clip(np.asarray(x, dtype=np.float64), -FEATURE_CLIP, FEATURE_CLIP) * FEATURE_SCALE).astype(np.int64)


class LinearThompson:
    """Per-app sufficient statistics of the reward regression, and the seeded slot choice."""

    def __init__(self, seed: int = 0) -> None:
        self._rng = np.random.default_rng(seed)
        # app -> [sum x x^T (F, F), sum 2 r x (F,), count], all int64 in feature units
        self._sums: dict[str, list] = {}
        self._cache: dict[str, tuple[tuple, np.ndarray, np.ndarray]] = {}  # app -> (key, mean, factor)
        self._lock = threading.Lock()

    # ---- the fold ----------------------------------------------------------------------------
    def update(self, app: str, features: Sequence[int], reward: float) -> None:
        """Fold one impression's reward in [0, 1] (0, 0.5 or 1) with its logged features;
        features of another definition (length) are skipped."""
        if len(features) != N_FEATURES:
            return
        x = np.asarray(features, dtype=np.int64)  # (F,)
        r2 = int(round(2.0 * reward))  # 0, 1, 2: exact
        with self._lock:
            st = self._sums.get(app)
            if st is None:
                st = self._sums[app] = [np.zeros((N_FEATURES, N_FEATURES), np.int64), np.zeros(N_FEATURES, np.int64), 0]
            st[0] += np.outer(x, x)
            st[1] += r2 * x
            st[2] += 1

    def count(self, app: str) -> int:
        """Impressions folded for ``app``."""
        st = self._sums.get(app)
        return 0 if st is None else int(st[2])

    def sums(self) -> dict[str, tuple[np.ndarray, np.ndarray, int]]:
        """Every app's (sum x x^T, sum 2 r x, count), copied: the fold workers compare."""
        with self._lock:
            return {app: (st[0].copy(), st[1].copy(), int(st[2])) for app, st in self._sums.items()}

    def clear(self) -> None:
        with self._lock:
            self._sums.clear()
            self._cache.clear()

    def adopt(self, other: LinearThompson) -> None:
        """Take ``other``'s sums (a refold's); this policy's random generator stays."""
        with self._lock:
            self._sums = other._sums
            self._cache.clear()

    def rows(self) -> list[list]:
        """The sums as plain data (a snapshot's): ``[app, xx (F*F ints), xr (F ints), count]``."""
        return [[app, xx.ravel().tolist(), xr.tolist(), n] for app, (xx, xr, n) in self.sums().items()]

    def load(self, rows: list[list]) -> None:
        """Replace the sums with :meth:`rows`' data."""
        sums = {str(app): [np.asarray(xx, np.int64).reshape(N_FEATURES, N_FEATURES), np.asarray(xr, np.int64), int(n)]
                for app, xx, xr, n in rows}
        with self._lock:
            self._sums = sums
            self._cache.clear()

    # ---- the posterior -----------------------------------------------------------------------
    def _posterior(self, app: str, ridge: float, noise: float) -> tuple[np.ndarray, np.ndarray]:
        """(F,) posterior mean and (F, F) factor ``M`` with ``theta = mean + M z``, z ~ N(0, I)."""
        with self._lock:
            st = self._sums.get(app)
            key = (ridge, noise, 0 if st is None else int(st[2]))
            hit = self._cache.get(app)
            if hit is not None and hit[0] == key:
                return hit[1], hit[2]
            xx = st[0].astype(np.float64) / FEATURE_SCALE ** 2 if st is not None else np.zeros((N_FEATURES, N_FEATURES))
            xr = st[1].astype(np.float64) / (2 * FEATURE_SCALE) if st is not None else np.zeros(N_FEATURES)
        a = ridge * np.eye(N_FEATURES) + xx  # (F, F) precision / noise^2
        chol = np.linalg.cholesky(a)  # A = L L^T
        mean = np.linalg.solve(a, ridge * PRIOR_MEAN + xr)  # (F,)
        factor = noise * np.linalg.inv(chol).T  # (F, F): cov = M M^T = noise^2 A^-1
        with self._lock:
            self._cache[app] = (key, mean, factor)
        return mean, factor

    def mean(self, app: str, ridge: float) -> np.ndarray:
        """(F,) the posterior mean of the weights."""
        return self._posterior(app, ridge, 1.0)[0]

    def distribution(self, app: str, features: np.ndarray, ridge: float, noise: float, draws: int, epsilon: float) -> np.ndarray:
        """(P,) probability that each candidate (rows of (P, F) integer ``features``) wins a draw of
        the weights from the posterior, estimated from ``draws`` draws, mixed with ``epsilon`` of
        uniform (sums to 1)."""
        mean, factor = self._posterior(app, ridge, noise)
        x = np.asarray(features, dtype=np.float64) / FEATURE_SCALE  # (P, F)
        p_n = len(x)
        with self._lock:
            z = self._rng.standard_normal((draws, N_FEATURES))  # (D, F)
        theta = mean[None, :] + z @ factor.T  # (D, F)
        values = theta @ x.T  # (D, P)
        counts = np.bincount(values.argmax(axis=1), minlength=p_n).astype(np.float64)
        p = (1.0 - epsilon) * counts / counts.sum() + epsilon / p_n
        return p / p.sum()

    def sample(self, p: np.ndarray) -> int:
        """One index drawn from ``p`` (this policy's seeded generator)."""
        with self._lock:
            return int(self._rng.choice(len(p), p=p))
