"""Snapshots of a process's folds, so that a start folds only the log written after the newest one.

Every in-memory structure of a process is a fold over the durable log (see ``runtime/follower.py``):
folding the whole of ML-1M (1M events) at every start takes about 19 s, most of it building
Python objects event by event. A snapshot stores the result of the folds, the user states and
the co-occurrence counters of every app, together with the log position ``(event_seq,
change_seq)`` they correspond to; :func:`restore` installs it and the follower then applies the
log after that position, exactly as it does while serving. The log stays the source of truth:
a snapshot that is missing, unreadable, of another format version or folded under other
settings is ignored (with a log line) and the whole log is folded instead.

Format: one ``.npz`` archive of plain numpy arrays written with ``allow_pickle=False`` (rather
than safetensors: its members may be of any dtype, and one member, the header, is read without
decoding the others). Strings are not stored as objects: every distinct string goes once into a
table, a JSON list stored as a ``uint8`` array, and string columns hold ``int32`` codes into it
(-1 for an unset field). The header (JSON too) holds the format version, the position, the
settings the folds depend on, and which members are string columns.

Where: the store's ``snapshots`` role, app ``_liverec``, name ``folds``: one record shared by
every worker of a store. Any snapshot is a valid starting point (the log after it is always
there), so concurrent writers cannot make a start wrong, only slower; to keep the newest one, a
writer skips the write when the stored snapshot is at its position or ahead of it.

Consistency: a snapshot must be the fold of the log up to its position exactly. While the
follower's lock is held no event or change is applied, so the capture takes it, but only to
copy references and the few counters ``observe`` changes in place (user states are
copy-on-write, the counters' CSR base is replaced rather than changed); the encoding runs after
the lock is released.
"""

from __future__ import annotations

import io
import json
import logging
import threading
import time
import zipfile
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any, Callable, Mapping

import numpy as np
import orjson

from ..erasure import UserDeletion
from ..memory import collector_paused
from ..ranking.replicas import ImpressionFollower
from ..recommend.cooccurrence import CooccurrenceCapture, CooccurrenceScorer
from ..state import StateStore, UserState, export_states, states_from_columns
from ..store.base import StoreUnavailable

if TYPE_CHECKING:
    from ..service import Service

log = logging.getLogger(__name__)

FORMAT_VERSION = 1
SNAPSHOT_APP = "_liverec"  # records of the service itself, beside those kept per tenant
SNAPSHOT_NAME = "folds"


class SnapshotError(ValueError):
    """A stored snapshot that cannot be used (unreadable, or made for something else)."""


def fold_settings(state: StateStore, counters: CooccurrenceScorer) -> dict[str, Any]:
    """What the folds depend on besides the log: a snapshot folded under other settings is
    not the fold of this process's log, so it is ignored."""
    settings = {
        "sequence_length": state.max_len,
        "state_types": {name: asdict(spec) for name, spec in state.types.items()},
        "counter_types": {name: asdict(spec) for name, spec in counters.types.items()},
        "cooccurrence": asdict(counters.config),
    }
    return orjson.loads(orjson.dumps(settings))  # the form it has after a round trip through the header


# ---- capture (under the follower's lock) and encoding (outside it) -----------------------------
@dataclass(frozen=True)
class Capture:
    position: tuple[int, int]
    users: list[tuple[tuple[str, str], UserState]]
    counters: CooccurrenceCapture
    settings: dict[str, Any]
    lock_held_s: float


def capture(service: "Service") -> Capture | None:
    """The folds and their position at one moment; ``None`` while counters are being refolded.

    A deletion made by another process is applied here by refolding that app's counters in the
    background (``Service._rebuild_counters``); until the refold is adopted the counters still
    hold the deleted user's contributions while the position is past the deletion, and a
    snapshot of that would bring them back at every later start.
    """
    with service.follower.lock:
        # whatever is committed (a user deletion above all) is in the folds a snapshot holds
        service.follower.catch_up(force=True)
    with service.follower.lock, service.state.lock:
        acquired = time.perf_counter()
        if service.refolding:
            return None
        position = service.follower.position
        users = service.state.items()
        counters = service.baseline.capture()
        held = time.perf_counter() - acquired
    return Capture(position, users, counters, fold_settings(service.state, service.baseline), held)


