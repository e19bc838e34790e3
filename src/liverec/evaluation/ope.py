"""Off-policy evaluation of exploration-slot policies from logged impressions.

Every slot the bandit filled is one logged decision: the candidate pool, the logging policy's
probability of each candidate (``mu``), the candidates' scores, which candidate was shown and its
reward (1 positive / 0 negative / 0.5 no feedback within the window; see
:mod:`liverec.ranking.impressions`). A target policy ``pi`` maps (scores, mu) to a distribution
over the same pool, and with importance weights ``w = pi(a) / mu(a)`` of the shown candidates:

* IPS:   ``V = mean(w * r)``                (unbiased when ``mu > 0`` wherever ``pi > 0``)
* SNIPS: ``V = sum(w * r) / sum(w)``        (self-normalised: biased, much lower variance)
* DR:    ``V = mean(sum_a pi(a) q(a) + w * (r - q(chosen)))`` with a reward model ``q`` fitted by
  cross-fitting (each decision's ``q`` comes from a model fitted on the other folds): unbiased
  when the propensities are right, whatever ``q`` is; the closer ``q`` is to the true reward, the
  lower the variance (the reward model carries what it explains, the weights only the residual).

Confidence intervals are percentile bootstrap intervals over decisions (seeded), plus the normal
approximation for IPS and DR; the effective sample size ``(sum w)^2 / sum w^2`` says how much of
the log a policy really uses. :func:`slate_pi` is the pseudo-inverse estimator of a whole slate's
additive reward (several exploration slots of one response).

Target policies (names for the CLI): ``logging`` (the logged policy itself: IPS = the observed
mean), ``greedy`` (the best-scored candidate), ``uniform``, ``softmax:T`` (softmax of scores / T),
``shadow`` (the distribution another policy logged beside the one that chose: the learned
contextual policy's, logged in an app that explores with Thompson slots, see
``RankingConfig.explore_shadow``).

>>> d = [Decision(["a", "b"], np.array([0.5, 0.5]), np.array([1.0, 0.0]), 0, 1.0),
...      Decision(["a", "b"], np.array([0.5, 0.5]), np.array([1.0, 0.0]), 1, 0.0)]
>>> round(estimate(d, "greedy")["ips"], 3), round(estimate(d, "uniform")["ips"], 3)
(1.0, 0.5)
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Mapping, Protocol

import numpy as np

from ..events import DEFAULT_TYPES, Event, TypeSpec
from ..ranking.contextual import FEATURE_SCALE
from ..ranking.impressions import Impression, assign_rewards


@dataclass(frozen=True)
class Decision:
    """One logged exploration decision."""

    pool: list[str]
    mu: np.ndarray  # (P,) logging probabilities (sum 1)
    scores: np.ndarray  # (P,) candidate scores at decision time
    chosen: int  # index into pool
    reward: float
    features: np.ndarray | None = None  # (P, F) the candidates' policy features, when logged
    target: np.ndarray | None = None  # (P,) a shadow policy's distribution, when logged
    slate: str = ""  # the response (request id) the decision was part of


def policy_distribution(name: str, scores: np.ndarray, mu: np.ndarray) -> np.ndarray:
    """Target probabilities of policy ``name`` over pools: scores and mu are (..., P)."""
    scores = np.asarray(scores, dtype=np.float64)
    p = scores.shape[-1]
    if name == "logging":
        return np.asarray(mu, dtype=np.float64)
    if name == "uniform":
        return np.full(scores.shape, 1.0 / p)
    if name == "greedy":
        out = np.zeros(scores.shape)
        np.put_along_axis(out, np.argmax(scores, axis=-1)[..., None], 1.0, axis=-1)
        return out
    if name.startswith("softmax:"):
        t = float(name.split(":", 1)[1])
        if not t > 0:
            raise ValueError(f"policy {name!r}: temperature must be > 0")
        e = np.exp((scores - scores.max(axis=-1, keepdims=True)) / t)
        return e / e.sum(axis=-1, keepdims=True)
    raise ValueError(f"unknown policy {name!r}; expected logging, greedy, uniform, softmax:T or shadow")


def target_distributions(decisions: list[Decision], policy: str) -> list[np.ndarray]:
    """Each decision's (P,) target probabilities under ``policy``."""
    out: list[np.ndarray] = [np.empty(0)] * len(decisions)
    if policy == "shadow":
        for k, d in enumerate(decisions):
            if d.target is None:
                raise ValueError("policy 'shadow': a decision has no logged shadow distribution "
                                 "(log one with the app's explore_shadow setting)")
            out[k] = np.asarray(d.target, dtype=np.float64)
        return out
    by_size: dict[int, list[int]] = {}
    for k, d in enumerate(decisions):
        by_size.setdefault(len(d.pool), []).append(k)
    for rows in by_size.values():  # pools of one size are evaluated as one (n_p, P) batch
        scores = np.stack([decisions[k].scores for k in rows])  # (n_p, P)
        mu = np.stack([decisions[k].mu for k in rows])  # (n_p, P)
        pi = policy_distribution(policy, scores, mu)  # (n_p, P)
        for j, k in enumerate(rows):
            out[k] = pi[j]
    return out


