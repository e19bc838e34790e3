"""The online learner and model hot-swap (see :mod:`liverec.learning.online`).

In-process with ``liverec serve``: set ``LIVEREC_LEARNER`` to a comma-separated list of apps; each
app with a promoted model in its registry (``<data_dir>/models/<app>``) learns from its committed
events (``LIVEREC_LEARNER_INTERVAL`` seconds between updates, default 10) and serves every
version that passes the guard rail. As a separate process: ``liverec learn`` tails the event log
and promotes versions; the server's promotion watcher swaps them in.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

from .finetune import FineTuneConfig, FineTuner, UpdateResult, bias_step, init_new_items
from .online import LearnerConfig, LearnerStats, OnlineLearner

if TYPE_CHECKING:
    from ..service import Service

ENV_APPS = "LIVEREC_LEARNER"
ENV_INTERVAL = "LIVEREC_LEARNER_INTERVAL"
ENV_BIAS_LR = "LIVEREC_LEARNER_BIAS_LR"  # per-event output-bias rate (default 0: off)


def attach(service: "Service", app: str, cfg: LearnerConfig | None = None, start: bool = True) -> OnlineLearner:
    """Learn from ``app``'s committed events and serve each promoted update (needs a promoted model)."""
    from ..model.registry import ModelRegistry
    from ..model.serving import PromotedModels, load_scorer

    registry = ModelRegistry.for_data_dir(service.settings.data_dir, app)
    router = service.pipeline.scorer
    if not isinstance(router, PromotedModels):
        router = PromotedModels()  # apps without a model get nothing from it: the baseline answers
        service.pipeline.set_scorer(router)
    if app not in router.by_app:
        router.set(app, load_scorer(registry, app))  # FileNotFoundError when nothing is promoted
    learner = OnlineLearner(app, service.state, lambda: router.by_app[app], lambda sc: router.set(app, sc),
                            registry, service.catalog.get, cfg)
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
    bias_lr = float(os.environ.get(ENV_BIAS_LR, "0"))
    if not bias_lr >= 0:
        raise ValueError(f"{ENV_BIAS_LR}={bias_lr!r}: expected a rate >= 0")
    out = []
    for app in apps:
        try:
            out.append(attach(service, app, LearnerConfig(interval_s=interval, bias_lr=bias_lr)))
        except FileNotFoundError:
            continue
    return out


__all__ = [
    "FineTuneConfig", "FineTuner", "UpdateResult", "bias_step", "init_new_items", "LearnerConfig", "LearnerStats",
    "OnlineLearner", "attach", "attach_from_env",
]