class _StringTable:
    def __init__(self) -> None:
        self._codes: dict[str, int] = {}

    def encode(self, values: list[str | None]) -> np.ndarray:
        codes = self._codes
        add = codes.setdefault
        return np.fromiter((-1 if v is None else add(v, len(codes)) for v in values), np.int32, len(values))

    def to_bytes(self) -> bytes:
        strings = list(self._codes)
        try:
            return orjson.dumps(strings)
        except orjson.JSONEncodeError:  # lone surrogates: escaped by the standard library's encoder
            return json.dumps(strings).encode("ascii")


def _json_array(value: Any) -> np.ndarray:
    return np.frombuffer(orjson.dumps(value), dtype=np.uint8)


def encode(snap: Capture) -> bytes:
    """The snapshot file of a capture."""
    strings = _StringTable()
    arrays: dict[str, np.ndarray] = {}
    string_columns: list[str] = []

    def add(prefix: str, columns: Mapping[str, Any]) -> None:
        for name, value in columns.items():
            key = f"{prefix}.{name}"
            if isinstance(value, np.ndarray):
                if value.dtype == object:
                    raise TypeError(f"{key}: object arrays are not stored")
                arrays[key] = value
            else:
                arrays[key] = strings.encode(value)
                string_columns.append(key)

    add("state", export_states(snap.users))
    counters = snap.counters.export()
    apps = list(counters)
    for k, app in enumerate(apps):
        add(f"counters.{k}", counters[app])
    header = {
        "format": FORMAT_VERSION,
        "event_seq": snap.position[0],
        "change_seq": snap.position[1],
        "settings": snap.settings,
        "users": len(snap.users),
        "apps": apps,
        "string_columns": string_columns,
        "created_at": time.time(),
    }
    arrays["header"] = _json_array(header)
    arrays["strings"] = np.frombuffer(strings.to_bytes(), dtype=np.uint8)
    out = io.BytesIO()
    # What numpy.savez writes, with pickling refused on every numpy version.
    with zipfile.ZipFile(out, "w", zipfile.ZIP_STORED, allowZip64=True) as archive:
        for key, array in arrays.items():
            with archive.open(f"{key}.npy", "w", force_zip64=True) as member:
                np.lib.format.write_array(member, np.ascontiguousarray(array), allow_pickle=False)
    return out.getvalue()


# ---- decoding ------------------------------------------------------------------------------
class Snapshot:
    """A stored snapshot: the header at once, the columns on demand."""

    def __init__(self, blob: bytes):
        try:
            self._npz = np.load(io.BytesIO(blob), allow_pickle=False)
            self.header: dict[str, Any] = orjson.loads(self._npz["header"].tobytes())
            self.position: tuple[int, int] = (int(self.header["event_seq"]), int(self.header["change_seq"]))
            self.format = self.header["format"]
        except Exception as exc:  # noqa: BLE001 - whatever is wrong with the bytes, the log remains
            raise SnapshotError(f"unreadable snapshot ({type(exc).__name__}: {exc})") from None

    def columns(self) -> tuple[dict[str, Any], dict[str, dict[str, Any]]]:
        """(user state columns, counter columns per app), strings decoded."""
        raw = self._npz["strings"].tobytes()
        try:
            strings = orjson.loads(raw)
        except orjson.JSONDecodeError:
            strings = json.loads(raw)
        # Code -1 (an unset field) picks the None appended at the end.
        table = np.empty(len(strings) + 1, dtype=object)
        table[:-1] = strings
        decoded = set(self.header["string_columns"])
        state: dict[str, Any] = {}
        counters: dict[str, dict[str, Any]] = {app: {} for app in self.header["apps"]}
        apps = self.header["apps"]
        for key in self._npz.files:
            if key in ("header", "strings"):
                continue
            value = self._npz[key]
            if key in decoded:
                if len(value) and (value.min() < -1 or value.max() >= len(strings)):
                    raise SnapshotError(f"{key}: string codes outside the table")
                value = table[value].tolist()
            prefix, _, name = key.partition(".")
            if prefix == "state":
                state[name] = value
            elif prefix == "counters":
                k, _, name = name.partition(".")
                counters[apps[int(k)]][name] = value
        return state, counters


