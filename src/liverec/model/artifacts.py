"""Model artifacts: weights as safetensors, a JSON manifest and the item vocabulary. No pickle.

An artifact directory holds

* ``model.safetensors`` — the :class:`FeedbackTransformer` state dict (item text vectors included);
* ``items.json`` — the item ids, in model row order (row ``k + 1`` is ``items[k]``);
* ``manifest.json`` — ``format``, ``model_config``, ``train_config``, ``data_fingerprint``,
  ``metrics``, ``created_at`` and anything else the caller adds.

:func:`save_artifact` writes into a temporary sibling directory and renames it into place, so a
reader never sees a half-written artifact.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from liverec.model.transformer import FeedbackTransformer, ModelConfig

FORMAT = "liverec.feedback-transformer/1"


@dataclass
class Artifact:
    model: FeedbackTransformer
    item_ids: list[str]
    manifest: dict[str, Any]


def save_artifact(
    directory: str | Path,
    model: FeedbackTransformer,
    item_ids: list[str],
    manifest: dict[str, Any] | None = None,
) -> Path:
    """Write an artifact to ``directory`` (which must not exist yet); returns its path."""
    target = Path(directory)
    if target.exists():
        raise FileExistsError(f"artifact directory {target} already exists")
    if len(item_ids) != model.cfg.n_items:
        raise ValueError(f"{len(item_ids)} item ids for a model of {model.cfg.n_items} items")
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.parent / f".{target.name}.tmp-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    save_file(state, str(tmp / "model.safetensors"))
    (tmp / "items.json").write_text(json.dumps([str(i) for i in item_ids]))
    doc = {"format": FORMAT, "created_at": time.time(), "model_config": model.cfg.to_dict()}
    doc.update(manifest or {})
    (tmp / "manifest.json").write_text(json.dumps(doc, indent=2, default=float))
    os.replace(tmp, target)
    return target


def load_artifact(directory: str | Path, device: str = "cpu") -> Artifact:
    """Read an artifact written by :func:`save_artifact` (model in eval mode)."""
    d = Path(directory)
    manifest = json.loads((d / "manifest.json").read_text())
    if manifest.get("format") != FORMAT:
        raise ValueError(f"{d}: format {manifest.get('format')!r}, expected {FORMAT!r}")
    cfg = ModelConfig.from_dict(manifest["model_config"])
    model = FeedbackTransformer(cfg)
    state = load_file(str(d / "model.safetensors"), device=device)
    model.load_state_dict(state)
    model.to(device).eval()
    items = json.loads((d / "items.json").read_text())
    return Artifact(model, items, manifest)


def weights_equal(a: FeedbackTransformer, b: FeedbackTransformer) -> bool:
    """True when two models have identical state dicts (tests, registry checks)."""
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)