def _weights(decisions: list[Decision], policy: str) -> tuple[np.ndarray, np.ndarray]:
    """(n,) importance weights pi(a)/mu(a) of the shown candidates and (n,) rewards."""
    pis = target_distributions(decisions, policy)
    w = np.array([pi[d.chosen] / d.mu[d.chosen] for pi, d in zip(pis, decisions)], dtype=np.float64)
    r = np.array([d.reward for d in decisions], dtype=np.float64)
    return w, r


class RewardModel(Protocol):
    """A regression of reward on candidate features (scikit-learn's estimator interface)."""

    def fit(self, x: np.ndarray, y: np.ndarray) -> "RewardModel": ...

    def predict(self, x: np.ndarray) -> np.ndarray: ...


def ridge() -> RewardModel:
    """The default reward model: ridge regression (scikit-learn)."""
    from sklearn.linear_model import Ridge

    return Ridge(alpha=1.0)


def reward_features(d: Decision, with_logged: bool = True) -> np.ndarray:
    """(P, K) what the reward model reads of each candidate: a constant, the score, the score
    min-max scaled in the pool, the rank by score over the pool size, the log of the logging
    probability, then the candidates' logged policy features (when every decision has them)."""
    s = np.asarray(d.scores, dtype=np.float64)
    p = len(s)
    span = s.max() - s.min() if p else 0.0
    rel = (s - s.min()) / span if span > 0 else np.full(p, 0.5)
    rank = np.empty(p)
    rank[np.argsort(-s, kind="stable")] = np.arange(p) / max(p, 1)
    cols = [np.ones(p), s, rel, rank, np.log(np.maximum(np.asarray(d.mu, dtype=np.float64), 1e-12))]
    x = np.stack(cols, axis=1)  # (P, 5)
    if with_logged and d.features is not None:
        x = np.concatenate([x, np.asarray(d.features, dtype=np.float64)], axis=1)  # (P, 5 + F)
    return x


def _folds(decisions: list[Decision], k: int, seed: int) -> np.ndarray:
    """(n,) fold of each decision; the decisions of one response share a fold (they share a user)."""
    groups: dict[str, int] = {}
    gid = np.array([groups.setdefault(d.slate or f"#{i}", len(groups)) for i, d in enumerate(decisions)])
    perm = np.random.default_rng(seed).permutation(len(groups))
    return perm[gid] % k