def _usable(snapshot: Snapshot, service: "Service") -> None:
    """Raise :class:`SnapshotError` unless ``snapshot`` was folded the way ``service`` folds."""
    if snapshot.format != FORMAT_VERSION:
        raise SnapshotError(f"format version {snapshot.format}, this process reads {FORMAT_VERSION}")
    wanted = fold_settings(service.state, service.baseline)
    stored = snapshot.header.get("settings") or {}
    if stored != wanted:
        differ = sorted(k for k in set(wanted) | set(stored) if stored.get(k) != wanted.get(k))
        raise SnapshotError(f"folded under other settings ({', '.join(differ)})")


def stored_position(service: "Service") -> tuple[int, int] | None:
    """The position of the stored snapshot, ``None`` when there is none this service could
    start from (a snapshot it cannot use is overwritten, whatever its position)."""
    blob = service.store.snapshots.get(SNAPSHOT_APP, SNAPSHOT_NAME)
    if not blob:
        return None
    try:
        snapshot = Snapshot(blob)
        _usable(snapshot, service)
    except SnapshotError:
        return None
    return snapshot.position


# ---- start: restore ------------------------------------------------------------------------
def restore(service: "Service") -> tuple[int, int] | None:
    """Install the stored snapshot's folds (and the catalog) into ``service``; returns the log
    position to follow from, or ``None`` (nothing installed) when the whole log must be folded.

    The follower then applies what was committed after the position, in commit order: events,
    item upserts (re-applied from the catalog, which is idempotent) and user deletions (the
    user's state is dropped and the app's counters refolded from the log, where the user's
    events no longer are), so the result is the fold of the whole log.
    """
    started = time.perf_counter()
    blob = service.store.snapshots.get(SNAPSHOT_APP, SNAPSHOT_NAME)
    if not blob:
        log.info("no snapshot of the folds: folding the whole log")
        return None
    try:
        snapshot = Snapshot(blob)
        _usable(snapshot, service)
        heads = service.store.events.heads()
        if snapshot.position[0] > heads[0] or snapshot.position[1] > heads[1]:
            raise SnapshotError(f"position {snapshot.position} is past the log's heads {heads}")
        with collector_paused():
            state_columns, counter_columns = snapshot.columns()
            users = states_from_columns(state_columns, service.state.max_len)
            service.baseline.load_state(counter_columns)  # swapped in whole, or not at all
    except Exception as exc:  # noqa: BLE001 - any fault in a snapshot falls back to the log
        reason = exc if isinstance(exc, SnapshotError) else f"{type(exc).__name__}: {exc}"
        log.warning("snapshot of the folds ignored, folding the whole log: %s", reason)
        return None
    service.state.replace(users)
    service.catalog.load(service.store.catalog.scan())
    log.info("restored %d users' state and %d apps' counters at log position %s in %.2f s",
             len(users), len(counter_columns), snapshot.position, time.perf_counter() - started)
    return snapshot.position


# ---- writing -------------------------------------------------------------------------------
@dataclass
class WriteResult:
    position: tuple[int, int] | None
    written: bool
    reason: str = ""
    bytes: int = 0
    lock_held_s: float = 0.0
    encode_s: float = 0.0
    put_s: float = 0.0
    total_s: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["position"] = list(self.position) if self.position is not None else None
        return out


def write_snapshot(service: "Service") -> WriteResult:
    """Capture the folds and store them, unless the stored snapshot is as new."""
    started = time.perf_counter()
    stored = stored_position(service)
    current = service.follower.position
    if stored is not None and stored >= current:
        return WriteResult(current, False, f"the stored snapshot is at {stored}")
    snap = capture(service)
    if snap is None:
        return WriteResult(None, False, "counters are being refolded after a deletion")
    encoding = time.perf_counter()
    blob = encode(snap)
    putting = time.perf_counter()
    service.store.snapshots.put(SNAPSHOT_APP, SNAPSHOT_NAME, blob)
    done = time.perf_counter()
    return WriteResult(snap.position, True, "", len(blob), snap.lock_held_s, putting - encoding, done - putting, done - started)


