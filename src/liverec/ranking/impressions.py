"""Impressions (what was shown, where, with what probability) and their rewards.

Every recommendation response logs one :class:`Impression` per item shown. Items placed by the
bandit carry their selection probability (``propensity``) and the candidate pool with each
candidate's probability and model score, which is what off-policy evaluation
(:mod:`liverec.evaluation.ope`) needs to score other policies on the same traffic. Items placed by
the deterministic ranking have propensity 1.

Reward of an impression (the scheme of this system): **1** if the user gives positive feedback on
the item within ``window_s`` after it was shown, **0** for negative feedback, **0.5** for no
feedback within the window. :func:`assign_rewards` computes it from the event log; the live
:class:`RewardTracker` does the same incrementally from committed events.

Storage by role: :class:`ImpressionLog` is a small protocol, chosen with the store by
:func:`open_impressions`: :class:`SQLiteImpressionLog` keeps a separate SQLite file beside the
event log (the request path never waits on the event log's writer), :class:`PostgresImpressionLog`
a table in the store's schema shared by every API worker, :class:`MemoryImpressionLog` serves
tests. Both databases are written by a background thread (:class:`QueuedImpressionLog`).

The log is also what every worker's bandit posteriors, pending impressions and last slates are a
fold of (:mod:`liverec.ranking.replicas`), so it is read like the event log: by position
(``seq``, :meth:`ImpressionLog.scan_after`, :meth:`ImpressionLog.head`). A reader that has applied
everything up to ``seq`` must never see a smaller ``seq`` commit later: SQLite serialises its
writers, and PostgreSQL inserts take an advisory lock for the same reason. Each impression
records where the event log stood when it was shown (``event_seq``): feedback committed after that
position is feedback on it, whichever worker reads the two logs and in whatever interleaving.
"""

from __future__ import annotations

import json
import logging
import sqlite3
import threading
import time
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Iterator, Mapping, NamedTuple, Protocol, Sequence

import orjson

from ..events import DEFAULT_TYPES, Event, TypeSpec
from ..store.base import StoreUnavailable
from ..store.sql import batch_rows
from ..store.sqlite import compact as compact_sqlite

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Impression:
    """One item shown to one user in one response."""

    impression_id: str
    request_id: str
    app: str
    user_id: str
    item_id: str
    position: int
    timestamp: float
    propensity: float  # P(this item at this position | context) under the logging policy
    explored: bool
    policy: str  # "rank" (deterministic), "thompson" / "contextual" (an item slot) or "thompson-category" (a category slot)
    # For explored slots: the candidates the bandit chose among, their probabilities and scores.
    pool: list[str] = field(default_factory=list)
    pool_propensities: list[float] = field(default_factory=list)
    pool_scores: list[float] = field(default_factory=list)
    # The event log position the serving process had applied when it showed the slate (``None`` in
    # records written before positions were kept), and which process that was (``""``: unknown).
    event_seq: int | None = None
    origin: str = ""
    # Logged while exploring: the item's policy features (integers, ranking/contextual.py), which
    # the contextual policy's posterior is a fold of; for explored slots the pool's features and
    # the distribution the other policy would have drawn from (``explore_shadow``).
    features: list[int] | None = None
    pool_features: list[list[int]] = field(default_factory=list)
    shadow_propensities: list[float] = field(default_factory=list)
    # The live experiment the response was part of and the variant (in an interleaved slate: the
    # team) that placed this item; "" outside experiments and in records written before them.
    experiment: str = ""
    variant: str = ""

    def to_dict(self) -> dict:
        # Explicit (dataclasses.asdict deep-copies recursively: too slow for the request path).
        return {f: getattr(self, f) for f in _FIELDS}

    def to_json(self) -> str:
        """The record the log stores. orjson: 0.8-3.5 us where ``json.dumps`` took 20-45, for
        each of a slate's 10 impressions on every recommendation; NumPy numbers as numbers."""
        return orjson.dumps(self.to_dict(), option=orjson.OPT_SERIALIZE_NUMPY).decode()

    @staticmethod
    def from_dict(data: Mapping) -> "Impression":
        return Impression(**{k: data[k] for k in Impression.__dataclass_fields__ if k in data})


_FIELDS = tuple(Impression.__dataclass_fields__)


