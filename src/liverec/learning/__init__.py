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

from ..catalog import CatalogIndex
from ..erasure import UserDeletion
from ..events import Event
from ..model.registry import ModelRegistry
from ..model.serving import PromotedModels
from ..runtime.follower import LogFollower
from ..state import StateStore
from ..store.base import Change, Item, Store
from .finetune import FineTuneConfig, FineTuner, UpdateResult, bias_step, init_new_items
from .online import LearnerConfig, LearnerStats, OnlineLearner


class Learners:
    """The in-process online learners of a service (a component; one per app asked for).

    ``observe`` is registered as a listener of the service's folds when the service is built;
    ``start`` creates a learner for each configured app whose model is being served (apps
    without a promoted version are skipped) and starts its loop.
    """

    def __init__(self, apps: Sequence[str], cfg: LearnerConfig, models_dir: Path, router: PromotedModels,
                 state: StateStore, items: Callable[[str, str], Item | None],
                 position: Callable[[], tuple[int, int]] | None = None,
                 changes: Callable[[int], list[Change]] | None = None) -> None:
        self.apps = list(apps)
        self.position = position  # the service's log position (event, change)
        self.changes = changes  # the changes feed after a position
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
                                registry, self.items, cfg or self.cfg, self.position, self.changes)
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

    def forget_user(self, deletion: UserDeletion) -> dict[str, int]:
        """Drop a deleted user from the learners' buffers (see :meth:`OnlineLearner.forget_user`)."""
        return {"learner_users": sum(learner.forget_user(deletion) for learner in list(self.running.values()))}

    def start(self) -> None:
        for app in self.apps:
            if app in self.router.by_app:
                self.add(app)

    def stop(self) -> None:
        for learner in list(self.running.values()):
            learner.stop()


def learner_follower(store: Store, app: str, state: StateStore, catalog: CatalogIndex, learner: OnlineLearner) -> LogFollower:
    """The learner role's follower of the shared log (``liverec learn``): ``app``'s events into
    the state and the learner's buffers, item upserts into the catalog, user deletions out of
    both (the change names the user by digest: found in the state)."""

    def apply_events(events: list[Event]) -> None:
        mine = [e for e in events if e.app == app]
        if mine:
            state.apply_batch(mine)
            learner.observe(mine)

    def apply_change(change: Change) -> None:  # the same changes the API workers fold
        if change.app != app:
            return
        if change.kind == "item":
            item = store.catalog.get(change.app, change.key)
            if item is not None:
                catalog.put(item)
        elif change.kind == "user_deleted":
            deletion = UserDeletion(change.app, change.key, change.seq, change.event_seq)
            deletion.user_id = deletion.find(state.users(change.app))
            if deletion.user_id is not None:
                state.delete(change.app, deletion.user_id)
            learner.forget_user(deletion)

    return LogFollower(store.events, apply_events, apply_change)


__all__ = [
    "FineTuneConfig", "FineTuner", "UpdateResult", "bias_step", "init_new_items", "LearnerConfig", "LearnerStats",
    "Learners", "OnlineLearner", "learner_follower",
]