class SnapshotWriter:
    """Writes a snapshot every ``interval_s`` seconds in a background thread, when the log
    position has moved since the last one by at least ``min_tail`` events and changes (a
    component: started once the folds are ready; ``interval_s`` 0: none are written on a
    schedule). The ranking's folds
    (:class:`~liverec.ranking.replicas.ImpressionFollower`) are written with the user folds, and
    on their own when ``ranking_tail`` impressions were adopted since their last snapshot.

    A user deleted by this process: the stored snapshot of the folds is removed at once (it holds
    the user) and a new one is written in the background once the folds no longer do.

    ``service`` returns the service whose folds are written (it is built after its components).
    """

    def __init__(self, service: Callable[[], "Service"], interval_s: float, min_tail: int = 1, ranking_tail: int = 10_000):
        self.service = service
        self.interval_s = interval_s
        self.min_tail = min_tail  # events + changes since the last snapshot before the next
        self.ranking_tail = ranking_tail  # impression log positions since the ranking's last snapshot
        self.last: WriteResult | None = None  # the latest attempt (read by tests and benchmarks)
        self.last_ranking: dict[str, Any] | None = None  # the latest snapshot of the ranking's folds written
        self._position: tuple[int, int] | None = None  # the position last written or found stored
        self._ranking_seq: int | None = None  # the impression position of the ranking's last snapshot
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._rewriting: threading.Thread | None = None  # a snapshot written again after a deletion

    def forget_user(self, deletion: UserDeletion) -> dict[str, int]:
        """Remove the stored snapshot of the folds when this process deleted the user, and write
        a new one without them in the background."""
        if not deletion.local:
            return {}
        service = self.service()
        removed = service.store.snapshots.delete(SNAPSHOT_APP, SNAPSHOT_NAME)
        if removed and (self._rewriting is None or not self._rewriting.is_alive()):
            self._position = None
            self._rewriting = threading.Thread(target=self._rewrite, name="liverec-snapshot-rewrite", daemon=True)
            self._rewriting.start()
        return {"snapshots": int(removed)}

    def _rewrite(self, timeout_s: float = 60.0) -> None:
        """Write a snapshot as soon as the folds can be captured (not while counters are refolded
        after another process's deletion); the schedule's next write otherwise."""
        deadline = time.monotonic() + timeout_s
        while not self._stop.is_set() and time.monotonic() < deadline:
            try:
                result = write_snapshot(self.service())
            except Exception:  # noqa: BLE001 - the next scheduled write tries again
                log.exception("writing a snapshot of the folds after a deletion failed")
                return
            if result.written or result.position is not None:
                self._position = result.position
                self.last = result
                return
            self._stop.wait(0.1)

    def start(self) -> None:
        if self.interval_s <= 0 or self._thread is not None:
            return
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="liverec-snapshots", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        for thread in (self._thread, self._rewriting):
            if thread is not None:
                thread.join()  # a write in progress finishes before the store closes
        self._thread = self._rewriting = None

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            try:
                result = self.write_if_moved()
                self.write_ranking(result is not None and result.written)
            except StoreUnavailable as exc:  # PostgreSQL away: the next interval tries again
                log.warning("writing a snapshot of the folds: %s", exc)
            except Exception:  # noqa: BLE001 - the next interval tries again; serving goes on
                log.exception("writing a snapshot of the folds failed")

    def write_ranking(self, with_users: bool = False) -> dict[str, Any] | None:
        """Write a snapshot of the ranking's folds if the user folds were just written
        (``with_users``) or ``ranking_tail`` impressions were adopted since the last one."""
        follower = self.service().component(ImpressionFollower)
        if follower is None:
            return None
        if not with_users and self._ranking_seq is not None and follower.seq - self._ranking_seq < self.ranking_tail:
            return None
        written = follower.write_snapshot()
        if written is not None:
            self._ranking_seq = written["impression_seq"]
            self.last_ranking = written
            log.info("snapshot of the ranking folds at event %d, impression %d: %.1f MB, lock held %.1f ms",
                     written["event_seq"], written["impression_seq"], written["bytes"] / 1e6, written["lock_held_s"] * 1e3)
        return written

    def write_if_moved(self) -> WriteResult | None:
        """Write a snapshot if the position moved since the last one by ``min_tail`` events and
        changes; ``None`` if it did not."""
        service = self.service()
        position = service.follower.position
        if self._position is not None and (position[0] - self._position[0]) + (position[1] - self._position[1]) < self.min_tail:
            return None
        if position == self._position:
            return None
        result = write_snapshot(service)
        if result.position is not None:  # written, or one as new is stored: nothing to do until it moves
            self._position = result.position
        self.last = result
        if result.written:
            log.info("snapshot of the folds at %s: %.1f MB, lock held %.1f ms, %.2f s in all", result.position,
                     result.bytes / 1e6, result.lock_held_s * 1e3, result.total_s)
        return result
