"""The model server: the promoted Transformer of every app, loaded at start and hot-swapped;
and what the models hold of users (:class:`TrainedModels`), for deletions and exports.

:class:`ModelServer` owns the :class:`~liverec.model.serving.PromotedModels` router that the
pipeline scores with. ``start`` loads the promoted version of each app under
``<data_dir>/models`` and polls each registry's pointer, so a version promoted by ``liverec
train``, ``liverec models promote`` or the online learner (in this process or another) is
swapped in while serving: one dict assignment, requests in flight finish on the old model.

Every version served is extended with the catalog items it was not trained on, from their text
(:meth:`~liverec.model.serving.PromotedModels.set`; at start once the sentence encoder is loaded).

A catalog retrieved approximately (``ann``) gets its index built before a new version is
swapped in (in the watcher's thread: the old version serves meanwhile); at start the version
serves at once, exactly, and its index is built in the background.

Other versions of an app serve beside the promoted one for live experiments
(:meth:`ModelServer.versioned`): loaded on the first request that names one, sharing the
promoted version's sentence encoder and event text vectors, and kept in a bounded
least-recently-used table (``max_versions`` in all, the promoted ones not counted).
"""

from __future__ import annotations

import logging
import threading
from collections import OrderedDict
from pathlib import Path
from typing import Any, Callable, Iterable

from ..erasure import UserDeletion
from ..model.registry import ModelRegistry, PromotionWatcher
from ..model.scorer import TransformerScorer
from ..model.serving import PromotedModels, default_text_cache_dir, load_scorer
from ..model.text import erase_texts
from ..store.base import EventLog
from ..recommend.retrieval import AnnConfig

log = logging.getLogger(__name__)


class ModelServer:
    """Loads and watches the promoted models of every app (a service component)."""

    def __init__(self, data_dir: Path, router: PromotedModels, texts: Callable[[str], Iterable[str]] | None = None,
                 watch: bool = True, interval_s: float = 2.0, background: bool = True,
                 ann: AnnConfig | None = None, max_versions: int = 2) -> None:
        self.models_dir = Path(data_dir) / "models"
        self.text_cache_dir = default_text_cache_dir(data_dir)
        self.router = router
        self.texts = texts  # the event texts of an app's folded users, encoded once at load
        self.watch = watch
        self.interval_s = interval_s
        self.watchers: list[PromotionWatcher] = []
        self._served: set[str] = set()  # apps loaded or watched
        self._stopping = threading.Event()
        self.background = background  # load sentence encoders after start instead of during it
        self.loading: list[threading.Thread] = []
        self.ann = ann  # when a catalog is retrieved approximately (None: always exact)
        self.max_versions = max_versions
        self._versions: OrderedDict[tuple[str, str], TransformerScorer] = OrderedDict()
        self._versions_lock = threading.Lock()

    def _load(self, registry: ModelRegistry, app: str, version: str | None = None, background: bool = False) -> None:
        current = self.router.by_app.get(app)
        # the loaded sentence encoder of the version being replaced serves the new one too
        encoder = current.text_encoder if current is not None else None
        # a version replacing a served one builds its index here, before the swap
        scorer = load_scorer(registry, app, version, text_encoder=encoder, text_cache_dir=self.text_cache_dir,
                             load_encoder=not background, ann=self.ann, build_index=not background)
        # takes over the replaced version's text vectors, and is extended with the catalog items it
        # was not trained on (at a start in the background: once the sentence encoder is loaded)
        self.router.set(app, scorer, with_catalog=not background)
        if background:
            # Loading the sentence model takes seconds (most of a start from a snapshot); the
            # service answers meanwhile: a text not encoded yet reads as absent, never encoded
            # in a request, and the event path waits for the model only if text arrives first.
            thread = threading.Thread(target=self._texts_ready, args=(app, scorer, True), name=f"liverec-text-{app}", daemon=True)
            thread.start()
            self.loading.append(thread)
        else:
            self._texts_ready(app, scorer, False)

    def _texts_ready(self, app: str, scorer: TransformerScorer, background: bool) -> None:
        scorer.build_index()  # a large catalog's index (nothing to do otherwise)
        load = getattr(scorer.text_encoder, "load", None)
        if callable(load):
            load()
        if background:  # the catalog items the version was not trained on, then each upsert
            self.router.follow_catalog(app)
        if self.texts is not None:
            # text vectors off the request path: the texts in folded state are encoded here, once
            self.router.warm_texts(app, self.texts(app))

    def versioned(self, app: str, version: str) -> TransformerScorer | None:
        """A scorer of ``version`` of ``app``'s model: the promoted one when that is it, else one
        loaded on first use (the caller waits for the load: an experiment variant's first
        request) and kept among the ``max_versions`` used last. ``None`` when it cannot be loaded."""
        current = self.router.by_app.get(app)
        if current is not None and current.version == version:
            return current
        key = (app, version)
        with self._versions_lock:  # one load at a time; requests for a loaded version wait only for the lookup
            scorer = self._versions.get(key)
            if scorer is not None:
                self._versions.move_to_end(key)
                return scorer
            if self.max_versions <= 0:
                return None
            try:
                scorer = load_scorer(ModelRegistry(self.models_dir / app), app, version,
                                     text_encoder=current.text_encoder if current is not None else None,
                                     text_cache_dir=self.text_cache_dir, ann=self.ann)
            except (FileNotFoundError, KeyError, ValueError):
                log.exception("model version %s of app %r cannot be loaded for an experiment", version, app)
                return None
            if current is not None:
                scorer.share_text_vectors(current)
            self._versions[key] = scorer
            while len(self._versions) > self.max_versions:
                self._versions.popitem(last=False)
            return scorer

    def wait_loaded(self, timeout: float | None = None) -> None:
        """Wait until the sentence encoders and indexes started at start-up are loaded, warm and
        built (tests)."""
        for thread in self.loading:
            thread.join(timeout)

    def start(self) -> None:
        for app in self._apps():
            self._serve(app, background=self.background)
        if self.watch:
            # an app whose first model is promoted while serving (the trainer of a new tenant)
            self._discovery = threading.Thread(target=self._discover, name="liverec-model-discovery", daemon=True)
            self._discovery.start()

    def _apps(self) -> list[str]:
        return sorted(p.name for p in self.models_dir.iterdir() if p.is_dir()) if self.models_dir.exists() else []

    def _serve(self, app: str, background: bool) -> None:
        """Load ``app``'s promoted version (if any) and watch its registry for promotions."""
        registry = ModelRegistry(self.models_dir / app)
        self._served.add(app)
        if self.watch:  # the watcher's idea of "current" is read before the load: nothing promoted in between is missed
            watcher = PromotionWatcher(registry, lambda v, app=app, reg=registry: self._load(reg, app, v), self.interval_s)
        if registry.promoted() is not None:
            self._load(registry, app, background=background)
        if self.watch:
            watcher.start()
            self.watchers.append(watcher)

    def _discover(self) -> None:
        while not self._stopping.wait(self.interval_s):
            for app in self._apps():
                if app not in self._served:
                    try:
                        self._serve(app, background=False)
                    except Exception:  # a broken first version: keep serving the fallback, try the next one
                        log.exception("loading the first model of app %r failed", app)
                        self._served.discard(app)

    def load(self, app: str) -> None:
        """Serve ``app``'s promoted version now (FileNotFoundError when none is promoted)."""
        registry = ModelRegistry(self.models_dir / app)
        if registry.promoted() is None:
            raise FileNotFoundError(f"no promoted model for app {app!r} under {self.models_dir}")
        if app in self._served:
            self._load(registry, app)
        else:  # served and watched from now on: the discovery loop does not load it a second time
            self._serve(app, background=False)

    def check(self) -> None:
        """Poll every registry once now (tests; the watchers poll on their own)."""
        for watcher in self.watchers:
            watcher.check()

    def stop(self) -> None:
        self._stopping.set()
        for watcher in self.watchers:
            watcher.stop()
        self.watchers = []
        self.wait_loaded(timeout=30)
        self.router.save_texts()


