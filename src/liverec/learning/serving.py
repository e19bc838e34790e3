"""What the online learner serves: a Transformer, its item vocabulary, and versions on disk.

* :class:`Vocabulary` maps item ids to the model's 1-based item rows (0 = no item) and grows when
  new items arrive;
* :class:`LearnedScorer` serves one (model, vocabulary) pair through the pipeline's
  :class:`~liverec.recommend.scoring.Scorer` seam: the user's current sequence is encoded at
  request time, every catalog item is scored; it offers ``item_embeddings`` to the ranking stages;
* :class:`DirectoryVersions` publishes versions atomically (safetensors + vocabulary JSON
  written under a temporary name, then one ``rename`` of the version folder, then the ``LATEST``
  pointer replaced by rename), keeps every version for rollback, and reads the newest.

A new version is served by assigning a new :class:`LearnedScorer` to the pipeline (one attribute
assignment): requests in flight finish on the old object, later ones use the new one.
"""

from __future__ import annotations

import json
import os
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from ..events import Event
from ..model.features import gap_bucket, type_id, value_bucket
from ..model.transformer import FeedbackTransformer, ModelConfig
from ..recommend.scoring import Scored
from ..state import UserState


class Vocabulary:
    """Item id <-> 1-based model row."""

    def __init__(self, item_ids: Sequence[str] = ()) -> None:
        self.ids: list[str] = list(item_ids)
        self.index: dict[str, int] = {item: k + 1 for k, item in enumerate(self.ids)}

    def __len__(self) -> int:
        return len(self.ids)

    def get(self, item_id: str | None) -> int:
        return self.index.get(item_id, 0) if item_id is not None else 0

    def extended(self, new_items: Sequence[str]) -> "Vocabulary":
        """A copy with ``new_items`` appended (existing rows keep their numbers)."""
        return Vocabulary(self.ids + [i for i in dict.fromkeys(new_items) if i not in self.index])


def sequence_arrays(state: UserState, vocab: Vocabulary, max_len: int) -> dict[str, np.ndarray]:
    """The user's newest ``max_len`` interactions as (T,) model inputs (items, types, values, gaps)."""
    seq = list(state.sequence)[-max_len:]
    items = np.array([vocab.get(i.item_id) for i in seq], dtype=np.int64)
    types = np.array([type_id(i.type) for i in seq], dtype=np.int64)
    values = value_bucket(np.array([np.nan if i.value is None else i.value for i in seq], dtype=np.float64)).astype(np.int64)
    ts = np.array([i.timestamp for i in seq], dtype=np.float64)
    gaps = np.full(len(seq), -1.0)
    if len(seq) > 1:
        gaps[1:] = np.diff(ts)
    return {"items": items, "types": types, "values": values, "gaps": gap_bucket(gaps).astype(np.int64), "timestamps": ts}


class LearnedScorer:
    """A (model, vocabulary) pair behind the Scorer protocol (one app)."""

    name = "transformer"

    def __init__(self, app: str, model: FeedbackTransformer, vocab: Vocabulary, version: str = "") -> None:
        if model.cfg.n_items != len(vocab):
            raise ValueError(f"model has {model.cfg.n_items} items, vocabulary {len(vocab)}")
        self.app = app
        self.model = model.eval()
        self.vocab = vocab
        self.version = version
        self.ids = np.array(vocab.ids, dtype=object)
        with torch.no_grad():
            self._vectors = model.item_vectors()[1:].detach().cpu().numpy()  # (N, D)
        self._lock = threading.Lock()  # torch modules are not re-entrant across threads for no_grad+eval

    def observe(self, app: str, event: Event) -> None:
        """Nothing per event: the user's state is read at request time; weights change by version."""

    def forget_user(self, app: str, events: Sequence[Event]) -> None:
        """No per-user statistics are kept (a deleted user's effect on the weights is retrained away)."""

    @torch.no_grad()
    def score(self, app: str, state: UserState | None, n: int) -> Scored:
        if app != self.app:
            return Scored.empty()
        t = self.model.cfg.max_len
        a = sequence_arrays(state, self.vocab, t) if state is not None and state.sequence else None
        if a is None or len(a["items"]) == 0:
            items = torch.zeros(1, 1, dtype=torch.long)
            types = values = gaps = items
        else:
            items = torch.from_numpy(a["items"])[None]  # (1, T)
            types = torch.from_numpy(a["types"])[None]
            values = torch.from_numpy(a["values"])[None]
            gaps = torch.from_numpy(a["gaps"])[None]
        with self._lock:
            scores = self.model.score_last(items, types, values, gaps)[0]  # (N,)
        return Scored(self.ids, scores.float().numpy())

    def similar(self, app: str, item_id: str, n: int) -> list[tuple[str, float]]:
        row = self.vocab.get(item_id)
        if app != self.app or row == 0:
            return []
        v = self._vectors
        norms = np.linalg.norm(v, axis=1) + 1e-12
        sims = (v @ v[row - 1]) / (norms * norms[row - 1])  # (N,)
        sims[row - 1] = -np.inf
        top = np.argsort(-sims)[:n]
        return [(self.vocab.ids[k], float(sims[k])) for k in top]

    def item_embeddings(self, app: str) -> tuple[list[str], np.ndarray] | None:
        """(item ids, (N, D) output vectors) for the ranking stages' neighbours and diversity."""
        return (self.vocab.ids, self._vectors) if app == self.app else None


