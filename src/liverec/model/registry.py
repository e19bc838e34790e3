"""Versioned model registry: ``<data_dir>/models/<app>/versions/<version>/`` + a promotion pointer.

Each version is an artifact directory (:mod:`liverec.model.artifacts`). ``PROMOTED`` (JSON:
``{"version": ..., "previous": [...]}``) names the served version and the versions promoted
before it, newest last, for rollback. Promotion writes the pointer to a temporary file and
renames it over the old one, so a reader sees either the old or the new pointer, never a partial
one. A server watching the pointer (:class:`PromotionWatcher`) swaps its scorer by one attribute
assignment: requests in flight finish on the old model, later ones use the new one.

A version records where in the event log its training data ends (``log_position`` in its
manifest; an online update's reaches its parent's data too). When a user is deleted every version
that may have learned from their events (:meth:`ModelRegistry.trained_on`) is marked in its
manifest (``trained_on_deleted_users``: how many deleted users, and the deletions' ids); the
weights stay as they are until a version trained without them replaces them (docs/privacy.md).

>>> import tempfile
>>> reg = ModelRegistry(tempfile.mkdtemp())
>>> reg.list(), reg.promoted()
([], None)
"""

from __future__ import annotations

import json
import os
import re
import threading
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator

try:
    import fcntl
except ImportError:  # not POSIX: manifest marks are then serialised within a process only
    fcntl = None  # type: ignore[assignment]

from liverec.model.artifacts import Artifact, load_artifact, save_artifact
from liverec.model.transformer import FeedbackTransformer

_VERSION = re.compile(r"^v(\d{6})$")


