"""Per-app configuration of the ranking policy (feedback, diversity, exploration).

One :class:`RankingConfig` holds every knob of the stages after the model. A
:class:`RankingSettings` maps apps to configs (``default`` for apps without their own), so a shop
and a news app on the same service can decay feedback at different speeds.

>>> s = RankingSettings(apps={"news": RankingConfig(half_life_s=3600.0)})
>>> s.for_app("news").half_life_s, s.for_app("shop").half_life_s
(3600.0, 604800.0)
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, fields
from typing import Any, Mapping

EXPLORE_POLICIES = ("thompson", "contextual")
CONTEXTUAL_LEARN = ("shown", "explored")  # which impressions the learned policy learns from


@dataclass(frozen=True)
class RankingConfig:
    """Knobs of the feedback policy, the diversity reranker and the bandit stage.

    Adjustments are in units of the min-max normalised model score of the candidate pool (the
    best candidate has 1, the worst 0), so ``dislike_item=2`` sends a disliked item below every
    other candidate regardless of the scorer's scale.
    """

    # ---- feedback policy ---------------------------------------------------------------------
    half_life_s: float = 7 * 86400.0  # feedback effects halve every half-life (event time)
    dislike_item: float = 2.0  # the disliked item itself
    dislike_neighbour: float = 0.6  # its neighbours, times similarity
    skip_item: float = 0.5
    skip_neighbour: float = 0.15
    scoped_dislike: float = 1.0  # items with a disliked category/attribute value
    scoped_skip: float = 0.4  # items with a skipped category/attribute value
    like_boost: float = 0.5  # neighbours of liked/favorited/shared/purchased items, times similarity
    click_boost: float = 0.2  # neighbours of clicked items, times similarity (a weaker positive)
    category_boost: float = 0.3  # items of categories with net positive recent feedback (full at category_repeat likes)
    like_mass: float = 2.0  # weight of one like in a category's net feedback (a skip counts skip_mass against)
    click_mass: float = 1.0  # weight of one click in it
    recency_events: float = 20.0  # an item feedback signal halves with every this many newer events of the user (0 = off)
    category_repeat: int = 2  # negative items in one category before the category is demoted
    category_demote: float = 0.8  # full demotion of such a category
    skip_mass: float = 1.0  # weight of one skip in the category count (a dislike counts dislike_mass)
    dislike_mass: float = 1.5
    # items the user read past without reacting (the cascade reading of a feed, ranking/examined.py;
    # off by default: a grid or carousel has no reading order), e.g. passed_item 0.3, passed_mass 0.5
    passed_item: float = 0.0  # the passed item's own demotion
    passed_mass: float = 0.0  # its weight against its categories (never demotes a category alone)
    max_passed: int = 20  # newest passed-over items considered per request
    min_similarity: float = 0.3  # cosine below this is "not a neighbour"
    max_signals: int = 40  # most recent feedback items considered per request
    pool: int = 200  # candidates (after hard filters) the rerankers work on
    streak_negatives: int = 3  # this many negative events in a row (skip, dislike, block) = the taste moved (0 = off)
    streak_pool: int = 400  # candidates considered while on such a streak (twice the usual pool)
    streak_diversity: float = 0.7  # MMR diversity at least this high (over the best 100 of that pool) while on a streak
    streak_forget: float = 0.2  # after such a run, older likes/clicks in the categories it kept hitting count this much (1 = keep)
    category_candidates: int = 20  # best-scored items of each category with net positive recent feedback join the pool (0 = off)
    neighbour_candidates: int = 30  # neighbours of each recent liked item added to the pool
    # ---- diversity ---------------------------------------------------------------------------
    diversity: float = 0.0  # default MMR trade-off (0 = relevance only, 1 = diversity only)
    # ---- exploration -------------------------------------------------------------------------
    explore: bool = True  # the bandit decides ``explore_slots`` positions
    explore_slots: tuple[int, ...] = (4, 9)  # 0-based slate positions the bandit fills
    explore_pool: int = 20  # candidates the bandit chooses among for one slot
    explore_draws: int = 256  # Thompson draws that give each slot's selection distribution
    explore_categories: bool = True  # the first exploration slot explores categories (and leads the slate on a streak)
    category_prior: float = 1.0  # Beta(prior, prior) of a category the user has given no feedback on
    explore_epsilon: float = 0.05  # uniform mixing: every pool item keeps propensity >= eps / pool
    prior_strength: float = 4.0  # Beta prior pseudo-counts, centred on the model's rank prior
    reward_window_s: float = 1800.0  # no feedback within this window after an impression = 0.5
    # which policy fills the item exploration slots: "thompson" (per-item Beta posteriors,
    # ranking/bandit.py) or "contextual" (linear Thompson sampling over features of the user and
    # the candidate, ranking/contextual.py)
    explore_policy: str = "thompson"
    explore_shadow: bool = False  # also log the other policy's distribution of each item slot (for `liverec ope --policies shadow`)
    contextual_ridge: float = 4.0  # prior precision of the contextual policy's weights (pseudo-impressions)
    contextual_noise: float = 0.3  # reward noise (standard deviation) of its regression: the width of its draws
    # which impressions log the features its posterior learns from: "shown" (every item shown while
    # exploring) or "explored" (only the exploration slots: the positions it chooses for)
    contextual_learn: str = "shown"
    # ---- explanations ------------------------------------------------------------------------
    because_events: int = 3  # history events listed per item

    def __post_init__(self) -> None:
        if not (self.half_life_s > 0 and math.isfinite(self.half_life_s)):
            raise ValueError(f"half_life_s={self.half_life_s!r}: expected a positive number of seconds")
        if not 0.0 <= self.diversity <= 1.0:
            raise ValueError(f"diversity={self.diversity!r}: expected a number in [0, 1]")
        if not 0.0 <= self.streak_diversity <= 1.0:
            raise ValueError(f"streak_diversity={self.streak_diversity!r}: expected a number in [0, 1]")
        if not 0.0 <= self.streak_forget <= 1.0:
            raise ValueError(f"streak_forget={self.streak_forget!r}: expected a number in [0, 1]")
        if self.category_candidates < 0 or not self.category_prior > 0:
            raise ValueError(f"category_candidates={self.category_candidates!r}, category_prior={self.category_prior!r}: "
                             "expected >= 0 and > 0")
        if self.streak_negatives < 0 or self.streak_pool < 1:
            raise ValueError(f"streak_negatives={self.streak_negatives!r}, streak_pool={self.streak_pool!r}: expected >= 0 and >= 1")
        if not 0.0 <= self.explore_epsilon <= 1.0:
            raise ValueError(f"explore_epsilon={self.explore_epsilon!r}: expected a number in [0, 1]")
        if self.pool < 1 or self.explore_pool < 1 or self.explore_draws < 1:
            raise ValueError("pool, explore_pool and explore_draws must be >= 1")
        if not (self.recency_events >= 0 and math.isfinite(self.recency_events)):
            raise ValueError(f"recency_events={self.recency_events!r}: expected a number of events >= 0 (0 = off)")
        if self.explore_policy not in EXPLORE_POLICIES:
            raise ValueError(f"explore_policy={self.explore_policy!r}: expected one of {', '.join(EXPLORE_POLICIES)}")
        if self.contextual_learn not in CONTEXTUAL_LEARN:
            raise ValueError(f"contextual_learn={self.contextual_learn!r}: expected one of {', '.join(CONTEXTUAL_LEARN)}")
        if not (self.contextual_ridge > 0 and self.contextual_noise > 0):
            raise ValueError(f"contextual_ridge={self.contextual_ridge!r}, contextual_noise={self.contextual_noise!r}: expected > 0")
        if any(p < 0 for p in self.explore_slots):
            raise ValueError(f"explore_slots={self.explore_slots!r}: expected 0-based positions")

    def decay(self, age_s: float) -> float:
        """Weight of a feedback event ``age_s`` seconds old: ``0.5 ** (age / half_life)``."""
        return 0.5 ** (max(age_s, 0.0) / self.half_life_s)

    def recency(self, newer_events: int) -> float:
        """Weight of item feedback followed by ``newer_events`` events of the same user."""
        if self.recency_events <= 0:
            return 1.0
        return 0.5 ** (max(newer_events, 0) / self.recency_events)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "RankingConfig":
        """Build from a plain mapping, naming any unknown key."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown ranking settings {unknown}; expected some of {sorted(known)}")
        values = dict(data)
        if "explore_slots" in values:
            values["explore_slots"] = tuple(int(p) for p in values["explore_slots"])
        return cls(**values)


@dataclass(frozen=True)
class RankingSettings:
    """The config per app; ``default`` serves apps without an entry."""

    default: RankingConfig = field(default_factory=RankingConfig)
    apps: Mapping[str, RankingConfig] = field(default_factory=dict)

    def for_app(self, app: str) -> RankingConfig:
        return self.apps.get(app, self.default)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "RankingSettings":
        """``{"default": {...}, "apps": {"news": {...}}}``; app entries override the default."""
        base = dict(data.get("default", {}))
        default = RankingConfig.from_dict(base)
        apps = {name: RankingConfig.from_dict({**base, **dict(over)}) for name, over in dict(data.get("apps", {})).items()}
        return cls(default, apps)
