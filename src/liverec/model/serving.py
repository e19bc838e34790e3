"""Serving the promoted model: one :class:`TransformerScorer` per app behind one scorer object.

:class:`PromotedModels` is what the service installs as its scorer: it routes each call to the
app's promoted Transformer and answers empty for apps without one (the pipeline then falls back
to the co-occurrence baseline). :func:`attach_promoted` loads every app's promoted version at
start and, with ``watch=True``, swaps in newly promoted versions while serving (the dict entry is
replaced in one assignment; requests in flight finish on the old model).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

from liverec.events import Event
from liverec.model.registry import ModelRegistry, PromotionWatcher
from liverec.model.scorer import TransformerScorer
from liverec.model.text import MiniLMEncoder, TextEncoder
from liverec.recommend.scoring import Scored
from liverec.state import UserState

if TYPE_CHECKING:
    from liverec.service import Service


class PromotedModels:
    """A scorer that delegates to the promoted :class:`TransformerScorer` of each app."""

    name = "transformer"

    def __init__(self) -> None:
        self.by_app: dict[str, TransformerScorer] = {}

    @property
    def version(self) -> str | None:
        return ",".join(f"{a}:{s.version}" for a, s in sorted(self.by_app.items())) or None

    @property
    def metrics(self) -> dict[str, Any]:
        return {a: s.metrics for a, s in self.by_app.items()}

    def set(self, app: str, scorer: TransformerScorer) -> None:
        self.by_app[app] = scorer  # one assignment: in-flight requests keep the old object

    def observe(self, app: str, event: Event) -> None:
        """The Transformer reads the current state at request time; nothing to count."""

    def forget_user(self, app: str, events: Sequence[Event]) -> None:
        """No per-user statistics are kept."""

    def score(self, app: str, state: UserState | None, n: int) -> Scored:
        s = self.by_app.get(app)
        return s.score(app, state, n) if s is not None else Scored.empty()

    def similar(self, app: str, item_id: str, n: int) -> list[tuple[str, float]]:
        s = self.by_app.get(app)
        return s.similar(app, item_id, n) if s is not None else []


def load_scorer(registry: ModelRegistry, app: str, version: str | None = None,
                text_encoder: TextEncoder | None = None) -> TransformerScorer:
    """A :class:`TransformerScorer` for ``version`` (default: promoted) of ``registry``."""
    art = registry.load(version)
    enc = text_encoder
    if enc is None and art.model.cfg.text_dim:
        enc = MiniLMEncoder()
    return TransformerScorer(app, art.model, art.item_ids, art.manifest.get("version"), enc,
                             art.manifest.get("validation", {}))


def attach_promoted(service: "Service", watch: bool = True, interval_s: float = 2.0) -> PromotedModels | None:
    """Install the promoted model of every app under ``<data_dir>/models`` as the service's scorer.

    Returns None (baseline stays) when no app has a promoted version and ``watch`` is off.
    """
    root = Path(service.settings.data_dir) / "models"
    router = PromotedModels()
    watchers: list[PromotionWatcher] = []
    apps = sorted(p.name for p in root.iterdir() if p.is_dir()) if root.exists() else []
    for app in apps:
        reg = ModelRegistry(root / app)
        if reg.promoted() is not None:
            router.set(app, load_scorer(reg, app))
        if watch:
            w = PromotionWatcher(reg, lambda v, app=app, reg=reg: router.set(app, load_scorer(reg, app, v)), interval_s)
            w.start()
            watchers.append(w)
    if not router.by_app:
        for w in watchers:
            w.stop()
        return None
    service.pipeline.set_scorer(router)
    service.model_watchers = watchers  # type: ignore[attr-defined]
    return router