class Shown(NamedTuple):
    """What the ranking's folds read of an impression: kept in columns of the log beside the
    record, so following the log decodes no JSON (the candidate pool is for off-policy evaluation)."""

    impression_id: str
    request_id: str
    app: str
    user_id: str
    item_id: str
    position: int
    timestamp: float
    event_seq: int | None
    origin: str
    features: tuple[int, ...] | None = None

    @staticmethod
    def of(imp: Impression) -> "Shown":
        return Shown(imp.impression_id, imp.request_id, imp.app, imp.user_id, imp.item_id, imp.position, imp.timestamp,
                     imp.event_seq, imp.origin, tuple(imp.features) if imp.features else None)


class ImpressionLog(Protocol):
    def append(self, impressions: Sequence[Impression]) -> None:
        """Store impressions (in the order shown)."""

    def scan(self, app: str | None = None) -> Iterator[Impression]:
        """All impressions (of one app, or all) in log order."""

    def count(self, app: str | None = None) -> int: ...

    def scan_after(self, seq: int, limit: int = 10_000) -> list[tuple[int, Impression]]:
        """Up to ``limit`` committed impressions (every app) with position ``> seq``, in log order."""

    def shown_after(self, seq: int, limit: int = 10_000, upto: int | None = None,
                    other_than: str | None = None) -> list[tuple[int, Shown]]:
        """What the folds read of the impressions with position in ``(seq, upto]``, in log order,
        leaving out those logged by process ``other_than`` (at most ``limit``)."""

    def head(self) -> int:
        """The highest committed position (0 for an empty log)."""

    def experiment_after(self, seq: int, upto: int, limit: int = 10_000) -> list[tuple[int, Impression]]:
        """Up to ``limit`` committed impressions tagged with an experiment, with position in
        ``(seq, upto]``, in log order."""

    def user_impressions(self, app: str, user_id: str) -> list[Impression]:
        """One user's impressions in log order (this handle's queue included)."""

    def remove_user(self, app: str, user_id: str, upto: int | None = None, origin: str | None = None) -> int:
        """Delete one user's impressions (this handle's queued ones too), those shown at event
        log positions up to ``upto`` when given (and those without a position), those logged by
        process ``origin`` when given; returns how many. Positions are not reused: the others keep
        theirs."""

    def compact(self) -> bool:
        """Make deleted rows unrecoverable from the log's file where it has one (see
        :meth:`liverec.store.base.Store.compact`); True when done."""

    def flush(self) -> None:
        """Wait until this handle's appends are committed."""

    def close(self) -> None: ...


def _before(imp: Impression, app: str, user_id: str, upto: int | None, origin: str | None = None) -> bool:
    """Whether ``imp`` is the user's, shown at a position up to ``upto`` (or without one), by
    process ``origin`` (when given)."""
    return (imp.app == app and imp.user_id == user_id and (upto is None or imp.event_seq is None or imp.event_seq <= upto)
            and (origin is None or imp.origin == origin))


class MemoryImpressionLog:
    """Impressions in a list (tests, in-process evaluation); position = 1-based index."""

    def __init__(self) -> None:
        self._rows: list[Impression | None] = []  # None: removed (positions are kept)
        self._lock = threading.Lock()

    def append(self, impressions: Sequence[Impression]) -> None:
        with self._lock:
            self._rows.extend(impressions)

    def scan(self, app: str | None = None) -> Iterator[Impression]:
        rows = list(self._rows)
        return iter([r for r in rows if r is not None and (app is None or r.app == app)])

    def count(self, app: str | None = None) -> int:
        return sum(1 for _ in self.scan(app))

    def scan_after(self, seq: int, limit: int = 10_000) -> list[tuple[int, Impression]]:
        start = max(seq, 0)
        with self._lock:
            rows = self._rows[start:start + limit]
        return [(start + k + 1, imp) for k, imp in enumerate(rows) if imp is not None]

    def shown_after(self, seq: int, limit: int = 10_000, upto: int | None = None,
                    other_than: str | None = None) -> list[tuple[int, Shown]]:
        rows = self.scan_after(seq, len(self._rows) if upto is None else max(upto - max(seq, 0), 0))
        return [(s, Shown.of(imp)) for s, imp in rows if other_than is None or imp.origin != other_than][:limit]

    def head(self) -> int:
        return len(self._rows)

    def experiment_after(self, seq: int, upto: int, limit: int = 10_000) -> list[tuple[int, Impression]]:
        rows = self.scan_after(seq, max(upto - max(seq, 0), 0))
        return [(s, imp) for s, imp in rows if imp.experiment][:limit]

    def user_impressions(self, app: str, user_id: str) -> list[Impression]:
        return [r for r in self.scan(app) if r.user_id == user_id]

    def remove_user(self, app: str, user_id: str, upto: int | None = None, origin: str | None = None) -> int:
        with self._lock:
            gone = [k for k, r in enumerate(self._rows) if r is not None and _before(r, app, user_id, upto, origin)]
            for k in gone:
                self._rows[k] = None
        return len(gone)

    def compact(self) -> bool:
        return True

    def flush(self) -> None:
        pass

    def close(self) -> None:
        pass


