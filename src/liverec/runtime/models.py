"""The model server: the promoted Transformer of every app, loaded at start and hot-swapped.

:class:`ModelServer` owns the :class:`~liverec.model.serving.PromotedModels` router that the
pipeline scores with. ``start`` loads the promoted version of each app under
``<data_dir>/models`` and polls each registry's pointer, so a version promoted by ``liverec
train``, ``liverec models promote`` or the online learner (in this process or another) is
swapped in while serving: one dict assignment, requests in flight finish on the old model.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Iterable

from ..model.registry import ModelRegistry, PromotionWatcher
from ..model.serving import PromotedModels, default_text_cache_dir, load_scorer


class ModelServer:
    """Loads and watches the promoted models of every app (a service component)."""

    def __init__(self, data_dir: Path, router: PromotedModels, texts: Callable[[str], Iterable[str]] | None = None,
                 watch: bool = True, interval_s: float = 2.0) -> None:
        self.models_dir = Path(data_dir) / "models"
        self.text_cache_dir = default_text_cache_dir(data_dir)
        self.router = router
        self.texts = texts  # the event texts of an app's folded users, encoded once at load
        self.watch = watch
        self.interval_s = interval_s
        self.watchers: list[PromotionWatcher] = []

    def _load(self, registry: ModelRegistry, app: str, version: str | None = None) -> None:
        current = self.router.by_app.get(app)
        # the loaded sentence encoder of the version being replaced serves the new one too
        encoder = current.text_encoder if current is not None else None
        scorer = load_scorer(registry, app, version, text_encoder=encoder, text_cache_dir=self.text_cache_dir)
        self.router.set(app, scorer)  # takes over the replaced version's text vectors
        if self.texts is not None:
            # text vectors off the request path: the texts in folded state are encoded here, once
            self.router.warm_texts(app, self.texts(app))

    def start(self) -> None:
        apps = sorted(p.name for p in self.models_dir.iterdir() if p.is_dir()) if self.models_dir.exists() else []
        for app in apps:
            registry = ModelRegistry(self.models_dir / app)
            if registry.promoted() is not None:
                self._load(registry, app)
            if self.watch:
                watcher = PromotionWatcher(registry, lambda v, app=app, reg=registry: self._load(reg, app, v), self.interval_s)
                watcher.start()
                self.watchers.append(watcher)

    def load(self, app: str) -> None:
        """Serve ``app``'s promoted version now (FileNotFoundError when none is promoted)."""
        registry = ModelRegistry(self.models_dir / app)
        if registry.promoted() is None:
            raise FileNotFoundError(f"no promoted model for app {app!r} under {self.models_dir}")
        self._load(registry, app)

    def check(self) -> None:
        """Poll every registry once now (tests; the watchers poll on their own)."""
        for watcher in self.watchers:
            watcher.check()

    def stop(self) -> None:
        for watcher in self.watchers:
            watcher.stop()
        self.watchers = []
        self.router.save_texts()
