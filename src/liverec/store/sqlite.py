"""The embedded default backend: one SQLite file (WAL), one writer process.

Durability: every append is one transaction committed with ``synchronous=FULL`` before the call
returns, so an acknowledged batch survives a crash of the process or the machine. Idempotency: a
unique key on (app, event_id); ``INSERT OR IGNORE`` skips duplicates and the rows that were really
inserted are read back by their sequence numbers (``seq`` never reuses a value).
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from pathlib import Path
from typing import Any, Iterator, Sequence

from ..events import Event
from .base import AppendResult, Item

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
CREATE TABLE IF NOT EXISTS snapshots (
    app TEXT NOT NULL,
    name TEXT NOT NULL,
    blob BLOB NOT NULL,
    updated_at REAL NOT NULL,
    PRIMARY KEY (app, name)
);
"""

_EVENT_COLUMNS = "app, event_id, user_id, item_id, type, ts, value, text, scope, target, context"


def _event_row(e: Event) -> tuple:
    context = json.dumps(e.context, separators=(",", ":")) if e.context is not None else None
    return (e.app, e.event_id, e.user_id, e.item_id, e.type, e.timestamp, e.value, e.text, e.scope, e.target, context)


def _row_event(row: Sequence[Any]) -> Event:
    app, event_id, user_id, item_id, type_, ts, value, text, scope, target, context = row
    # Positional construction: this runs once per stored event at start-up.
    return Event(app, event_id, user_id, type_, ts, item_id, value, text, scope, target,
                 json.loads(context) if context is not None else None)


class SQLiteStore:
    """Event log, catalog and snapshots in one SQLite database file."""

    def __init__(self, path: str | Path):
        self.path = str(path)
        if self.path != ":memory:":
            Path(self.path).parent.mkdir(parents=True, exist_ok=True)
        self._conn = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        self._lock = threading.RLock()
        with self._lock:
            self._conn.execute("PRAGMA journal_mode=WAL")
            self._conn.execute("PRAGMA synchronous=FULL")
            self._conn.execute("PRAGMA busy_timeout=10000")
            self._conn.executescript(SCHEMA)
        self.events = _EventLog(self)
        self.catalog = _Catalog(self)
        self.snapshots = _Snapshots(self)

    def transaction(self):
        return _Transaction(self)

    def close(self) -> None:
        with self._lock:
            self._conn.close()


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


