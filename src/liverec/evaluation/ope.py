"""Off-policy evaluation of exploration-slot policies from logged impressions.

Every slot the bandit filled is one logged decision: the candidate pool, the logging policy's
probability of each candidate (``mu``), the candidates' scores, which candidate was shown and its
reward (1 positive / 0 negative / 0.5 no feedback within the window; see
:mod:`liverec.ranking.impressions`). A target policy ``pi`` maps (scores, mu) to a distribution
over the same pool, and with importance weights ``w = pi(a) / mu(a)`` of the shown candidates:

* IPS:   ``V = mean(w * r)``                (unbiased when ``mu > 0`` wherever ``pi > 0``)
* SNIPS: ``V = sum(w * r) / sum(w)``        (self-normalised: biased, much lower variance)

Confidence intervals are percentile bootstrap intervals over decisions (seeded), plus the normal
approximation for IPS; the effective sample size ``(sum w)^2 / sum w^2`` says how much of the log a
policy really uses.

Target policies (names for the CLI): ``logging`` (the logged policy itself: IPS = the observed
mean), ``greedy`` (the best-scored candidate), ``uniform``, ``softmax:T`` (softmax of scores / T).

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
from typing import Iterable, Mapping

import numpy as np

from ..events import DEFAULT_TYPES, Event, TypeSpec
from ..ranking.impressions import Impression, assign_rewards


@dataclass(frozen=True)
class Decision:
    """One logged exploration decision."""

    pool: list[str]
    mu: np.ndarray  # (P,) logging probabilities (sum 1)
    scores: np.ndarray  # (P,) candidate scores at decision time
    chosen: int  # index into pool
    reward: float


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
    raise ValueError(f"unknown policy {name!r}; expected logging, greedy, uniform or softmax:T")


def _weights(decisions: list[Decision], policy: str) -> tuple[np.ndarray, np.ndarray]:
    """(n,) importance weights pi(a)/mu(a) of the shown candidates and (n,) rewards."""
    w = np.empty(len(decisions))
    r = np.array([d.reward for d in decisions], dtype=np.float64)
    by_size: dict[int, list[int]] = {}
    for k, d in enumerate(decisions):
        by_size.setdefault(len(d.pool), []).append(k)
    for rows in by_size.values():  # pools of one size are evaluated as one (n_p, P) batch
        scores = np.stack([decisions[k].scores for k in rows])  # (n_p, P)
        mu = np.stack([decisions[k].mu for k in rows])  # (n_p, P)
        chosen = np.array([decisions[k].chosen for k in rows])[:, None]  # (n_p, 1)
        pi = policy_distribution(policy, scores, mu)  # (n_p, P)
        w[rows] = (np.take_along_axis(pi, chosen, 1) / np.take_along_axis(mu, chosen, 1))[:, 0]
    return w, r


def estimate(decisions: list[Decision], policy: str, n_boot: int = 1000, alpha: float = 0.05, seed: int = 0) -> dict[str, float]:
    """IPS and SNIPS estimates of ``policy`` with (1 - alpha) bootstrap confidence intervals."""
    if not decisions:
        raise ValueError("no logged exploration decisions to evaluate")
    w, r = _weights(decisions, policy)
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
    se = float(wr.std(ddof=1) / math.sqrt(n)) if n > 1 else float("nan")
    return {
        "ips": ips,
        "ips_ci": [float(np.percentile(boot_ips, lo)), float(np.percentile(boot_ips, hi))],
        "ips_normal_ci": [ips - z * se, ips + z * se],
        "snips": snips,
        "snips_ci": [float(np.nanpercentile(boot_snips, lo)), float(np.nanpercentile(boot_snips, hi))],
        "ess": float(w.sum() ** 2 / max((w ** 2).sum(), 1e-300)),
        "decisions": n,
    }


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
        out.append(Decision(list(imp.pool), np.asarray(imp.pool_propensities, dtype=np.float64),
                            np.asarray(imp.pool_scores, dtype=np.float64), imp.pool.index(imp.item_id), reward))
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
    """Decisions from JSON lines ``{"pool", "mu", "scores", "chosen", "reward"}`` (exported logs)."""
    out = []
    with open(path) as f:
        for line_no, line in enumerate(f, start=1):
            if not line.strip():
                continue
            row = json.loads(line)
            missing = {"pool", "mu", "scores", "chosen", "reward"} - set(row)
            if missing:
                raise ValueError(f"{path}:{line_no}: missing fields {sorted(missing)}")
            out.append(Decision(list(row["pool"]), np.asarray(row["mu"], float), np.asarray(row["scores"], float), int(row["chosen"]), float(row["reward"])))
    return out


def evaluate(decisions: list[Decision], policies: list[str], n_boot: int = 1000, alpha: float = 0.05, seed: int = 0) -> dict:
    """Every policy's estimates, plus the observed mean reward of the log."""
    return {
        "decisions": len(decisions),
        "observed_mean_reward": float(np.mean([d.reward for d in decisions])) if decisions else float("nan"),
        "alpha": alpha,
        "policies": {p: estimate(decisions, p, n_boot, alpha, seed) for p in policies},
    }


