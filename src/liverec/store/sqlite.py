"""The embedded default backend: one SQLite file (WAL); several processes may write (SQLite
serialises them), each waiting up to ``busy_timeout`` for the write lock.

Durability: every append is one transaction committed with ``synchronous=FULL`` before the call
returns, so an acknowledged batch survives a crash of the process or the machine. Idempotency: a
unique key on (app, event_id); ``INSERT OR IGNORE`` skips duplicates and the rows that were really
inserted are read back by their sequence numbers (``seq`` never reuses a value).

Erasure: ``secure_delete`` is on, so a deleted row's bytes are overwritten with zeros in the
pages (and the freed pages) that held it. That is not all: when a page splits or merges, SQLite
copies cells to their new place and leaves the old bytes in the unused space of the page, where
no delete reaches them, and the write-ahead log holds earlier versions of pages. :func:`compact`
(``VACUUM``, then the write-ahead log checkpointed and truncated) leaves neither.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from pathlib import Path
from typing import Sequence

from ..events import Event
from .base import DeletionRecord, user_digest
from .sql import DELETION_COLUMNS, EXPERIMENT_COLUMNS, SqlDeletionReads, SqlExperimentReads
from .base import ApiKey, AppendResult, ExperimentRecord, Item
from .sql import (EVENT_COLUMNS, KEY_COLUMNS, KEY_TOUCH, SqlCatalogReads, SqlEventReads, SqlKeyReads, SqlSnapshotReads,
                  accepted_events, key_row)

SCHEMA = """
CREATE TABLE IF NOT EXISTS events (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    app TEXT NOT NULL,
    event_id TEXT NOT NULL,
    user_id TEXT NOT NULL,
    item_id TEXT,
    type TEXT NOT NULL,
    ts REAL NOT NULL,
    value REAL,
    text TEXT,
    scope TEXT NOT NULL DEFAULT 'item',
    target TEXT,
    context TEXT,
    UNIQUE (app, event_id)
);
CREATE INDEX IF NOT EXISTS events_user ON events (app, user_id, seq);
CREATE TABLE IF NOT EXISTS items (
    app TEXT NOT NULL,
    item_id TEXT NOT NULL,
    title TEXT NOT NULL DEFAULT '',
    text TEXT NOT NULL DEFAULT '',
    categories TEXT NOT NULL DEFAULT '[]',
    attributes TEXT NOT NULL DEFAULT '{}',
    updated_at REAL NOT NULL,
    PRIMARY KEY (app, item_id)
);
CREATE TABLE IF NOT EXISTS changes (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    app TEXT NOT NULL,
    kind TEXT NOT NULL,
    key TEXT NOT NULL,
    event_seq INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS deletions (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    deletion_id TEXT NOT NULL UNIQUE,
    app TEXT NOT NULL,
    subject TEXT NOT NULL,
    requested_by TEXT NOT NULL,
    at REAL NOT NULL,
    receipt TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS snapshots (
    app TEXT NOT NULL,
    name TEXT NOT NULL,
    blob BLOB NOT NULL,
    updated_at REAL NOT NULL,
    PRIMARY KEY (app, name)
);
CREATE TABLE IF NOT EXISTS api_keys (
    key_id TEXT PRIMARY KEY,
    app TEXT NOT NULL,
    scopes TEXT NOT NULL,
    digest TEXT NOT NULL,
    rate REAL NOT NULL,
    burst REAL NOT NULL,
    created_at REAL NOT NULL,
    revoked_at REAL,
    last_used_at REAL
);
CREATE TABLE IF NOT EXISTS experiments (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    experiment_id TEXT NOT NULL UNIQUE,
    app TEXT NOT NULL,
    name TEXT NOT NULL,
    kind TEXT NOT NULL,
    spec TEXT NOT NULL,
    created_at REAL NOT NULL,
    stopped_at REAL
);
"""



def compact(conn: sqlite3.Connection, attempts: int = 20) -> bool:
    """Leave no byte of a deleted row in the database's files: ``VACUUM`` writes every page
    afresh (packed, its unused space zeroed), then the write-ahead log, whose frames are pages as
    they were, is checkpointed into the file and truncated. Writers of other processes wait
    (``busy_timeout``) meanwhile; False when another connection kept it from completing (a write
    lock held past the timeout, readers of older pages), to be tried again."""
    try:
        conn.execute("VACUUM")
    except sqlite3.OperationalError:  # locked past the busy timeout
        return False
    for _ in range(attempts):
        busy, _, _ = conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
        if not busy:
            return True
        time.sleep(0.05)
    return False


def _event_head(conn: sqlite3.Connection) -> int:
    """The highest event seq ever assigned (AUTOINCREMENT: deleted rows do not lower it)."""
    row = conn.execute("SELECT seq FROM sqlite_sequence WHERE name = 'events'").fetchone()
    return int(row[0]) if row else 0


def _event_row(e: Event) -> tuple:
    context = json.dumps(e.context, separators=(",", ":")) if e.context is not None else None
    return (e.app, e.event_id, e.user_id, e.item_id, e.type, e.timestamp, e.value, e.text, e.scope, e.target, context)


class SQLiteStore:
    """Event log, catalog, snapshots and API keys in one SQLite database file."""

    placeholder = "?"
    item_order = "rowid"
    decode_json = staticmethod(json.loads)

    def __init__(self, path: str | Path):
        self.path = str(path)
        if self.path != ":memory:":
            Path(self.path).parent.mkdir(parents=True, exist_ok=True)
        self._conn = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        self._lock = threading.RLock()
        with self._lock:
            self._conn.execute("PRAGMA journal_mode=WAL")
            self._conn.execute("PRAGMA synchronous=FULL")
            self._conn.execute("PRAGMA secure_delete=ON")  # deleted rows are zeroed, not left in free space
            self._conn.execute("PRAGMA busy_timeout=10000")
            self._conn.executescript(SCHEMA)
        # Reads on a connection of their own: in WAL mode they never wait for a writer, so a
        # request's catch-up does not queue behind this process's append waiting for the write
        # lock another process holds. (":memory:" is one database per connection: it shares.)
        if self.path == ":memory:":
            self._read_conn, self._read_lock = self._conn, self._lock
        else:
            self._read_conn = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
            self._read_conn.execute("PRAGMA busy_timeout=10000")
            self._read_lock = threading.RLock()
        self.events = _EventLog(self)
        self.deletions = _Deletions(self)
        self.catalog = _Catalog(self)
        self.snapshots = _Snapshots(self)
        self.keys = _Keys(self)
        self.experiments = _Experiments(self)

    def transaction(self):
        return _Transaction(self)

    def compact(self) -> bool:
        """See :func:`compact` (this process's appends wait meanwhile)."""
        if self.path == ":memory:":
            return True
        with self._lock:
            return compact(self._conn)

    def close(self) -> None:
        with self._lock:
            self._conn.close()
        if self._read_conn is not self._conn:
            with self._read_lock:
                self._read_conn.close()


class _Transaction:
    def __init__(self, store: SQLiteStore):
        self.store = store

    def __enter__(self) -> sqlite3.Connection:
        self.store._lock.acquire()
        self.store._conn.execute("BEGIN IMMEDIATE")
        return self.store._conn

    def __exit__(self, exc_type, exc, tb) -> None:
        try:
            self.store._conn.execute("ROLLBACK" if exc_type else "COMMIT")
        finally:
            self.store._lock.release()


class _EventLog(SqlEventReads):
    _s: SQLiteStore

    def version(self) -> int | None:
        # on the read connection, every commit but its own moves it: this process's writes too
        with self._s._read_lock:
            return self._s._read_conn.execute("PRAGMA data_version").fetchone()[0]

    def append(self, events: Sequence[Event]) -> AppendResult:
        if not events:
            return AppendResult([], 0)
        with self._s.transaction() as conn:
            # AUTOINCREMENT keeps seq growing even past deleted rows, so the new rows are seq > before.
            before = _event_head(conn)
            written = conn.executemany(
                f"INSERT OR IGNORE INTO events ({EVENT_COLUMNS}) VALUES (?,?,?,?,?,?,?,?,?,?,?)",
                [_event_row(e) for e in events],
            ).rowcount
            if written == len(events):  # no duplicate: the batch went in as it is (no read-back)
                return AppendResult(list(events), 0)
            inserted = conn.execute("SELECT app, event_id FROM events WHERE seq > ? ORDER BY seq", (before,)).fetchall()
        accepted = accepted_events(events, inserted)
        return AppendResult(accepted, len(events) - len(accepted))

    def remove_user(self, app: str, user_id: str) -> list[tuple[int, Event]]:
        with self._s.transaction() as conn:
            rows = conn.execute(f"SELECT seq, {EVENT_COLUMNS} FROM events WHERE app = ? AND user_id = ? ORDER BY seq",
                                (app, user_id)).fetchall()
            conn.execute("DELETE FROM events WHERE app = ? AND user_id = ?", (app, user_id))
            conn.execute("INSERT INTO changes (app, kind, key, event_seq) VALUES (?, 'user_deleted', ?, ?)",
                         (app, user_digest(app, user_id), _event_head(conn)))
        return [(r[0], self._event(r[1:])) for r in rows]


class _Deletions(SqlDeletionReads):
    _s: SQLiteStore

    def record(self, entry: DeletionRecord) -> int:
        with self._s.transaction() as conn:
            return int(conn.execute(f"INSERT INTO deletions ({DELETION_COLUMNS}) VALUES (?,?,?,?,?,?)",
                                    (entry.deletion_id, entry.app, entry.subject, entry.requested_by, entry.at,
                                     json.dumps(entry.receipt, separators=(",", ":")))).lastrowid)


class _Catalog(SqlCatalogReads):
    _s: SQLiteStore

    def upsert(self, items: Sequence[Item]) -> int:
        now = time.time()
        rows = [
            (i.app, i.item_id, i.title, i.text, json.dumps(list(i.categories)), json.dumps(i.attributes), i.updated_at or now)
            for i in items
        ]
        with self._s.transaction() as conn:
            conn.executemany(
                "INSERT INTO items (app, item_id, title, text, categories, attributes, updated_at) VALUES (?,?,?,?,?,?,?) "
                "ON CONFLICT (app, item_id) DO UPDATE SET title = excluded.title, text = excluded.text, "
                "categories = excluded.categories, attributes = excluded.attributes, updated_at = excluded.updated_at",
                rows,
            )
            head = _event_head(conn)
            conn.executemany("INSERT INTO changes (app, kind, key, event_seq) VALUES (?, 'item', ?, ?)",
                             [(i.app, i.item_id, head) for i in items])
        return len(rows)


class _Snapshots(SqlSnapshotReads):
    _s: SQLiteStore

    def put(self, app: str, name: str, blob: bytes) -> None:
        with self._s.transaction() as conn:
            conn.execute(
                "INSERT OR REPLACE INTO snapshots (app, name, blob, updated_at) VALUES (?,?,?,?)",
                (app, name, blob, time.time()),
            )

    def delete(self, app: str, name: str) -> bool:
        with self._s.transaction() as conn:
            return conn.execute("DELETE FROM snapshots WHERE app = ? AND name = ?", (app, name)).rowcount > 0


class _Keys(SqlKeyReads):
    _s: SQLiteStore

    def add(self, key: ApiKey) -> None:
        with self._s.transaction() as conn:
            conn.execute(f"INSERT INTO api_keys ({KEY_COLUMNS}) VALUES (?,?,?,?,?,?,?,?,?)", key_row(key))
            conn.execute("INSERT INTO changes (app, kind, key, event_seq) VALUES (?, 'api_key', ?, ?)",
                         (key.app, key.key_id, _event_head(conn)))

    def revoke(self, key_id: str, at: float) -> bool:
        with self._s.transaction() as conn:
            rows = conn.execute("UPDATE api_keys SET revoked_at = COALESCE(revoked_at, ?) WHERE key_id = ? RETURNING app",
                                (at, key_id)).fetchall()  # the key's app, or none: no such key
            if not rows:
                return False
            conn.execute("INSERT INTO changes (app, kind, key, event_seq) VALUES (?, 'api_key', ?, ?)",
                         (rows[0][0], key_id, _event_head(conn)))
        return True

    def touch(self, used: dict[str, float]) -> None:
        if used:
            with self._s.transaction() as conn:
                conn.executemany(KEY_TOUCH, [(at, key_id, at) for key_id, at in used.items()])


class _Experiments(SqlExperimentReads):
    _s: SQLiteStore

    def create(self, record: ExperimentRecord) -> None:
        with self._s.transaction() as conn:
            conn.execute(f"INSERT INTO experiments ({EXPERIMENT_COLUMNS}) VALUES (?,?,?,?,?,?,?)",
                         (record.experiment_id, record.app, record.name, record.kind,
                          json.dumps(record.spec, separators=(",", ":")), record.created_at, record.stopped_at))
            conn.execute("INSERT INTO changes (app, kind, key, event_seq) VALUES (?, 'experiment', ?, ?)",
                         (record.app, record.experiment_id, _event_head(conn)))

    def stop(self, experiment_id: str, at: float) -> bool:
        with self._s.transaction() as conn:
            row = conn.execute("SELECT app FROM experiments WHERE experiment_id = ?", (experiment_id,)).fetchone()
            if row is None:
                return False
            conn.execute("UPDATE experiments SET stopped_at = COALESCE(stopped_at, ?) WHERE experiment_id = ?",
                         (at, experiment_id))
            conn.execute("INSERT INTO changes (app, kind, key, event_seq) VALUES (?, 'experiment', ?, ?)",
                         (row[0], experiment_id, _event_head(conn)))
        return True