class QueuedImpressionLog(ABC):
    """An SQL impression log whose ``append`` only queues: a writer thread commits queued
    impressions in batches, so the request path never waits on the database. ``flush`` (and every
    read) waits until the queue is written. A backend says how to run its SQL."""

    name = "impressions"
    placeholder = "?"  # the driver's parameter marker

    def __init__(self) -> None:
        self._lock = threading.Lock()  # the connection
        self._queue: list[Impression] = []
        self._cond = threading.Condition()
        self._closed = False
        self._writing = False
        self._writer = threading.Thread(target=self._run, name="impression-writer", daemon=True)
        self._writer.start()

    # ---- what a backend provides (called with the connection lock held)
    @abstractmethod
    def _insert(self, sql: str, rows: list[tuple]) -> None:
        """Run ``sql`` once per row, all rows in one transaction."""

    @abstractmethod
    def _fetch(self, sql: str, params: tuple) -> list[tuple]: ...

    @abstractmethod
    def _delete(self, sql: str, params: tuple) -> int:
        """Run one DELETE in a transaction of its own; returns how many rows it removed."""

    @abstractmethod
    def _close(self) -> None: ...

    # ---- the protocol
    def _where(self, app: str | None) -> tuple[str, tuple]:
        return ("", ()) if app is None else (f" WHERE app = {self.placeholder}", (app,))

    def append(self, impressions: Sequence[Impression]) -> None:
        if not impressions:
            return
        with self._cond:
            if self._closed:
                raise RuntimeError(f"impression log {self.name} is closed")
            self._queue.extend(impressions)
            self._cond.notify()

    def _run(self) -> None:
        marks = ",".join([self.placeholder] * (5 + len(_FOLD_COLUMNS)))
        sql = f"INSERT INTO impressions (app, user_id, item_id, ts, record, {', '.join(_FOLD_COLUMNS)}) VALUES ({marks})"
        while True:
            with self._cond:
                while not self._queue and not self._closed:
                    self._cond.wait()
                if not self._queue and self._closed:
                    return
                batch, self._queue = self._queue, []
                self._writing = True
            failed = False
            try:
                rows = [(i.app, i.user_id, i.item_id, i.timestamp, i.to_json(),
                         i.impression_id, i.request_id, i.position, i.event_seq, i.origin,
                         ",".join(map(str, i.features)) if i.features else None, i.experiment, i.variant)
                        for i in batch]
                with self._lock:
                    self._insert(sql, rows)
            except StoreUnavailable as exc:  # the server is away: kept and tried again, one line a try
                failed = True
                log.warning("impression log %s: %d impressions wait: %s", self.name, len(batch), exc)
            except Exception:  # noqa: BLE001 - the thread must outlive a busy or unreachable database
                failed = True
                log.exception("impression log %s: writing %d impressions failed", self.name, len(batch))
            finally:
                with self._cond:
                    if failed and not self._closed:
                        self._queue[:0] = batch  # kept, in order, for the next try
                    self._writing = False
                    self._cond.notify_all()
            if failed:
                time.sleep(0.5)

    def flush(self) -> None:
        """Wait until every queued impression is committed."""
        with self._cond:
            while self._queue or self._writing:
                self._cond.wait(timeout=0.1)

    def scan(self, app: str | None = None) -> Iterator[Impression]:
        self.flush()
        where, params = self._where(app)
        with self._lock:
            rows = self._fetch(f"SELECT record FROM impressions{where} ORDER BY seq", params)
        return iter([Impression.from_dict(json.loads(r[0])) for r in rows])

    def count(self, app: str | None = None) -> int:
        self.flush()
        where, params = self._where(app)
        with self._lock:
            return int(self._fetch(f"SELECT COUNT(*) FROM impressions{where}", params)[0][0])

    def scan_after(self, seq: int, limit: int = 10_000) -> list[tuple[int, Impression]]:
        """What is committed after ``seq`` (this handle's queue is not waited for: ``flush`` first
        to include it)."""
        p = self.placeholder
        with self._lock:
            rows = self._fetch(f"SELECT seq, record FROM impressions WHERE seq > {p} ORDER BY seq LIMIT {p}", (seq, limit))
        return [(int(r[0]), Impression.from_dict(orjson.loads(r[1]))) for r in rows]

    def shown_after(self, seq: int, limit: int = 10_000, upto: int | None = None,
                    other_than: str | None = None) -> list[tuple[int, Shown]]:
        p = self.placeholder
        where, params = [f"seq > {p}"], [seq]
        if upto is not None:
            where.append(f"seq <= {p}")
            params.append(upto)
        if other_than is not None:
            where.append(f"(origin IS NULL OR origin <> {p})")
            params.append(other_than)
        # rows written before the columns existed have only the record
        sql = (f"SELECT seq, impression_id, request_id, app, user_id, item_id, position, ts, event_seq, origin, "
               f"CASE WHEN impression_id IS NULL THEN record END, features FROM impressions WHERE {' AND '.join(where)} "
               f"ORDER BY seq LIMIT {p}")
        with self._lock:
            rows = self._fetch(sql, (*params, limit))
        return [(int(r[0]), Shown.of(Impression.from_dict(orjson.loads(r[10]))) if r[1] is None else
                 Shown(r[1], r[2], r[3], r[4], r[5], int(r[6]), float(r[7]), None if r[8] is None else int(r[8]), r[9],
                       tuple(int(v) for v in r[11].split(",")) if r[11] else None))
                for r in rows]

    def head(self) -> int:
        with self._lock:
            return int(self._fetch("SELECT COALESCE(MAX(seq), 0) FROM impressions", ())[0][0])

    def experiment_after(self, seq: int, upto: int, limit: int = 10_000) -> list[tuple[int, Impression]]:
        p = self.placeholder
        # the column filters without decoding a record; only tagged rows are decoded
        sql = (f"SELECT seq, record FROM impressions WHERE seq > {p} AND seq <= {p} AND experiment IS NOT NULL "
               f"AND experiment <> '' ORDER BY seq LIMIT {p}")
        with self._lock:
            rows = self._fetch(sql, (seq, upto, limit))
        return [(int(r[0]), Impression.from_dict(orjson.loads(r[1]))) for r in rows]

    def user_impressions(self, app: str, user_id: str) -> list[Impression]:
        self.flush()
        p = self.placeholder
        with self._lock:
            rows = self._fetch(f"SELECT record FROM impressions WHERE app = {p} AND user_id = {p} ORDER BY seq", (app, user_id))
        return [Impression.from_dict(orjson.loads(r[0])) for r in rows]

    def remove_user(self, app: str, user_id: str, upto: int | None = None, origin: str | None = None) -> int:
        with self._cond:  # queued ones never reach the table
            kept = [i for i in self._queue if not _before(i, app, user_id, upto, origin)]
            dropped = len(self._queue) - len(kept)
            self._queue[:] = kept
        self.flush()  # a batch being written now is in the table before the delete
        p = self.placeholder
        sql = f"DELETE FROM impressions WHERE app = {p} AND user_id = {p}"
        params: list = [app, user_id]
        if upto is not None:
            sql += f" AND (event_seq IS NULL OR event_seq <= {p})"
            params.append(upto)
        if origin is not None:
            sql += f" AND origin = {p}"
            params.append(origin)
        with self._lock:
            return dropped + self._delete(sql, tuple(params))

    def compact(self) -> bool:
        return True

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        self._writer.join(timeout=30)
        with self._lock:
            self._close()