class TrainedModels:
    """What the models of a data dir hold of users (a service component).

    When a user is deleted: the model versions trained on their events are marked in the
    registry (:meth:`~liverec.model.registry.ModelRegistry.mark_deleted`), and the vectors of the
    texts they sent (searches, reviews, tags) that no other event carries leave the text caches:
    the on-disk cache of the data dir (the deleting process) and the served scorers' memory
    (every process). A text other users sent too keeps its vector: it is theirs as well.
    """

    def __init__(self, data_dir: Path, events: EventLog, router: PromotedModels | None = None) -> None:
        self.models_dir = Path(data_dir) / "models"
        self.text_cache_dir = default_text_cache_dir(data_dir)
        self.events = events
        self.router = router

    def start(self) -> None:
        pass

    def stop(self) -> None:
        pass

    def _registry(self, app: str) -> ModelRegistry | None:
        registry = ModelRegistry(self.models_dir / app)
        return registry if registry.versions_dir.is_dir() else None

    def forget_user(self, deletion: UserDeletion) -> dict[str, int]:
        app, texts = deletion.app, deletion.texts()
        counts: dict[str, int] = {}
        if self.router is not None and texts:
            self.router.forget_texts(app, texts, unsaved_only=True)  # none of them is written from here on
        if not deletion.local:
            if texts and self.router is not None:  # the others' texts stay: which they are takes a scan of the log
                threading.Thread(target=self._forget_texts, args=(app, texts), name="liverec-erase-texts", daemon=True).start()
            return counts
        if texts:
            erased, shared = self._forget_texts(app, texts)
            erased |= erase_texts(self.text_cache_dir, [t for t in texts if t not in shared])
            counts["text_vectors"], counts["shared_texts_kept"] = len(erased), len(shared)
        registry = self._registry(app)
        if registry is not None and deletion.first_seq is not None:
            versions = registry.trained_on(deletion.first_seq)
            for version in versions:
                registry.mark_deleted(version, deletion.deletion_id)
            counts["model_versions_marked"] = len(versions)
        return counts

    def _forget_texts(self, app: str, texts: list[str]) -> tuple[set[str], set[str]]:
        """Drop the vectors of those ``texts`` no stored event carries from the served scorer;
        returns (those dropped, those kept as other users' too)."""
        shared = self.events.texts_in_use(texts)
        held = self.router.forget_texts(app, [t for t in texts if t not in shared]) if self.router is not None else []
        return set(held), shared

    def describe_user(self, app: str, user_id: str, first_seq: int | None) -> dict[str, Any]:
        """The model versions trained on the user's events (``first_seq``: their first event's log position)."""
        registry = self._registry(app)
        if registry is None or first_seq is None:
            return {"model_versions": []}
        promoted = registry.promoted()
        out = []
        for version in registry.trained_on(first_seq):
            m = registry.manifest(version)
            out.append({"app": app, "version": version, "promoted": version == promoted,
                        "created": m.get("created_iso", ""), "log_position": m.get("log_position")})
        return {"model_versions": out}
