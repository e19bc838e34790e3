"""The online learner and model hot-swap (see :mod:`liverec.learning.online`).

In-process with ``liverec serve``: set ``LIVEREC_LEARNER`` to a comma-separated list of apps; each
app with a published version under ``<data_dir>/online_models/<app>`` is served by it and learns
from its committed events (``LIVEREC_LEARNER_INTERVAL`` seconds between updates, default 10).
As a separate process: ``liverec learn`` tails the event log and publishes versions.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

from .finetune import FineTuneConfig, FineTuner, UpdateResult, init_new_items
from .online import LearnerConfig, LearnerStats, OnlineLearner
from .serving import DirectoryVersions, LearnedScorer, Vocabulary

if TYPE_CHECKING:
    from ..service import Service

ENV_APPS = "LIVEREC_LEARNER"
ENV_INTERVAL = "LIVEREC_LEARNER_INTERVAL"


def versions_dir(data_dir: str | Path) -> Path:
    return Path(data_dir) / "online_models"


def attach(service: "Service", app: str, cfg: LearnerConfig | None = None, start: bool = True) -> OnlineLearner:
    """Serve ``app``'s latest published version and learn from its committed events."""
    versions = DirectoryVersions(versions_dir(service.settings.data_dir))
    model, vocab, version = versions.load(app)
    service.pipeline.set_scorer(LearnedScorer(app, model, vocab, version))

    def serving() -> LearnedScorer:
        scorer = service.pipeline.scorer
        if not isinstance(scorer, LearnedScorer):
            raise RuntimeError(f"the served scorer is {type(scorer).__name__}, not the learner's")
        return scorer

    learner = OnlineLearner(app, service.state, serving, service.pipeline.set_scorer, versions, service.catalog.get, cfg)
    service.listeners.append(learner.observe)
    if start:
        learner.start()
    return learner


def attach_from_env(service: "Service") -> list[OnlineLearner]:
    """The learners ``LIVEREC_LEARNER`` asks for (apps without a published version are skipped)."""
    apps = [a for a in os.environ.get(ENV_APPS, "").split(",") if a]
    if not apps:
        return []
    interval = float(os.environ.get(ENV_INTERVAL, "10"))
    out = []
    for app in apps:
        try:
            out.append(attach(service, app, LearnerConfig(interval_s=interval)))
        except FileNotFoundError:
            continue
    return out


__all__ = [
    "FineTuneConfig", "FineTuner", "UpdateResult", "init_new_items", "LearnerConfig", "LearnerStats",
    "OnlineLearner", "DirectoryVersions", "LearnedScorer", "Vocabulary", "attach", "attach_from_env", "versions_dir",
]