@dataclass(frozen=True)
class Version:
    version: str
    path: Path
    created_at: float
    metrics: dict


class DirectoryVersions:
    """Model versions in ``root/<app>/v<NNNNNN>/`` (model.safetensors, vocab.json, manifest.json).

    ``publish`` writes a version under a temporary name and renames it into place, then replaces
    ``LATEST`` by rename: a reader sees the old version or the new one, never a half-written one.
    """

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        self._lock = threading.Lock()

    def _dir(self, app: str) -> Path:
        return self.root / app

    def list(self, app: str) -> list[str]:
        d = self._dir(app)
        return sorted(p.name for p in d.glob("v*") if p.is_dir()) if d.exists() else []

    def publish(self, app: str, model: FeedbackTransformer, vocab: Vocabulary, metrics: dict) -> Version:
        from safetensors.torch import save_file

        with self._lock:
            d = self._dir(app)
            d.mkdir(parents=True, exist_ok=True)
            existing = self.list(app)
            name = f"v{int(existing[-1][1:]) + 1 if existing else 1:06d}"
            tmp = d / f".tmp-{name}-{os.getpid()}"
            tmp.mkdir()
            tensors = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
            save_file(tensors, str(tmp / "model.safetensors"), metadata={"model_config": json.dumps(model.cfg.to_dict())})
            (tmp / "vocab.json").write_text(json.dumps(vocab.ids))
            created = time.time()
            (tmp / "manifest.json").write_text(json.dumps({"version": name, "created_at": created, "metrics": metrics}))
            tmp.rename(d / name)
            pointer = d / f".LATEST-{os.getpid()}"
            pointer.write_text(name)
            pointer.replace(d / "LATEST")
            return Version(name, d / name, created, metrics)

    def latest(self, app: str) -> str | None:
        p = self._dir(app) / "LATEST"
        return p.read_text().strip() if p.exists() else None

    def rollback(self, app: str, version: str) -> None:
        """Point ``LATEST`` back at an earlier ``version``."""
        if version not in self.list(app):
            raise ValueError(f"no version {version!r} of app {app!r}; have {self.list(app)}")
        pointer = self._dir(app) / f".LATEST-{os.getpid()}"
        pointer.write_text(version)
        pointer.replace(self._dir(app) / "LATEST")

    def load(self, app: str, version: str | None = None) -> tuple[FeedbackTransformer, Vocabulary, str]:
        from safetensors import safe_open
        from safetensors.torch import load_file

        version = version or self.latest(app)
        if version is None:
            raise FileNotFoundError(f"no published model for app {app!r} under {self.root}")
        d = self._dir(app) / version
        with safe_open(str(d / "model.safetensors"), framework="pt") as f:
            cfg = ModelConfig.from_dict(json.loads(f.metadata()["model_config"]))
        model = FeedbackTransformer(cfg)
        model.load_state_dict(load_file(str(d / "model.safetensors")))
        return model.eval(), Vocabulary(json.loads((d / "vocab.json").read_text())), version