def dr_terms(decisions: list[Decision], pis: list[np.ndarray], reward_model: Callable[[], RewardModel] = ridge,
             folds: int = 5, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(n,) doubly robust terms ``sum_a pi(a) q(a) + w (r - q(chosen))`` and (n,) direct-method
    terms ``sum_a pi(a) q(a)``, with ``q`` of each decision fitted on the other ``folds - 1`` folds
    (cross-fitting: a decision's own reward never fits the model that corrects it)."""
    n = len(decisions)
    logged = all(d.features is not None for d in decisions)
    feats = [reward_features(d, logged) for d in decisions]  # (P_k, K) each
    x_chosen = np.stack([f[d.chosen] for f, d in zip(feats, decisions)])  # (n, K)
    r = np.array([d.reward for d in decisions], dtype=np.float64)
    fold = _folds(decisions, max(2, folds), seed) if n >= 2 * max(2, folds) else np.zeros(n, dtype=np.int64)
    q: list[np.ndarray] = [np.empty(0)] * n
    for f in np.unique(fold).tolist():
        test = np.flatnonzero(fold == f)
        train = np.flatnonzero(fold != f) if len(np.unique(fold)) > 1 else test
        model = reward_model().fit(x_chosen[train], r[train])
        sizes = [len(feats[k]) for k in test]
        pred = np.asarray(model.predict(np.concatenate([feats[k] for k in test])), dtype=np.float64)
        for k, part in zip(test.tolist(), np.split(pred, np.cumsum(sizes)[:-1])):
            q[k] = part
    dm = np.array([float(pi @ qk) for pi, qk in zip(pis, q)])
    w = np.array([pi[d.chosen] / d.mu[d.chosen] for pi, d in zip(pis, decisions)])
    resid = r - np.array([qk[d.chosen] for qk, d in zip(q, decisions)])
    return dm + w * resid, dm


def _normal_ci(terms: np.ndarray, z: float) -> list[float]:
    m = float(terms.mean())
    se = float(terms.std(ddof=1) / math.sqrt(len(terms))) if len(terms) > 1 else float("nan")
    return [m - z * se, m + z * se]


def estimate(decisions: list[Decision], policy: str, n_boot: int = 1000, alpha: float = 0.05, seed: int = 0,
             reward_model: Callable[[], RewardModel] | None = ridge, folds: int = 5) -> dict[str, float]:
    """IPS, SNIPS and doubly robust (DR; ``reward_model=None``: left out) estimates of ``policy``
    with (1 - alpha) bootstrap confidence intervals, and normal ones for IPS and DR."""
    if not decisions:
        raise ValueError("no logged exploration decisions to evaluate")
    pis = target_distributions(decisions, policy)
    w = np.array([pi[d.chosen] / d.mu[d.chosen] for pi, d in zip(pis, decisions)], dtype=np.float64)
    r = np.array([d.reward for d in decisions], dtype=np.float64)
    n = len(w)
    wr = w * r
    ips = float(wr.mean())
    snips = float(wr.sum() / w.sum()) if w.sum() > 0 else float("nan")
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, n, size=(n_boot, n))  # (B, n) bootstrap resamples
    boot_ips = wr[idx].mean(axis=1)
    wsum = w[idx].sum(axis=1)
    boot_snips = np.where(wsum > 0, wr[idx].sum(axis=1) / np.maximum(wsum, 1e-300), np.nan)
    lo, hi = 100 * alpha / 2, 100 * (1 - alpha / 2)
    z = 1.959963984540054 if abs(alpha - 0.05) < 1e-12 else _z(1 - alpha / 2)
    out: dict = {
        "ips": ips,
        "ips_ci": [float(np.percentile(boot_ips, lo)), float(np.percentile(boot_ips, hi))],
        "ips_normal_ci": _normal_ci(wr, z),
        "snips": snips,
        "snips_ci": [float(np.nanpercentile(boot_snips, lo)), float(np.nanpercentile(boot_snips, hi))],
        "ess": float(w.sum() ** 2 / max((w ** 2).sum(), 1e-300)),
        "decisions": n,
    }
    if reward_model is not None:
        terms, dm = dr_terms(decisions, pis, reward_model, folds, seed)
        boot_dr = terms[idx].mean(axis=1)
        out.update({
            "dr": float(terms.mean()),
            "dr_ci": [float(np.percentile(boot_dr, lo)), float(np.percentile(boot_dr, hi))],
            "dr_normal_ci": _normal_ci(terms, z),
            "dm": float(dm.mean()),  # the reward model alone (biased when it is wrong)
        })
    return out


def slate_pi(decisions: list[Decision], policy: str, n_boot: int = 1000, alpha: float = 0.05, seed: int = 0) -> dict[str, float]:
    """Pseudo-inverse (PI) estimate of a response's summed reward over its exploration slots
    under ``policy`` (Swaminathan et al., 2017, for additive slate rewards and a logging policy that
    chooses the slots independently: ``V = mean(R * (sum_j w_j - l + 1))`` over responses, where
    ``R`` is the response's summed reward over its ``l`` slots and ``w_j`` slot ``j``'s weight),
    with a bootstrap and a normal interval over responses.

    Where the logging policy is not a product over slots (a later slot's pool leaves out what an
    earlier one took), PI is approximate; slates with a single slot reduce to IPS."""
    if not decisions:
        raise ValueError("no logged exploration decisions to evaluate")
    pis = target_distributions(decisions, policy)
    by_slate: dict[str, list[int]] = {}
    for k, d in enumerate(decisions):
        by_slate.setdefault(d.slate or f"#{k}", []).append(k)
    terms = np.empty(len(by_slate))
    for j, rows in enumerate(by_slate.values()):
        w = np.array([pis[k][decisions[k].chosen] / decisions[k].mu[decisions[k].chosen] for k in rows])
        total = sum(decisions[k].reward for k in rows)
        terms[j] = total * (w.sum() - len(rows) + 1)
    rng = np.random.default_rng(seed)
    boot = terms[rng.integers(0, len(terms), size=(n_boot, len(terms)))].mean(axis=1)
    z = 1.959963984540054 if abs(alpha - 0.05) < 1e-12 else _z(1 - alpha / 2)
    lo, hi = 100 * alpha / 2, 100 * (1 - alpha / 2)
    return {"pi": float(terms.mean()), "pi_ci": [float(np.percentile(boot, lo)), float(np.percentile(boot, hi))],
            "pi_normal_ci": _normal_ci(terms, z), "slates": len(terms)}


def _z(q: float) -> float:
    """Standard normal quantile (bisection on erf; for non-default alphas)."""
    lo, hi = -10.0, 10.0
    for _ in range(100):
        mid = (lo + hi) / 2
        if 0.5 * (1 + math.erf(mid / math.sqrt(2))) < q:
            lo = mid
        else:
            hi = mid
    return (lo + hi) / 2


def decisions_from_impressions(rewarded: Iterable[tuple[Impression, float]]) -> list[Decision]:
    """Explored impressions (with rewards) as decisions; deterministic placements are skipped."""
    out = []
    for imp, reward in rewarded:
        if not imp.explored or not imp.pool:
            continue
        feats = (np.asarray(imp.pool_features, dtype=np.float64) / FEATURE_SCALE
                 if imp.pool_features and len(imp.pool_features) == len(imp.pool) else None)
        target = (np.asarray(imp.shadow_propensities, dtype=np.float64)
                  if imp.shadow_propensities and len(imp.shadow_propensities) == len(imp.pool) else None)
        out.append(Decision(list(imp.pool), np.asarray(imp.pool_propensities, dtype=np.float64),
                            np.asarray(imp.pool_scores, dtype=np.float64), imp.pool.index(imp.item_id), reward,
                            feats, target, imp.request_id))
    return out


def decisions_from_log(
    impressions: Iterable[Impression],
    events: Iterable[Event],
    window_s: float,
    now: float | None = None,
    types: Mapping[str, TypeSpec] = DEFAULT_TYPES,
) -> list[Decision]:
    """Join logged impressions with the event log (reward window) and keep explored slots."""
    return decisions_from_impressions(assign_rewards(impressions, events, window_s, types, now))


def read_decisions_jsonl(path: str | Path) -> list[Decision]:
    """Decisions from JSON lines ``{"pool", "mu", "scores", "chosen", "reward"}`` (exported logs;
    optional ``"features"`` (P, F), ``"target"`` (P,) and ``"slate"``)."""
    out = []
    with open(path) as f:
        for line_no, line in enumerate(f, start=1):
            if not line.strip():
                continue
            row = json.loads(line)
            missing = {"pool", "mu", "scores", "chosen", "reward"} - set(row)
            if missing:
                raise ValueError(f"{path}:{line_no}: missing fields {sorted(missing)}")
            out.append(Decision(list(row["pool"]), np.asarray(row["mu"], float), np.asarray(row["scores"], float), int(row["chosen"]),
                                float(row["reward"]), np.asarray(row["features"], float) if row.get("features") is not None else None,
                                np.asarray(row["target"], float) if row.get("target") is not None else None, str(row.get("slate", ""))))
    return out


def evaluate(decisions: list[Decision], policies: list[str], n_boot: int = 1000, alpha: float = 0.05, seed: int = 0,
             reward_model: Callable[[], RewardModel] | None = ridge) -> dict:
    """Every policy's estimates (per decision, and PI per response with several slots), plus the
    observed mean reward of the log."""
    slates = len({d.slate for d in decisions if d.slate})
    policies_out = {}
    for p in policies:
        # the shadow policy is logged beside item slots only (not beside category slots)
        rows = [d for d in decisions if d.target is not None] if p == "shadow" else decisions
        if not rows:
            raise ValueError("policy 'shadow': no decision has a logged shadow distribution "
                             "(log one with the app's explore_shadow setting)")
        est = estimate(rows, p, n_boot, alpha, seed, reward_model)
        if slates and slates < len(rows):  # responses with several exploration slots
            est["slate"] = slate_pi(rows, p, n_boot, alpha, seed)
        policies_out[p] = est
    return {
        "decisions": len(decisions),
        "observed_mean_reward": float(np.mean([d.reward for d in decisions])) if decisions else float("nan"),
        "alpha": alpha,
        "policies": policies_out,
    }


