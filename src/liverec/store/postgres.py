"""PostgreSQL backend: the event log, catalog and snapshots shared by several API workers.

URL: ``postgresql://user@host:port/db?schema=NAME`` (``schema`` optional, default ``public``;
tests use one schema each).

Ordering: appends take a transaction-level advisory lock, so sequence numbers are committed in
order. A reader that has applied everything up to ``seq`` therefore never misses a row that
commits later with a smaller ``seq`` — which lets every worker keep its in-memory state a fold of
the shared log by reading ``seq > last_applied`` (see ``Service.catch_up``).
"""

from __future__ import annotations

import json
import threading
import time
from typing import Any, Iterator, Sequence
from urllib.parse import parse_qs, urlparse, urlunparse

import psycopg

from ..events import Event
from .base import AppendResult, Item

APPEND_LOCK = 0x6C69766572  # advisory lock key ("liver")

SCHEMA = """
CREATE TABLE IF NOT EXISTS events (
    seq BIGSERIAL PRIMARY KEY,
    app TEXT NOT NULL,
    event_id TEXT NOT NULL,
    user_id TEXT NOT NULL,
    item_id TEXT,
    type TEXT NOT NULL,
    ts DOUBLE PRECISION NOT NULL,
    value DOUBLE PRECISION,
    text TEXT,
    scope TEXT NOT NULL DEFAULT 'item',
    target TEXT,
    context JSONB,
    UNIQUE (app, event_id)
);
CREATE INDEX IF NOT EXISTS events_user ON events (app, user_id, seq);
CREATE TABLE IF NOT EXISTS items (
    app TEXT NOT NULL,
    item_id TEXT NOT NULL,
    title TEXT NOT NULL DEFAULT '',
    text TEXT NOT NULL DEFAULT '',
    categories JSONB NOT NULL DEFAULT '[]',
    attributes JSONB NOT NULL DEFAULT '{}',
    updated_at DOUBLE PRECISION NOT NULL,
    ord BIGSERIAL,
    PRIMARY KEY (app, item_id)
);
CREATE TABLE IF NOT EXISTS snapshots (
    app TEXT NOT NULL,
    name TEXT NOT NULL,
    blob BYTEA NOT NULL,
    updated_at DOUBLE PRECISION NOT NULL,
    PRIMARY KEY (app, name)
);
"""

_COLUMNS = "app, event_id, user_id, item_id, type, ts, value, text, scope, target, context"


def _row_event(row: Sequence[Any]) -> Event:
    app, event_id, user_id, item_id, type_, ts, value, text, scope, target, context = row
    return Event(app=app, event_id=event_id, user_id=user_id, type=type_, timestamp=ts, item_id=item_id,
                 value=value, text=text, scope=scope, target=target, context=context)


class PostgresStore:
    """Event log, catalog and snapshots in one PostgreSQL schema."""

    def __init__(self, url: str):
        parsed = urlparse(url)
        self.schema = parse_qs(parsed.query).get("schema", ["public"])[0]
        if not self.schema.replace("_", "").isalnum():
            raise ValueError(f"store URL {url!r}: schema {self.schema!r} must be letters, digits and _")
        dsn = urlunparse(parsed._replace(scheme="postgresql", query=""))
        self._conn = psycopg.connect(dsn, autocommit=True)
        self._lock = threading.RLock()
        with self._lock:
            self._conn.execute(f'CREATE SCHEMA IF NOT EXISTS "{self.schema}"')
            self._conn.execute(f'SET search_path TO "{self.schema}"')
            with self._conn.transaction():
                self._conn.execute("SELECT pg_advisory_xact_lock(%s)", (APPEND_LOCK,))
                self._conn.execute(SCHEMA)
        self.events = _EventLog(self)
        self.catalog = _Catalog(self)
        self.snapshots = _Snapshots(self)

    def drop(self) -> None:
        """Remove the schema and everything in it (tests)."""
        with self._lock:
            self._conn.execute(f'DROP SCHEMA IF EXISTS "{self.schema}" CASCADE')

    def close(self) -> None:
        with self._lock:
            self._conn.close()