class _EventLog:
    def __init__(self, store: SQLiteStore):
        self._s = store

    def append(self, events: Sequence[Event]) -> AppendResult:
        if not events:
            return AppendResult([], 0)
        with self._s.transaction() as conn:
            before = conn.execute("SELECT COALESCE(MAX(seq), 0) FROM events").fetchone()[0]
            # AUTOINCREMENT keeps seq growing even past deleted rows, so the new rows are seq > before.
            before = max(before, conn.execute("SELECT COALESCE((SELECT seq FROM sqlite_sequence WHERE name='events'), 0)").fetchone()[0])
            conn.executemany(
                f"INSERT OR IGNORE INTO events ({_EVENT_COLUMNS}) VALUES (?,?,?,?,?,?,?,?,?,?,?)",
                [_event_row(e) for e in events],
            )
            inserted = conn.execute("SELECT app, event_id FROM events WHERE seq > ? ORDER BY seq", (before,)).fetchall()
        # The first occurrence of an (app, event_id) in the batch is the one stored.
        first: dict[tuple[str, str], Event] = {}
        for e in events:
            first.setdefault((e.app, e.event_id), e)
        accepted = [first[(app, event_id)] for app, event_id in inserted]
        return AppendResult(accepted, len(events) - len(accepted))

    def scan(self, app: str | None = None, after_seq: int = 0, batch: int = 20_000) -> Iterator[tuple[int, Event]]:
        last = after_seq
        while True:
            with self._s._lock:
                if app is None:
                    rows = self._s._conn.execute(
                        f"SELECT seq, {_EVENT_COLUMNS} FROM events WHERE seq > ? ORDER BY seq LIMIT ?", (last, batch)
                    ).fetchall()
                else:
                    rows = self._s._conn.execute(
                        f"SELECT seq, {_EVENT_COLUMNS} FROM events WHERE app = ? AND seq > ? ORDER BY seq LIMIT ?",
                        (app, last, batch),
                    ).fetchall()
            if not rows:
                return
            for row in rows:
                yield row[0], _row_event(row[1:])
            last = rows[-1][0]

    def last_seq(self) -> int:
        with self._s._lock:
            return self._s._conn.execute("SELECT COALESCE(MAX(seq), 0) FROM events").fetchone()[0]

    def user_events(self, app: str, user_id: str) -> list[Event]:
        with self._s._lock:
            rows = self._s._conn.execute(
                f"SELECT {_EVENT_COLUMNS} FROM events WHERE app = ? AND user_id = ? ORDER BY seq", (app, user_id)
            ).fetchall()
        return [_row_event(r) for r in rows]

    def delete_user(self, app: str, user_id: str) -> int:
        with self._s.transaction() as conn:
            return conn.execute("DELETE FROM events WHERE app = ? AND user_id = ?", (app, user_id)).rowcount

    def count(self, app: str | None = None) -> int:
        with self._s._lock:
            if app is None:
                return self._s._conn.execute("SELECT COUNT(*) FROM events").fetchone()[0]
            return self._s._conn.execute("SELECT COUNT(*) FROM events WHERE app = ?", (app,)).fetchone()[0]

    def apps(self) -> list[str]:
        with self._s._lock:
            rows = self._s._conn.execute(
                "SELECT DISTINCT app FROM events UNION SELECT DISTINCT app FROM items"
            ).fetchall()
        return sorted(r[0] for r in rows)


class _Catalog:
    def __init__(self, store: SQLiteStore):
        self._s = store

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
        return len(rows)

    @staticmethod
    def _item(row: Sequence[Any]) -> Item:
        app, item_id, title, text, categories, attributes, updated_at = row
        return Item(app, item_id, title, text, tuple(json.loads(categories)), json.loads(attributes), updated_at)

    def get(self, app: str, item_id: str) -> Item | None:
        with self._s._lock:
            row = self._s._conn.execute(
                "SELECT app, item_id, title, text, categories, attributes, updated_at FROM items WHERE app = ? AND item_id = ?",
                (app, item_id),
            ).fetchone()
        return self._item(row) if row else None

    def scan(self, app: str | None = None) -> Iterator[Item]:
        query = "SELECT app, item_id, title, text, categories, attributes, updated_at FROM items"
        with self._s._lock:
            rows = (
                self._s._conn.execute(query + " ORDER BY app, rowid").fetchall()
                if app is None
                else self._s._conn.execute(query + " WHERE app = ? ORDER BY rowid", (app,)).fetchall()
            )
        for row in rows:
            yield self._item(row)

    def count(self, app: str | None = None) -> int:
        with self._s._lock:
            if app is None:
                return self._s._conn.execute("SELECT COUNT(*) FROM items").fetchone()[0]
            return self._s._conn.execute("SELECT COUNT(*) FROM items WHERE app = ?", (app,)).fetchone()[0]


class _Snapshots:
    def __init__(self, store: SQLiteStore):
        self._s = store

    def put(self, app: str, name: str, blob: bytes) -> None:
        with self._s.transaction() as conn:
            conn.execute(
                "INSERT OR REPLACE INTO snapshots (app, name, blob, updated_at) VALUES (?,?,?,?)",
                (app, name, blob, time.time()),
            )

    def get(self, app: str, name: str) -> bytes | None:
        with self._s._lock:
            row = self._s._conn.execute("SELECT blob FROM snapshots WHERE app = ? AND name = ?", (app, name)).fetchone()
        return row[0] if row else None
