"""The ranking policy after the model: feedback, diversity, exploration, explanations.

:func:`build_ranking` wires the stages for a service; :func:`read_settings` reads the per-app
configuration from a JSON file (``Settings.ranking_config``, ``LIVEREC_RANKING_CONFIG``; none: the
defaults), e.g.::

    {"default": {"half_life_s": 604800, "diversity": 0.0},
     "apps": {"news": {"half_life_s": 3600, "explore_slots": [2, 5, 8]}}}
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable, Mapping

from ..catalog import CatalogIndex
from ..config import Settings
from ..events import TypeSpec
from .bandit import RewardTracker, ThompsonBandit
from .config import RankingConfig, RankingSettings
from .contextual import LinearThompson
from .impressions import (
    Impression, ImpressionLog, MemoryImpressionLog, PostgresImpressionLog, SQLiteImpressionLog, assign_rewards, open_impressions,
)
from .stages import RankingStages
from .vectors import CatalogTextVectors, ItemSpace, ScorerEmbeddings


def read_settings(path: str | Path | None) -> RankingSettings:
    """The ranking settings in the JSON file at ``path``; the defaults when ``path`` is None."""
    if not path:
        return RankingSettings()
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ValueError(f"{Settings.env_var('ranking_config')}={path}: expected a readable JSON file ({exc})") from None
    return RankingSettings.from_dict(data)


def load_settings(path: str | Path | None = None) -> RankingSettings:
    """Ranking settings from ``path``, else from the file the process's settings name
    (``LIVEREC_RANKING_CONFIG``); the defaults if neither names one."""
    return read_settings(path or Settings().ranking_config)


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
    """The ranking stages of a service: model embeddings > catalog text vectors > ``similar``.

    ``settings`` / ``seed`` not given: those the process's settings name (``Settings().ranking_config``,
    ``Settings().ranking_seed``); a caller holding a :class:`~liverec.config.Settings` passes
    ``read_settings(s.ranking_config)`` and ``s.ranking_seed``.
    """
    if settings is None or seed is None:
        env = Settings()  # the process's LIVEREC_* variables
        if settings is None:
            settings = read_settings(env.ranking_config)
        if seed is None:
            seed = env.ranking_seed
    space = ItemSpace([ScorerEmbeddings(scorer), CatalogTextVectors(catalog)], similar, pairs)
    log = impressions if impressions is not None else MemoryImpressionLog()
    return RankingStages(settings, space, catalog.get, ThompsonBandit(seed), log, types, categories=catalog.category_matrix,
                         contextual=LinearThompson(seed))


__all__ = [
    "RankingConfig", "RankingSettings", "RankingStages", "ItemSpace", "ThompsonBandit", "RewardTracker", "LinearThompson",
    "Impression", "ImpressionLog", "MemoryImpressionLog", "SQLiteImpressionLog", "PostgresImpressionLog", "assign_rewards",
    "open_impressions",
    "build_ranking", "load_settings", "read_settings",
]