_SQLITE_SCHEMA = """
CREATE TABLE IF NOT EXISTS impressions (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    app TEXT NOT NULL,
    user_id TEXT NOT NULL,
    item_id TEXT NOT NULL,
    ts REAL NOT NULL,
    record TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS impressions_app ON impressions (app, seq);
CREATE INDEX IF NOT EXISTS impressions_user ON impressions (app, user_id);
"""

# What the ranking's folds read (:class:`Shown`), beside the record; added to logs created without them.
_FOLD_COLUMNS = {"impression_id": "TEXT", "request_id": "TEXT", "position": "INTEGER", "event_seq": "BIGINT", "origin": "TEXT",
                 "features": "TEXT", "experiment": "TEXT", "variant": "TEXT"}


def _add_fold_columns(conn: sqlite3.Connection) -> None:
    conn.execute("BEGIN IMMEDIATE")  # one worker at a time: the others find the columns there
    try:
        have = {row[1] for row in conn.execute("PRAGMA table_info(impressions)")}
        for name, kind in _FOLD_COLUMNS.items():
            if name not in have:
                conn.execute(f"ALTER TABLE impressions ADD COLUMN {name} {kind}")
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise


class SQLiteImpressionLog(QueuedImpressionLog):
    """Impressions in their own SQLite file beside the event log (WAL, ``synchronous=NORMAL``: an
    impression lost in a machine crash costs one OPE sample, never an acknowledged event).

    Every API worker process opens the file and writes to it. SQLite lets one writer in at a time;
    the others wait for it (``busy_timeout``) rather than fail, and a write transaction takes the
    write lock when it begins (``BEGIN IMMEDIATE``), so rows commit in the order of their ``seq``."""

    busy_timeout_ms = 30_000

    def __init__(self, path: str | Path) -> None:
        self.path = self.name = str(path)
        if self.path != ":memory:":
            Path(self.path).parent.mkdir(parents=True, exist_ok=True)
        self._conn = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None,
                                     timeout=self.busy_timeout_ms / 1000)
        # before anything else: workers that start together create the file and its schema at once
        self._conn.execute(f"PRAGMA busy_timeout={self.busy_timeout_ms}")
        self._conn.execute("PRAGMA journal_mode=WAL")
        self._conn.execute("PRAGMA synchronous=NORMAL")
        self._conn.execute("PRAGMA secure_delete=ON")  # a deleted user's rows are zeroed in the file
        self._conn.executescript(_SQLITE_SCHEMA)
        _add_fold_columns(self._conn)
        super().__init__()

    def _insert(self, sql: str, rows: list[tuple]) -> None:
        self._conn.execute("BEGIN IMMEDIATE")
        self._conn.executemany(sql, rows)
        self._conn.execute("COMMIT")

    def _fetch(self, sql: str, params: tuple) -> list[tuple]:
        return self._conn.execute(sql, params).fetchall()

    def _delete(self, sql: str, params: tuple) -> int:
        self._conn.execute("BEGIN IMMEDIATE")
        try:
            n = self._conn.execute(sql, params).rowcount
            self._conn.execute("COMMIT")
        except BaseException:
            self._conn.execute("ROLLBACK")
            raise
        return n

    def compact(self) -> bool:
        """``VACUUM`` and truncate the write-ahead log (:func:`liverec.store.sqlite.compact`);
        impressions queued meanwhile are written after it."""
        if self.path == ":memory:":
            return True
        self.flush()
        with self._lock:
            return compact_sqlite(self._conn)

    def _close(self) -> None:
        self._conn.close()


