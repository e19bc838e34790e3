"""The online learner and model hot-swap (see :mod:`liverec.learning.online`).

In-process with ``liverec serve``: set ``LIVEREC_LEARNER`` to a comma-separated list of apps; each
app with a promoted model in its registry (``<data_dir>/models/<app>``) learns from its committed
events (``LIVEREC_LEARNER_INTERVAL`` seconds between updates, default 10) and serves every
version that passes the guard rail. As a separate process: ``liverec learn`` tails the event log
and promotes versions; the server's promotion watcher swaps them in.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Callable, Sequence

from ..events import Event
from ..model.registry import ModelRegistry
from ..model.serving import PromotedModels
from ..state import StateStore
from ..store.base import Item
from .finetune import FineTuneConfig, FineTuner, UpdateResult, bias_step, init_new_items
from .online import LearnerConfig, LearnerStats, OnlineLearner


class Learners:
    """The in-process online learners of a service (a component; one per app asked for).

    ``observe`` is registered as a listener of the service's folds when the service is built;
    ``start`` creates a learner for each configured app whose model is being served (apps
    without a promoted version are skipped) and starts its loop.
    """

    def __init__(self, apps: Sequence[str], cfg: LearnerConfig, models_dir: Path, router: PromotedModels,
                 state: StateStore, items: Callable[[str, str], Item | None]) -> None:
        self.apps = list(apps)
        self.cfg = cfg
        self.models_dir = Path(models_dir)
        self.router = router
        self.state = state
        self.items = items
        self.running: dict[str, OnlineLearner] = {}
        self._lock = threading.Lock()

    def add(self, app: str, cfg: LearnerConfig | None = None, start: bool = True) -> OnlineLearner:
        """A learner for ``app`` over the model the router serves for it (KeyError when none)."""
        registry = ModelRegistry(self.models_dir / app)
        if app not in self.router.by_app:
            raise KeyError(f"app {app!r} has no promoted model to learn from")
        learner = OnlineLearner(app, self.state, lambda: self.router.by_app[app], lambda sc: self.router.set(app, sc),
                                registry, self.items, cfg or self.cfg)
        self.register(learner)
        if start:
            learner.start()
        return learner

    def register(self, learner: OnlineLearner) -> None:
        """Run ``learner`` as this service's learner of its app (fed every committed event)."""
        with self._lock:
            self.running[learner.app] = learner

    def observe(self, events: list[Event]) -> None:
        for learner in list(self.running.values()):
            learner.observe(events)

    def start(self) -> None:
        for app in self.apps:
            if app in self.router.by_app:
                self.add(app)

    def stop(self) -> None:
        for learner in list(self.running.values()):
            learner.stop()


__all__ = [
    "FineTuneConfig", "FineTuner", "UpdateResult", "bias_step", "init_new_items", "LearnerConfig", "LearnerStats",
    "Learners", "OnlineLearner",
]