class _EventLog:
    def __init__(self, store: PostgresStore):
        self._s = store

    def append(self, events: Sequence[Event]) -> AppendResult:
        if not events:
            return AppendResult([], 0)
        columns = list(zip(*[
            (e.app, e.event_id, e.user_id, e.item_id, e.type, e.timestamp, e.value, e.text, e.scope, e.target,
             json.dumps(e.context) if e.context is not None else None)
            for e in events
        ]))
        with self._s._lock, self._s._conn.transaction():
            conn = self._s._conn
            conn.execute("SELECT pg_advisory_xact_lock(%s)", (APPEND_LOCK,))
            # WITH ORDINALITY keeps batch order, so the first of in-batch duplicates is the one stored.
            rows = conn.execute(
                f"""INSERT INTO events ({_COLUMNS})
                SELECT a, e, u, i, t, ts, v, x, s, g, c::jsonb FROM unnest(
                    %s::text[], %s::text[], %s::text[], %s::text[], %s::text[], %s::float8[], %s::float8[],
                    %s::text[], %s::text[], %s::text[], %s::text[]) WITH ORDINALITY AS b(a, e, u, i, t, ts, v, x, s, g, c, n)
                ORDER BY n
                ON CONFLICT (app, event_id) DO NOTHING
                RETURNING seq, app, event_id""",
                [list(c) for c in columns],
            ).fetchall()
        first: dict[tuple[str, str], Event] = {}
        for e in events:
            first.setdefault((e.app, e.event_id), e)
        accepted = [first[(app, event_id)] for _, app, event_id in sorted(rows)]
        return AppendResult(accepted, len(events) - len(accepted))

    def scan(self, app: str | None = None, after_seq: int = 0, batch: int = 20_000) -> Iterator[tuple[int, Event]]:
        last = after_seq
        while True:
            with self._s._lock:
                if app is None:
                    rows = self._s._conn.execute(
                        f"SELECT seq, {_COLUMNS} FROM events WHERE seq > %s ORDER BY seq LIMIT %s", (last, batch)
                    ).fetchall()
                else:
                    rows = self._s._conn.execute(
                        f"SELECT seq, {_COLUMNS} FROM events WHERE app = %s AND seq > %s ORDER BY seq LIMIT %s",
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
                f"SELECT {_COLUMNS} FROM events WHERE app = %s AND user_id = %s ORDER BY seq", (app, user_id)
            ).fetchall()
        return [_row_event(r) for r in rows]

    def delete_user(self, app: str, user_id: str) -> int:
        with self._s._lock, self._s._conn.transaction():
            return self._s._conn.execute("DELETE FROM events WHERE app = %s AND user_id = %s", (app, user_id)).rowcount

    def count(self, app: str | None = None) -> int:
        with self._s._lock:
            if app is None:
                return self._s._conn.execute("SELECT COUNT(*) FROM events").fetchone()[0]
            return self._s._conn.execute("SELECT COUNT(*) FROM events WHERE app = %s", (app,)).fetchone()[0]

    def apps(self) -> list[str]:
        with self._s._lock:
            rows = self._s._conn.execute("SELECT DISTINCT app FROM events UNION SELECT DISTINCT app FROM items").fetchall()
        return sorted(r[0] for r in rows)


class _Catalog:
    def __init__(self, store: PostgresStore):
        self._s = store

    def upsert(self, items: Sequence[Item]) -> int:
        now = time.time()
        rows = [(i.app, i.item_id, i.title, i.text, json.dumps(list(i.categories)), json.dumps(i.attributes), i.updated_at or now)
                for i in items]
        with self._s._lock, self._s._conn.transaction():
            with self._s._conn.cursor() as cur:
                cur.executemany(
                    """INSERT INTO items (app, item_id, title, text, categories, attributes, updated_at)
                    VALUES (%s, %s, %s, %s, %s::jsonb, %s::jsonb, %s)
                    ON CONFLICT (app, item_id) DO UPDATE SET title = EXCLUDED.title, text = EXCLUDED.text,
                        categories = EXCLUDED.categories, attributes = EXCLUDED.attributes, updated_at = EXCLUDED.updated_at""",
                    rows,
                )
        return len(rows)

    @staticmethod
    def _item(row: Sequence[Any]) -> Item:
        app, item_id, title, text, categories, attributes, updated_at = row
        return Item(app, item_id, title, text, tuple(categories), dict(attributes), updated_at)

    def get(self, app: str, item_id: str) -> Item | None:
        with self._s._lock:
            row = self._s._conn.execute(
                "SELECT app, item_id, title, text, categories, attributes, updated_at FROM items WHERE app = %s AND item_id = %s",
                (app, item_id),
            ).fetchone()
        return self._item(row) if row else None

    def scan(self, app: str | None = None) -> Iterator[Item]:
        query = "SELECT app, item_id, title, text, categories, attributes, updated_at FROM items"
        with self._s._lock:
            rows = (self._s._conn.execute(query + " ORDER BY app, ord").fetchall() if app is None
                    else self._s._conn.execute(query + " WHERE app = %s ORDER BY ord", (app,)).fetchall())
        for row in rows:
            yield self._item(row)

    def count(self, app: str | None = None) -> int:
        with self._s._lock:
            if app is None:
                return self._s._conn.execute("SELECT COUNT(*) FROM items").fetchone()[0]
            return self._s._conn.execute("SELECT COUNT(*) FROM items WHERE app = %s", (app,)).fetchone()[0]


class _Snapshots:
    def __init__(self, store: PostgresStore):
        self._s = store

    def put(self, app: str, name: str, blob: bytes) -> None:
        with self._s._lock, self._s._conn.transaction():
            self._s._conn.execute(
                """INSERT INTO snapshots (app, name, blob, updated_at) VALUES (%s, %s, %s, %s)
                ON CONFLICT (app, name) DO UPDATE SET blob = EXCLUDED.blob, updated_at = EXCLUDED.updated_at""",
                (app, name, blob, time.time()),
            )

    def get(self, app: str, name: str) -> bytes | None:
        with self._s._lock:
            row = self._s._conn.execute("SELECT blob FROM snapshots WHERE app = %s AND name = %s", (app, name)).fetchone()
        return bytes(row[0]) if row else None