class ModelRegistry:
    """Versions of one app's model under ``root`` (``<data_dir>/models/<app>``)."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        self.versions_dir = self.root / "versions"
        self.pointer = self.root / "PROMOTED"
        self._lock = threading.Lock()

    @classmethod
    def for_data_dir(cls, data_dir: str | Path, app: str = "default") -> ModelRegistry:
        if not re.fullmatch(r"[A-Za-z0-9_.-]{1,64}", app):
            raise ValueError(f"app {app!r}: expected 1-64 letters, digits, '_', '.', '-'")
        return cls(Path(data_dir) / "models" / app)

    # ------------------------------------------------------------------ versions
    def versions(self) -> list[str]:
        """Version names, oldest first."""
        if not self.versions_dir.exists():
            return []
        return sorted(p.name for p in self.versions_dir.iterdir() if p.is_dir() and _VERSION.match(p.name))

    def register(self, model: FeedbackTransformer, item_ids: list[str], manifest: dict[str, Any] | None = None) -> str:
        """Save a new version (not promoted) and return its name."""
        with self._lock:
            while True:
                existing = self.versions()
                n = int(_VERSION.match(existing[-1]).group(1)) + 1 if existing else 1  # type: ignore[union-attr]
                name = f"v{n:06d}"
                try:
                    save_artifact(self.versions_dir / name, model, item_ids, {**(manifest or {}), "version": name})
                    return name
                except FileExistsError:  # another process took this number: take the next one
                    continue

    def trained_on(self, first_seq: int) -> list[str]:
        """The versions that may have learned from an event at log position ``first_seq`` or
        later: their data reached it (``log_position``), it is not recorded (a model from a file),
        or they were fine-tuned from one that did (``parent``). Oldest first."""
        hit: list[str] = []
        for v in self.versions():
            m = self.manifest(v)
            position = m.get("log_position")
            if position is None or int(position) >= first_seq or m.get("parent") in hit:
                hit.append(v)
        return hit

    def mark_deleted(self, version: str, deletion_id: str) -> bool:
        """Record in ``version``'s manifest that it was trained on the events of a user deleted
        since (``deletion_id``: the deletion in the audit log); False when already recorded."""
        path = self.versions_dir / version / "manifest.json"
        with self._lock, _locked(self.root / ".manifests.lock"):
            doc = self.manifest(version)
            marks = doc.setdefault("trained_on_deleted_users", {"count": 0, "deletions": []})
            if deletion_id in marks["deletions"]:
                return False
            marks["deletions"].append(deletion_id)
            marks["count"] = len(marks["deletions"])
            tmp = path.with_name(f".manifest.json.tmp-{os.getpid()}-{threading.get_ident()}")
            tmp.write_text(json.dumps(doc, indent=2, default=float))
            os.replace(tmp, path)
        return True

    def manifest(self, version: str) -> dict[str, Any]:
        path = self.versions_dir / version / "manifest.json"
        if not path.exists():
            raise KeyError(f"no model version {version!r} in {self.versions_dir} (have: {', '.join(self.versions()) or 'none'})")
        return json.loads(path.read_text())

    def load(self, version: str | None = None, device: str = "cpu") -> Artifact:
        """Load ``version`` (default: the promoted one)."""
        v = version or self.promoted()
        if v is None:
            raise FileNotFoundError(f"no promoted model version in {self.root}")
        self.manifest(v)  # clear error for unknown versions
        return load_artifact(self.versions_dir / v, device)

    # ------------------------------------------------------------------ promotion
    def _read_pointer(self) -> dict[str, Any]:
        try:
            return json.loads(self.pointer.read_text())
        except FileNotFoundError:
            return {"version": None, "previous": []}

    def _write_pointer(self, doc: dict[str, Any]) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        tmp = self.root / f".PROMOTED.tmp-{os.getpid()}-{threading.get_ident()}"
        tmp.write_text(json.dumps(doc))
        os.replace(tmp, self.pointer)  # atomic on POSIX

    def promoted(self) -> str | None:
        return self._read_pointer().get("version")

    def promote(self, version: str) -> None:
        """Serve ``version`` from now on."""
        self.manifest(version)
        with self._lock:
            doc = self._read_pointer()
            current = doc.get("version")
            if current == version:
                return
            previous = list(doc.get("previous", []))
            if current is not None:
                previous.append(current)
            self._write_pointer({"version": version, "previous": previous[-100:]})

    def rollback(self) -> str:
        """Re-promote the version promoted before the current one; returns it."""
        with self._lock:
            doc = self._read_pointer()
            previous = list(doc.get("previous", []))
            if not previous:
                raise LookupError(f"nothing to roll back to in {self.root} (promoted: {doc.get('version')})")
            version = previous.pop()
            self._write_pointer({"version": version, "previous": previous})
            return version

    def list(self) -> list[dict[str, Any]]:
        """One row per version: name, promoted flag, creation time, validation metrics, data size."""
        current = self.promoted()
        rows = []
        for v in self.versions():
            m = self.manifest(v)
            rows.append({
                "version": v,
                "promoted": v == current,
                "created": m.get("created_iso", ""),
                "metrics": m.get("validation", {}),
                "test_metrics": m.get("metrics", {}),
                "events": m.get("data", {}).get("events", ""),
                "items": m.get("model_config", {}).get("n_items", ""),
                "data_fingerprint": m.get("data_fingerprint", ""),
                "log_position": m.get("log_position"),
                "deleted_users": m.get("trained_on_deleted_users", {}).get("count", 0),
            })
        return rows


@contextmanager
def _locked(path: Path) -> Iterator[None]:
    """Hold ``path`` as a lock file (one writer of the manifests at a time across processes)."""
    if fcntl is None:
        yield
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


class PromotionWatcher:
    """Polls a registry's pointer and calls ``on_change(version)`` when the promoted version changes."""

    def __init__(self, registry: ModelRegistry, on_change: Callable[[str], None], interval_s: float = 2.0) -> None:
        self.registry = registry
        self.on_change = on_change
        self.interval_s = interval_s
        self.current = registry.promoted()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def check(self) -> bool:
        """One poll; returns True when a new version was handed to ``on_change``."""
        v = self.registry.promoted()
        if v is not None and v != self.current:
            self.on_change(v)
            self.current = v
            return True
        return False

    def start(self) -> None:
        def loop() -> None:
            while not self._stop.wait(self.interval_s):
                try:
                    self.check()
                except Exception:  # a broken version must not kill the watcher; keep serving the old one
                    continue

        self._thread = threading.Thread(target=loop, name="liverec-model-watcher", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
