"""Serving the promoted model: one :class:`TransformerScorer` per app behind one scorer object.

:class:`PromotedModels` is what the service installs as its scorer: it routes each call to the
app's promoted Transformer and answers empty for apps without one (the pipeline then falls back
to the co-occurrence baseline). :class:`liverec.runtime.models.ModelServer` loads every app's
promoted version at start and swaps in newly promoted versions while serving (the dict entry is
replaced in one assignment; requests in flight finish on the old model).

Event text (searches, tags, reviews) is encoded off the request path: the sentence encoder is
loaded by :func:`load_scorer`, each event's text is encoded when the event is observed, and the
texts already in user state are encoded at start with :meth:`PromotedModels.warm_texts`. A version
swapped in keeps the vectors of the one it replaces.

Catalog items a version was not trained on (an item upserted while serving, a news article, a new
product) are served from their text: every version set is extended with the app's catalog items
it lacks, and an upsert folded from the log (:meth:`PromotedModels.items_changed`, in every
process that follows the log) extends the served one, so the item is scored and has similar items
at the next request. A restart reaches the same scorer from the version and the catalog (tested).
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

from liverec.catalog import encoder_text
from liverec.events import Event
from liverec.model.registry import ModelRegistry
from liverec.model.scorer import TransformerScorer
from liverec.model.text import SharedTextVectors, TextEncoder, encoder_named
from liverec.recommend.retrieval import AnnConfig
from liverec.recommend.scoring import Scored
from liverec.state import UserState
from liverec.store.base import Item


class PromotedModels:
    """A scorer that delegates to the promoted :class:`TransformerScorer` of each app.

    ``catalog`` gives an app's catalog items (the process's catalog fold): the items a version
    set here was not trained on are added to it from their text.
    """

    name = "transformer"

    def __init__(self, catalog: Callable[[str], Iterable[Item]] | None = None,
                 shared_texts: SharedTextVectors | None = None) -> None:
        self.by_app: dict[str, TransformerScorer] = {}
        self.catalog = catalog
        self.shared_texts = shared_texts  # item text vectors encoded once for every process
        # apps whose served scorer holds every catalog item with text: upserts extend it as they
        # are folded (the others get the whole catalog when follow_catalog is called)
        self._following: set[str] = set()
        self._lock = threading.RLock()  # one version set or catalog extension at a time

    @property
    def version(self) -> str | None:
        return ",".join(f"{a}:{s.version}" for a, s in sorted(self.by_app.items())) or None

    @property
    def metrics(self) -> dict[str, Any]:
        return {a: s.metrics for a, s in self.by_app.items()}

    def set(self, app: str, scorer: TransformerScorer, with_catalog: bool = True) -> None:
        """Serve ``scorer`` for ``app``; it takes over the event text vectors of the scorer it
        replaces (same encoder), so a new version needs no warm-up for texts already seen.

        ``with_catalog``: first add the catalog items it was not trained on (their text is
        encoded now, or read from the text vectors and the on-disk cache); without it (a start
        whose sentence encoder loads in the background) they come with :meth:`follow_catalog`.
        """
        with self._lock:
            old = self.by_app.get(app)
            if old is not None and old is not scorer:
                scorer.share_text_vectors(old)
            if with_catalog:
                scorer = self._with_catalog(app, scorer)
                self._following.add(app)
            else:
                self._following.discard(app)
            self.by_app[app] = scorer  # one assignment: in-flight requests keep the old object

    def follow_catalog(self, app: str) -> None:
        """Add the catalog items ``app``'s served scorer was not trained on, and from now on each
        upsert as it is folded (after a start that set it ``with_catalog=False``)."""
        with self._lock:
            scorer = self.by_app.get(app)
            if scorer is not None:
                self.by_app[app] = self._with_catalog(app, scorer)
                self._following.add(app)

    def items_changed(self, app: str, items: Sequence[Item]) -> None:
        """Catalog upserts folded from the log: items the served scorer does not know join it
        from their text (an item added so before takes its new text); the trained items keep
        their vectors. Called on the fold, so every process's next request scores them."""
        with self._lock:
            scorer = self.by_app.get(app)
            if scorer is None or app not in self._following or not scorer.can_add_items:
                return
            ids, texts = [i.item_id for i in items], [encoder_text(i) for i in items]
            self._read_shared(scorer, ids, texts)  # encoded by the process that took the upsert
            self.by_app[app] = scorer.add_items(ids, texts)

    # a batch this large is placed from the on-disk cache and encoded in batches, not shared
    SHARED_BATCH = 256

    def prepare_items(self, app: str, items: Sequence[Item]) -> None:
        """Before an upsert of ``items`` commits (in the request that takes it): encode the texts
        the served scorer will place them by, and share the vectors, so that the processes
        folding the upsert read them rather than each encoding them again."""
        scorer = self.by_app.get(app)
        if scorer is None or app not in self._following:
            return
        todo = self._read_shared(scorer, [i.item_id for i in items], [encoder_text(i) for i in items])
        if todo:
            memo = scorer.text_vectors
            assert memo is not None and self.shared_texts is not None  # _read_shared found none else
            memo.add(todo)
            self.shared_texts.put(memo.encoder, {t: v for t in todo if (v := memo.get(t)) is not None})

    def _read_shared(self, scorer: TransformerScorer, ids: list[str], texts: list[str]) -> list[str]:
        """Put the shared vectors of the texts ``scorer`` needs to place these items into its
        text memo; returns the texts still without a vector (none when nothing is shared)."""
        memo = scorer.text_vectors
        if self.shared_texts is None or memo is None or not scorer.can_add_items or len(ids) >= self.SHARED_BATCH:
            return []
        todo = memo.missing(scorer.texts_to_place(ids, texts))
        if todo:
            memo.remember(self.shared_texts.get(memo.encoder, todo))
        return memo.missing(todo)

    def _with_catalog(self, app: str, scorer: TransformerScorer) -> TransformerScorer:
        if self.catalog is None or not scorer.can_add_items:
            return scorer
        items = list(self.catalog(app))
        return scorer.add_items([i.item_id for i in items], [encoder_text(i) for i in items])

    def observe(self, app: str, event: Event) -> None:
        """Hand the event to the app's scorer (which encodes its text, if any)."""
        s = self.by_app.get(app)
        if s is not None:
            s.observe(app, event)

    def warm_texts(self, app: str, texts: Iterable[str]) -> int:
        """Encode (or read from the on-disk cache) the event texts ``app``'s scorer does not know
        yet, in batches; returns how many were new (0 for an app without a model)."""
        s = self.by_app.get(app)
        return s.warm_texts(texts) if s is not None else 0

    def save_texts(self) -> int:
        """Write every app's event text vectors not yet on disk to the on-disk cache."""
        return sum(s.save_texts() for s in list(self.by_app.values()))

    def forget_user(self, app: str, events: Sequence[Event]) -> None:
        """No per-user statistics are kept (event text vectors: :meth:`forget_texts`)."""

    def forget_texts(self, app: str, texts: Iterable[str], unsaved_only: bool = False) -> list[str]:
        """Drop the vectors of a deleted user's ``texts`` from ``app``'s scorer (``unsaved_only``:
        only keep them from being written to the on-disk cache); returns those it held."""
        s = self.by_app.get(app)
        memo = s.text_vectors if s is not None else None
        return memo.forget(texts, unsaved_only) if memo is not None else []

    def serves(self, app: str) -> bool:
        return app in self.by_app

    def score(self, app: str, state: UserState | None, n: int) -> Scored:
        s = self.by_app.get(app)
        return s.score(app, state, n) if s is not None else Scored.empty()

    def similar(self, app: str, item_id: str, n: int) -> list[tuple[str, float]]:
        s = self.by_app.get(app)
        return s.similar(app, item_id, n) if s is not None else []


