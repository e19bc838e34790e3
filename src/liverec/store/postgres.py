"""PostgreSQL backend: the event log, catalog and snapshots shared by several API workers.

URL: ``postgresql://user@host:port/db?schema=NAME`` (``schema`` optional, default ``public``;
tests use one schema each).

Ordering: appends take a transaction-level advisory lock, so sequence numbers are committed in
order. A reader that has applied everything up to ``seq`` therefore never misses a row that
commits later with a smaller ``seq`` — which lets every worker keep its in-memory state a fold of
the shared log by reading ``seq > last_applied``.
"""

from __future__ import annotations

import json
import threading
import time
from typing import Sequence
from urllib.parse import parse_qs, urlparse, urlunparse

import psycopg

from ..events import Event
from .base import DeletionRecord, user_digest
from .sql import DELETION_COLUMNS, SqlDeletionReads
from .base import ApiKey, AppendResult, Item
from .sql import (EVENT_COLUMNS, KEY_COLUMNS, KEY_TOUCH, SqlCatalogReads, SqlEventReads, SqlKeyReads, SqlSnapshotReads,
                  accepted_events, key_row)

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
CREATE TABLE IF NOT EXISTS changes (
    seq BIGSERIAL PRIMARY KEY,
    app TEXT NOT NULL,
    kind TEXT NOT NULL,
    key TEXT NOT NULL,
    event_seq BIGINT NOT NULL
);
CREATE TABLE IF NOT EXISTS deletions (
    seq BIGSERIAL PRIMARY KEY,
    deletion_id TEXT NOT NULL UNIQUE,
    app TEXT NOT NULL,
    subject TEXT NOT NULL,
    requested_by TEXT NOT NULL,
    at DOUBLE PRECISION NOT NULL,
    receipt JSONB NOT NULL
);
CREATE TABLE IF NOT EXISTS snapshots (
    app TEXT NOT NULL,
    name TEXT NOT NULL,
    blob BYTEA NOT NULL,
    updated_at DOUBLE PRECISION NOT NULL,
    PRIMARY KEY (app, name)
);
CREATE TABLE IF NOT EXISTS api_keys (
    key_id TEXT PRIMARY KEY,
    app TEXT NOT NULL,
    scopes TEXT NOT NULL,
    digest TEXT NOT NULL,
    rate DOUBLE PRECISION NOT NULL,
    burst DOUBLE PRECISION NOT NULL,
    created_at DOUBLE PRECISION NOT NULL,
    revoked_at DOUBLE PRECISION,
    last_used_at DOUBLE PRECISION
);
"""



def connect(url: str, ddl: str) -> tuple[psycopg.Connection, str]:
    """An autocommit connection whose ``search_path`` is the URL's schema, after creating the schema
    (if absent) and running ``ddl`` (``CREATE ... IF NOT EXISTS`` statements; empty: neither, a
    plain connection to the schema).

    Both run under the advisory lock: PostgreSQL's ``IF NOT EXISTS`` does not make concurrent
    creation safe, and several workers start at once.
    """
    parsed = urlparse(url)
    schema = parse_qs(parsed.query).get("schema", ["public"])[0]
    if not schema.replace("_", "").isalnum():
        raise ValueError(f"store URL {url!r}: schema {schema!r} must be letters, digits and _")
    conn = psycopg.connect(urlunparse(parsed._replace(scheme="postgresql", query="")), autocommit=True)
    if ddl:
        with conn.transaction():
            conn.execute("SELECT pg_advisory_xact_lock(%s)", (APPEND_LOCK,))
            conn.execute(f'CREATE SCHEMA IF NOT EXISTS "{schema}"')
            conn.execute(f'SET LOCAL search_path TO "{schema}"')
            conn.execute(ddl)
    conn.execute(f'SET search_path TO "{schema}"')
    return conn, schema


def _event_head(conn: psycopg.Connection) -> int:
    """The highest event seq ever assigned (deleted rows do not lower it)."""
    row = conn.execute(
        "SELECT CASE WHEN is_called THEN last_value ELSE 0 END FROM events_seq_seq").fetchone()
    return int(row[0])


class PostgresStore:
    """Event log, catalog, snapshots and API keys in one PostgreSQL schema."""

    placeholder = "%s"
    item_order = "ord"
    decode_json = staticmethod(lambda value: value)  # psycopg decodes jsonb itself

    def __init__(self, url: str):
        self._conn, self.schema = connect(url, SCHEMA)
        self._lock = threading.RLock()
        # reads on a connection of their own: a request's catch-up never queues behind an append
        # of this process waiting for the advisory lock another worker holds
        self._read_conn, _ = connect(url, "")
        self._read_lock = threading.RLock()
        self.events = _EventLog(self)
        self.deletions = _Deletions(self)
        self.catalog = _Catalog(self)
        self.snapshots = _Snapshots(self)
        self.keys = _Keys(self)

    def compact(self) -> bool:
        """Nothing done here: deleted rows are dead tuples until (auto)VACUUM reclaims their
        space, and their bytes stay in the table's pages until the space is reused (``VACUUM
        FULL`` rewrites a table, under a lock no deployment should take per deletion)."""
        return True

    def drop(self) -> None:
        """Remove the schema and everything in it (tests)."""
        with self._lock:
            self._conn.execute(f'DROP SCHEMA IF EXISTS "{self.schema}" CASCADE')

    def close(self) -> None:
        with self._lock:
            self._conn.close()
        with self._read_lock:
            self._read_conn.close()


class _EventLog(SqlEventReads):
    _s: PostgresStore

    def version(self) -> int | None:
        return None  # no cheap "did anyone commit" check: the follower asks for the heads

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
                f"""INSERT INTO events ({EVENT_COLUMNS})
                SELECT a, e, u, i, t, ts, v, x, s, g, c::jsonb FROM unnest(
                    %s::text[], %s::text[], %s::text[], %s::text[], %s::text[], %s::float8[], %s::float8[],
                    %s::text[], %s::text[], %s::text[], %s::text[]) WITH ORDINALITY AS b(a, e, u, i, t, ts, v, x, s, g, c, n)
                ORDER BY n
                ON CONFLICT (app, event_id) DO NOTHING
                RETURNING seq, app, event_id""",
                [list(c) for c in columns],
            ).fetchall()
        accepted = accepted_events(events, [(app, event_id) for _, app, event_id in sorted(rows)])
        return AppendResult(accepted, len(events) - len(accepted))

    def remove_user(self, app: str, user_id: str) -> list[tuple[int, Event]]:
        with self._s._lock, self._s._conn.transaction():
            conn = self._s._conn
            conn.execute("SELECT pg_advisory_xact_lock(%s)", (APPEND_LOCK,))  # changes commit in seq order too
            rows = conn.execute(f"DELETE FROM events WHERE app = %s AND user_id = %s RETURNING seq, {EVENT_COLUMNS}",
                                (app, user_id)).fetchall()
            conn.execute("INSERT INTO changes (app, kind, key, event_seq) VALUES (%s, 'user_deleted', %s, %s)",
                         (app, user_digest(app, user_id), _event_head(conn)))
        return [(r[0], self._event(r[1:])) for r in sorted(rows, key=lambda r: r[0])]


class _Deletions(SqlDeletionReads):
    _s: PostgresStore

    def record(self, entry: DeletionRecord) -> int:
        with self._s._lock, self._s._conn.transaction():
            row = self._s._conn.execute(
                f"INSERT INTO deletions ({DELETION_COLUMNS}) VALUES (%s, %s, %s, %s, %s, %s::jsonb) RETURNING seq",
                (entry.deletion_id, entry.app, entry.subject, entry.requested_by, entry.at, json.dumps(entry.receipt))).fetchone()
        return int(row[0])


class _Catalog(SqlCatalogReads):
    _s: PostgresStore

    def upsert(self, items: Sequence[Item]) -> int:
        now = time.time()
        rows = [(i.app, i.item_id, i.title, i.text, json.dumps(list(i.categories)), json.dumps(i.attributes), i.updated_at or now)
                for i in items]
        with self._s._lock, self._s._conn.transaction():
            self._s._conn.execute("SELECT pg_advisory_xact_lock(%s)", (APPEND_LOCK,))
            with self._s._conn.cursor() as cur:
                cur.executemany(
                    """INSERT INTO items (app, item_id, title, text, categories, attributes, updated_at)
                    VALUES (%s, %s, %s, %s, %s::jsonb, %s::jsonb, %s)
                    ON CONFLICT (app, item_id) DO UPDATE SET title = EXCLUDED.title, text = EXCLUDED.text,
                        categories = EXCLUDED.categories, attributes = EXCLUDED.attributes, updated_at = EXCLUDED.updated_at""",
                    rows,
                )
                head = _event_head(self._s._conn)
                cur.executemany("INSERT INTO changes (app, kind, key, event_seq) VALUES (%s, 'item', %s, %s)",
                                [(i.app, i.item_id, head) for i in items])
        return len(rows)


class _Snapshots(SqlSnapshotReads):
    _s: PostgresStore

    def put(self, app: str, name: str, blob: bytes) -> None:
        with self._s._lock, self._s._conn.transaction():
            self._s._conn.execute(
                """INSERT INTO snapshots (app, name, blob, updated_at) VALUES (%s, %s, %s, %s)
                ON CONFLICT (app, name) DO UPDATE SET blob = EXCLUDED.blob, updated_at = EXCLUDED.updated_at""",
                (app, name, blob, time.time()),
            )

    def delete(self, app: str, name: str) -> bool:
        with self._s._lock, self._s._conn.transaction():
            return self._s._conn.execute("DELETE FROM snapshots WHERE app = %s AND name = %s", (app, name)).rowcount > 0


class _Keys(SqlKeyReads):
    _s: PostgresStore

    def add(self, key: ApiKey) -> None:
        with self._s._lock, self._s._conn.transaction():
            self._s._conn.execute(f"INSERT INTO api_keys ({KEY_COLUMNS}) VALUES (%s,%s,%s,%s,%s,%s,%s,%s,%s)", key_row(key))

    def revoke(self, key_id: str, at: float) -> bool:
        with self._s._lock, self._s._conn.transaction():
            return self._s._conn.execute("UPDATE api_keys SET revoked_at = COALESCE(revoked_at, %s) WHERE key_id = %s",
                                         (at, key_id)).rowcount > 0

    def touch(self, used: dict[str, float]) -> None:
        if used:
            with self._s._lock, self._s._conn.transaction(), self._s._conn.cursor() as cur:
                cur.executemany(KEY_TOUCH.replace("?", "%s"), [(at, key_id, at) for key_id, at in used.items()])