_POSTGRES_SCHEMA = """
CREATE TABLE IF NOT EXISTS impressions (
    seq BIGSERIAL PRIMARY KEY,
    app TEXT NOT NULL,
    user_id TEXT NOT NULL,
    item_id TEXT NOT NULL,
    ts DOUBLE PRECISION NOT NULL,
    record TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS impressions_app ON impressions (app, seq);
CREATE INDEX IF NOT EXISTS impressions_user ON impressions (app, user_id);
""" + "ALTER TABLE impressions " + ", ".join(f"ADD COLUMN IF NOT EXISTS {c} {t}" for c, t in _FOLD_COLUMNS.items()) + ";\n"


IMPRESSION_APPEND_LOCK = 0x6C69766573  # advisory lock key of impression inserts (not the event log's)
_PG_TYPES = {"TEXT": "text", "INTEGER": "int", "BIGINT": "bigint"}
_PG_COLUMNS = {"app": "text", "user_id": "text", "item_id": "text", "ts": "float8", "record": "text",
               **{name: _PG_TYPES[kind] for name, kind in _FOLD_COLUMNS.items()}}


class PostgresImpressionLog(QueuedImpressionLog):
    """Impressions in the store's PostgreSQL schema, one table shared by every API worker, so
    off-policy evaluation reads the traffic of all of them (`liverec ope --store`). Its own
    connection: writing impressions never holds the event log's."""

    placeholder = "%s"

    def __init__(self, url: str) -> None:
        from ..store.postgres import Link, locked_batch_insert

        # reconnects after the server went away (the writer keeps the queue and tries again)
        self._link = Link(url, _POSTGRES_SCHEMA)
        self.schema = self._link.schema
        self.name = f"postgresql schema {self.schema}"
        self._insert_sql = ("WITH impression_lock AS (SELECT pg_advisory_xact_lock(%s)) "
                            + locked_batch_insert("impressions", _PG_COLUMNS, "impression_lock"))
        super().__init__()

    def _insert(self, sql: str, rows: list[tuple]) -> None:
        # Serialised across workers: a BIGSERIAL value is taken at insert, not at commit, so
        # without the lock a reader could pass a seq whose transaction commits after it. One
        # statement (locked_batch_insert); not sent again on a new connection (impressions have
        # no key a second insert would be ignored by).
        if rows:
            self._link.execute(self._insert_sql, [IMPRESSION_APPEND_LOCK, batch_rows(rows)], again=False)

    def _fetch(self, sql: str, params: tuple) -> list[tuple]:
        return self._link.execute(sql, params).fetchall()

    def _delete(self, sql: str, params: tuple) -> int:
        with self._link.transaction() as conn:
            return conn.execute(sql, params).rowcount

    def _close(self) -> None:
        self._link.close()


