"""What an experiment is: variants with traffic shares, and which variant a user sees.

An experiment belongs to one app and has two or more **variants**. Each variant may override
the model version that scores (a registry version of the app, served beside the promoted one)
and any field of the app's :class:`~liverec.ranking.config.RankingConfig` (the exploration
policy, MMR ``diversity``, ...). Two kinds:

- ``split``: each user sees one variant, chosen by a stable hash of (experiment id, user id)
  against the variants' ``share`` (relative weights, normalised) of the experiment's ``traffic``
  (users outside ``traffic`` get the app's own configuration, untagged);
- ``interleave``: exactly two variants; every request in ``traffic`` ranks with both and the
  slate is built by team draft (:mod:`liverec.experiments.interleave`).

>>> e = Experiment.from_record("e1", "shop", "t", "split", {"variants": [{"name": "A"}, {"name": "B"}]}, 0.0)
>>> [v.share for v in e.variants]
[0.5, 0.5]
>>> e.assign("u1") == e.assign("u1")
True
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass, field
from typing import Any, Mapping

KINDS = ("split", "interleave")
# Settings of the app's folds, not of one request's ranking: the reward window decides when
# impressions close for the bandit of every variant at once.
NOT_PER_VARIANT = frozenset({"reward_window_s"})


def unit_hash(experiment_id: str, user_id: str) -> float:
    """A stable, uniform number in [0, 1) for (experiment, user): the same in every process and
    every release (BLAKE2b, not Python's salted ``hash``).

    >>> 0.0 <= unit_hash("e1", "u1") < 1.0 and unit_hash("e1", "u1") != unit_hash("e2", "u1")
    True
    """
    digest = hashlib.blake2b(f"{experiment_id}\x00{user_id}".encode("utf-8", "surrogatepass"), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2.0**64


def variant_name(variant: Mapping[str, Any], position: int) -> str:
    """The variant's name, or its letter by position (A, B, ...; A1, B1, ... past Z).

    >>> variant_name({}, 0), variant_name({"name": "mmr"}, 1), variant_name({}, 27)
    ('A', 'mmr', 'B1')
    """
    name = variant.get("name")
    if name is not None:
        return str(name)
    letter = chr(ord("A") + position % 26)
    return letter if position < 26 else f"{letter}{position // 26}"


@dataclass(frozen=True)
class Variant:
    name: str
    share: float
    model_version: str | None = None
    ranking: Mapping[str, Any] = field(default_factory=dict)  # RankingConfig fields to override

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "share": self.share, "model_version": self.model_version, "ranking": dict(self.ranking)}


@dataclass(frozen=True)
class Experiment:
    experiment_id: str
    app: str
    name: str
    kind: str
    variants: tuple[Variant, ...]
    created_at: float
    traffic: float = 1.0  # share of the app's users in the experiment
    window_s: float = 1800.0  # feedback this long after an impression counts for it
    confidence: float = 0.95
    stopped_at: float | None = None

    @property
    def running(self) -> bool:
        return self.stopped_at is None

    def spec(self) -> dict[str, Any]:
        """What the store keeps beside the id, app, name, kind and times."""
        return {"variants": [v.to_dict() for v in self.variants], "traffic": self.traffic, "window_s": self.window_s,
                "confidence": self.confidence}

    @classmethod
    def from_record(cls, experiment_id: str, app: str, name: str, kind: str, spec: Mapping[str, Any], created_at: float,
                    stopped_at: float | None = None) -> Experiment:
        raw = list(spec.get("variants") or [])
        weights = [float(v["share"]) if v.get("share") is not None else 1.0 for v in raw]
        total = sum(weights) or 1.0
        variants = tuple(Variant(variant_name(v, k), w / total, v.get("model_version"), dict(v.get("ranking") or {}))
                         for k, (v, w) in enumerate(zip(raw, weights)))
        return cls(experiment_id, app, name, kind, variants, created_at, float(spec.get("traffic", 1.0)),
                   float(spec.get("window_s", 1800.0)), float(spec.get("confidence", 0.95)), stopped_at)

    def assign(self, user_id: str) -> Variant | None:
        """The user's variant (``None``: outside the experiment's traffic). For a ``split``
        experiment the hash, scaled to the traffic, falls into one variant's share; for
        ``interleave`` every user in the traffic sees both (the first variant is returned)."""
        u = unit_hash(self.experiment_id, user_id)
        if u >= self.traffic:
            return None
        if self.kind == "interleave":
            return self.variants[0]
        u /= self.traffic  # uniform in [0, 1) again
        edge = 0.0
        for v in self.variants:
            edge += v.share
            if u < edge:
                return v
        return self.variants[-1]  # rounding of shares that sum to 1


def check(kind: str, variants: list[Mapping[str, Any]], traffic: float, window_s: float, confidence: float,
          ranking_fields: set[str], versions: set[str]) -> list[dict[str, Any]]:
    """Field errors of an experiment's definition (empty: valid). ``ranking_fields``: the names
    a variant may override; ``versions``: the app's registered model versions."""
    errors: list[dict[str, Any]] = []

    def bad(where: str, value: Any, expected: str) -> None:
        errors.append({"field": where, "value": value, "expected": expected})

    if kind not in KINDS:
        bad("kind", kind, f"one of {', '.join(KINDS)}")
    if kind == "interleave" and len(variants) != 2:
        bad("variants", len(variants), "exactly two variants in an interleaving experiment")
    if len(variants) < 2:
        bad("variants", len(variants), "at least two variants")
    if not (0.0 < traffic <= 1.0):
        bad("traffic", traffic, "a share of the app's users in (0, 1]")
    if not (window_s > 0 and math.isfinite(window_s)):
        bad("window_s", window_s, "a positive number of seconds")
    if not (0.5 <= confidence <= 0.999):
        bad("confidence", confidence, "a level in [0.5, 0.999], e.g. 0.95")
    names = [variant_name(v, k) for k, v in enumerate(variants)]
    for k, name in enumerate(names):
        if names.index(name) != k:
            bad(f"variants[{k}].name", name, "a name no other variant of the experiment has")
    for k, v in enumerate(variants):
        share = v.get("share")
        if share is not None and not (0.0 < float(share) and math.isfinite(float(share))):
            bad(f"variants[{k}].share", share, "a positive weight (the shares are normalised to sum to 1)")
    for k, v in enumerate(variants):
        version = v.get("model_version")
        if version is not None and version not in versions:
            bad(f"variants[{k}].model_version", version,
                f"a registered model version of the app ({', '.join(sorted(versions)) or 'none registered'})")
        for name in sorted(set(v.get("ranking") or {}) - ranking_fields):
            bad(f"variants[{k}].ranking.{name}", (v.get("ranking") or {})[name],
                "a ranking setting a variant may override" + (" (set per app: it decides when impressions close)"
                                                               if name in NOT_PER_VARIANT else ""))
    return errors
