"""The ranking policy after the model: feedback, diversity, exploration, explanations.

:func:`build_ranking` wires the stages for a service; :func:`load_settings` reads the per-app
configuration from the JSON file named by ``LIVEREC_RANKING_CONFIG`` (absent: defaults), e.g.::

    {"default": {"half_life_s": 604800, "diversity": 0.0},
     "apps": {"news": {"half_life_s": 3600, "explore_slots": [2, 5, 8]}}}
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Callable, Mapping

from ..catalog import CatalogIndex
from ..events import TypeSpec
from .bandit import RewardTracker, ThompsonBandit
from .config import RankingConfig, RankingSettings
from .impressions import (
    Impression, ImpressionLog, MemoryImpressionLog, PostgresImpressionLog, SQLiteImpressionLog, assign_rewards, open_impressions,
)
from .stages import RankingStages
from .vectors import CatalogTextVectors, ItemSpace, ScorerEmbeddings

ENV_CONFIG = "LIVEREC_RANKING_CONFIG"
ENV_SEED = "LIVEREC_RANKING_SEED"


def load_settings(path: str | Path | None = None) -> RankingSettings:
    """Ranking settings from ``path`` or ``$LIVEREC_RANKING_CONFIG`` (a JSON file); defaults if neither."""
    path = path or os.environ.get(ENV_CONFIG)
    if not path:
        return RankingSettings()
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ValueError(f"{ENV_CONFIG}={path}: expected a readable JSON file ({exc})") from None
    return RankingSettings.from_dict(data)


def build_ranking(
    catalog: CatalogIndex,
    scorer: Callable[[], Any],
    similar: Callable[[str, str, int], list[tuple[str, float]]],
    types: Mapping[str, TypeSpec],
    impressions: ImpressionLog | None,
    settings: RankingSettings | None = None,
    seed: int | None = None,
    pairs: Callable[[str, list[str], list[str]], Any] | None = None,
) -> RankingStages:
    """The ranking stages of a service: model embeddings > catalog text vectors > ``similar``."""
    settings = settings or load_settings()
    seed = int(os.environ.get(ENV_SEED, "0")) if seed is None else seed
    space = ItemSpace([ScorerEmbeddings(scorer), CatalogTextVectors(catalog)], similar, pairs)
    log = impressions if impressions is not None else MemoryImpressionLog()
    return RankingStages(settings, space, catalog.get, ThompsonBandit(seed), log, types, categories=catalog.category_matrix)


__all__ = [
    "RankingConfig", "RankingSettings", "RankingStages", "ItemSpace", "ThompsonBandit", "RewardTracker",
    "Impression", "ImpressionLog", "MemoryImpressionLog", "SQLiteImpressionLog", "PostgresImpressionLog", "assign_rewards",
    "open_impressions",
    "build_ranking", "load_settings",
]