def open_impressions(store_url: str, data_dir: str | Path) -> ImpressionLog:
    """The impression log that goes with a store: in PostgreSQL when the store is (shared by the
    workers), else an SQLite file ``impressions.db`` in ``data_dir``; in memory for an in-memory store."""
    if store_url.startswith(("postgresql://", "postgres://")):
        return PostgresImpressionLog(store_url)
    if store_url.endswith(":memory:"):
        return MemoryImpressionLog()
    return SQLiteImpressionLog(Path(data_dir) / "impressions.db")


def feedback_reward(event: Event, types: Mapping[str, TypeSpec] = DEFAULT_TYPES) -> float | None:
    """1 for a positive event, 0 for a negative one, ``None`` for neutral (impression, undo...)."""
    spec = types.get(event.type)
    if spec is None or event.item_id is None:
        return None
    if spec.polarity == "positive":
        return 1.0
    if spec.polarity == "negative":
        return 0.0
    return None


def assign_rewards(
    impressions: Iterable[Impression],
    events: Iterable[Event],
    window_s: float,
    types: Mapping[str, TypeSpec] = DEFAULT_TYPES,
    now: float | None = None,
) -> list[tuple[Impression, float]]:
    """Each impression with its reward: the first feedback on (user, item) in ``[t, t + window]``.

    Impressions whose window has not closed yet (``t + window > now``) and that have no feedback
    are left out (their reward is not known yet).
    """
    by_key: dict[tuple[str, str, str], list[tuple[float, float]]] = {}
    for e in events:
        r = feedback_reward(e, types)
        if r is not None:
            by_key.setdefault((e.app, e.user_id, e.item_id), []).append((e.timestamp, r))  # type: ignore[arg-type]
    for fb in by_key.values():
        fb.sort(key=lambda x: x[0])
    out: list[tuple[Impression, float]] = []
    for imp in impressions:
        reward: float | None = None
        for t, r in by_key.get((imp.app, imp.user_id, imp.item_id), ()):
            if imp.timestamp <= t <= imp.timestamp + window_s:
                reward = r
                break
        if reward is None:
            if now is not None and imp.timestamp + window_s > now:
                continue
            reward = 0.5
        out.append((imp, reward))
    return out