def default_text_cache_dir(data_dir: str | Path) -> Path:
    """The data directory's text vector cache: the one training fills with item and event text."""
    return Path(data_dir) / "text_cache"


def load_scorer(registry: ModelRegistry, app: str, version: str | None = None,
                text_encoder: TextEncoder | None = None,
                text_cache_dir: str | Path | None = None, load_encoder: bool = True,
                ann: AnnConfig | None = None, build_index: bool = True) -> TransformerScorer:
    """A :class:`TransformerScorer` for ``version`` (default: promoted) of ``registry``.

    When the model has text features the encoder is loaded here (``load_encoder``; a server
    loads it in the background at start instead), so that no request waits for it.
    ``text_cache_dir`` keeps event text vectors on disk for a restart or another worker.
    ``ann``: when the catalog is retrieved approximately; ``build_index`` False leaves the
    index to :meth:`TransformerScorer.build_index` (requests are exact until then).
    """
    art = registry.load(version)
    enc = text_encoder
    if art.model.cfg.text_dim:
        if enc is None:
            enc = encoder_named(art.manifest.get("text_encoder"))
        load = getattr(enc, "load", None)  # encoders without weights to load need not have one
        if load_encoder and callable(load):
            load()
    return TransformerScorer(app, art.model, art.item_ids, art.manifest.get("version"), enc,
                             art.manifest.get("validation", {}), text_cache_dir=text_cache_dir, ann=ann,
                             build_index=build_index)
