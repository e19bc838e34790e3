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
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Iterable, Sequence

from liverec.events import Event
from liverec.model.registry import ModelRegistry
from liverec.model.scorer import TransformerScorer
from liverec.model.text import MiniLMEncoder, TextEncoder
from liverec.recommend.retrieval import AnnConfig
from liverec.recommend.scoring import Scored
from liverec.state import UserState


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
        """Serve ``scorer`` for ``app``; it takes over the event text vectors of the scorer it
        replaces (same encoder), so a new version needs no warm-up for texts already seen."""
        old = self.by_app.get(app)
        if old is not None and old is not scorer:
            scorer.share_text_vectors(old)
        self.by_app[app] = scorer  # one assignment: in-flight requests keep the old object

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
            enc = MiniLMEncoder()
        load = getattr(enc, "load", None)  # encoders without weights to load need not have one
        if load_encoder and callable(load):
            load()
    return TransformerScorer(app, art.model, art.item_ids, art.manifest.get("version"), enc,
                             art.manifest.get("validation", {}), text_cache_dir=text_cache_dir, ann=ann,
                             build_index=build_index)
