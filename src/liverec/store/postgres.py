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
import logging
import re
import threading
import time
from contextlib import contextmanager
from typing import Any, Iterator, Mapping, Sequence
from urllib.parse import parse_qs, urlparse, urlunparse

import psycopg

from ..events import Event
from .base import ApiKey, AppendResult, DeletionRecord, ExperimentRecord, Item, StoreUnavailable, user_digest
from .sql import (DELETION_COLUMNS, EVENT_COLUMNS, EXPERIMENT_COLUMNS, KEY_COLUMNS, KEY_TOUCH, SqlCatalogReads,
                  SqlDeletionReads, SqlEventReads, SqlExperimentReads, SqlKeyReads, SqlSnapshotReads, accepted_events,
                  batch_rows, key_row)

APPEND_LOCK = 0x6C69766572  # advisory lock key ("liver")
log = logging.getLogger(__name__)

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
CREATE TABLE IF NOT EXISTS experiments (
    seq BIGSERIAL PRIMARY KEY,
    experiment_id TEXT NOT NULL UNIQUE,
    app TEXT NOT NULL,
    name TEXT NOT NULL,
    kind TEXT NOT NULL,
    spec JSONB NOT NULL,
    created_at DOUBLE PRECISION NOT NULL,
    stopped_at DOUBLE PRECISION
);
"""



# Bounds on waiting for an unreachable server (each overridable in the URL's query): a connect
# gives up after 3 s, and a query on a connection whose packets go unanswered (a cut network, not
# a refused or reset one) fails once they stay unacknowledged for 5 s.
CONNECT_OPTIONS = {"connect_timeout": "3", "tcp_user_timeout": "5000", "keepalives": "1", "keepalives_idle": "10",
                   "keepalives_interval": "2", "keepalives_count": "3"}
RECONNECT_PAUSE_S = 0.5  # after a failed connect, calls fail at once for this long instead of connecting again


def _schema_and_dsn(url: str) -> tuple[str, str]:
    parsed = urlparse(url)
    query = parse_qs(parsed.query)
    schema = query.pop("schema", ["public"])[0]
    if not schema.replace("_", "").isalnum():
        raise ValueError(f"store URL {url!r}: schema {schema!r} must be letters, digits and _")
    options = {**CONNECT_OPTIONS, **{k: v[-1] for k, v in query.items()}}
    dsn = urlunparse(parsed._replace(scheme="postgresql", query="&".join(f"{k}={v}" for k, v in options.items())))
    return schema, dsn


_DDL_RELATION = re.compile(r"CREATE (?:UNIQUE )?(?:TABLE|INDEX) IF NOT EXISTS (\w+)", re.IGNORECASE)
_DDL_ALTER = re.compile(r"ALTER TABLE (\w+) ([^;]*)", re.IGNORECASE)
_DDL_COLUMN = re.compile(r"ADD COLUMN IF NOT EXISTS (\w+)", re.IGNORECASE)


def applied(conn: psycopg.Connection, schema: str, ddl: str) -> bool:
    """Whether every table, index and column ``ddl`` creates (``CREATE TABLE / INDEX IF NOT
    EXISTS``, ``ALTER TABLE ... ADD COLUMN IF NOT EXISTS``) is in ``schema`` already: read from
    the catalog, taking no lock. ``False`` for DDL of any other statement (it is run)."""
    for statement in filter(None, (part.strip() for part in ddl.split(";"))):
        altered = _DDL_ALTER.match(statement)
        if not (_DDL_RELATION.match(statement) or (altered and all(
                _DDL_COLUMN.match(clause.strip()) for clause in altered.group(2).split(",")))):
            return False
    relations = set(_DDL_RELATION.findall(ddl))
    columns = {(table, column) for table, rest in _DDL_ALTER.findall(ddl) for column in _DDL_COLUMN.findall(rest)}
    present = {r[0] for r in conn.execute(
        "SELECT c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = %s", (schema,))}
    if not relations <= present:
        return False
    if not columns:
        return True
    have = {(r[0], r[1]) for r in conn.execute(
        "SELECT table_name, column_name FROM information_schema.columns WHERE table_schema = %s", (schema,))}
    return columns <= have


def connect(url: str, ddl: str) -> tuple[psycopg.Connection, str]:
    """An autocommit connection whose ``search_path`` is the URL's schema, after creating the schema
    (if absent) and running ``ddl`` (``CREATE ... IF NOT EXISTS`` statements; empty: neither, a
    plain connection to the schema).

    Both run under the advisory lock: PostgreSQL's ``IF NOT EXISTS`` does not make concurrent
    creation safe, and several workers start at once. They run only when something of ``ddl`` is
    missing: ``CREATE INDEX IF NOT EXISTS`` on an existing index still waits for a share lock on
    its table, and did so holding the append lock while an append of another worker held the
    table and waited for the append lock (a deadlock, one of them failed: seen when a worker
    started, or reconnected after an outage, beside another one taking events).
    """
    schema, dsn = _schema_and_dsn(url)
    conn = psycopg.connect(dsn, autocommit=True)
    if ddl and not applied(conn, schema, ddl):
        with conn.transaction():
            conn.execute("SELECT pg_advisory_xact_lock(%s)", (APPEND_LOCK,))
            conn.execute(f'CREATE SCHEMA IF NOT EXISTS "{schema}"')
            conn.execute(f'SET LOCAL search_path TO "{schema}"')
            conn.execute(ddl)
    conn.execute(f'SET search_path TO "{schema}"')
    return conn, schema


class Link:
    """One connection to the URL's schema that outlives the server going away: a call that finds
    it broken, or cannot open it, raises :class:`~liverec.store.base.StoreUnavailable` (the
    driver's error as its cause) and drops it; the next call connects again. So a server restart
    costs the calls made while it is down, never the process or its threads. Calls are serialised
    (one connection, one statement at a time).

    psycopg's pool was not used: it hands out several connections and reconnects in a thread of its
    own, where each role here wants exactly one connection (the append lock's order and the
    ``search_path`` are per connection) and a caller that fails fast.
    """

    def __init__(self, url: str, ddl: str = ""):
        self.url = url
        self.lock = threading.RLock()
        self._conn: psycopg.Connection | None
        self._conn, self.schema = connect(url, ddl)  # the first connect fails loudly: a wrong URL is no outage
        self._retry_at = 0.0
        self.reconnects = 0

    def _open(self) -> psycopg.Connection:
        if self._conn is not None and not self._conn.closed:
            return self._conn
        if time.monotonic() < self._retry_at:
            raise StoreUnavailable("PostgreSQL could not be reached a moment ago")
        try:
            self._conn, _ = connect(self.url, "")
        except psycopg.Error as exc:
            self._retry_at = time.monotonic() + RECONNECT_PAUSE_S
            raise StoreUnavailable(_cause(exc)) from exc
        self.reconnects += 1
        log.info("PostgreSQL schema %s: connected again", self.schema)
        return self._conn

    def _lost(self, conn: psycopg.Connection, exc: psycopg.Error) -> StoreUnavailable:
        if conn.broken or conn.closed:
            if not conn.closed:
                conn.close()
            self._conn = None
            log.warning("PostgreSQL schema %s: connection lost (%s)", self.schema, _cause(exc))
        return StoreUnavailable(_cause(exc))

    def execute(self, sql: str, params: Sequence[Any] = (), again: bool = True) -> psycopg.Cursor:
        """Run one statement (autocommit); the cursor holds every row already. A statement that
        finds the connection broken (the server restarted since it was last used) runs once more
        on a new one (``again``): only reads and idempotent statements may."""
        with self.lock:
            for attempt in (0, 1):
                conn = self._open()
                try:
                    return conn.execute(sql, params)
                except (psycopg.OperationalError, psycopg.InterfaceError) as exc:
                    lost = self._lost(conn, exc)
                    if attempt or not again or self._conn is not None:  # not a broken connection, or a new one broke too
                        raise lost from exc
            raise AssertionError("unreachable")

    @contextmanager
    def transaction(self) -> Iterator[psycopg.Connection]:
        """The connection inside one transaction (committed on leaving, rolled back on an error)."""
        with self.lock:
            conn = self._open()
            try:
                with conn.transaction():
                    yield conn
            except (psycopg.OperationalError, psycopg.InterfaceError) as exc:
                raise self._lost(conn, exc) from exc

    def close(self) -> None:
        with self.lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None


def _cause(exc: BaseException) -> str:
    """The driver's message on one line."""
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text}"[:300] if text else type(exc).__name__


def locked_batch_insert(table: str, columns: Mapping[str, str], lock: str) -> str:
    """``INSERT INTO table (columns) SELECT ...`` of a batch passed as one parameter (``%s``):
    :func:`liverec.store.sql.batch_rows`' JSON array of rows, each a JSON array of the values in ``columns``' order
    (a ``jsonb`` column's as text), inserted in batch order, after the CTE ``lock`` (``WITH lock
    AS (SELECT pg_advisory_xact_lock(%s))``, which callers write before it): in one statement the
    lock is taken before any row gets its serial number, and the statement's own commit releases
    it, never held across client round trips. Callers add ``ON CONFLICT`` / ``RETURNING``.

    One JSON text rather than an array per column: psycopg dumps array parameters element by
    element in Python (escaping each string with a regular expression), 8 % of an API worker's
    interpreter time under the soak (py-spy), where orjson writes the batch in C (7x faster than
    ``json.dumps`` for a slate's impressions).

    >>> locked_batch_insert("t", {"a": "text", "b": "float8", "c": "jsonb"}, "l")
    'INSERT INTO t (a, b, c) SELECT r->>0, (r->>1)::float8, (r->>2)::jsonb FROM l, json_array_elements(%s::json) WITH ORDINALITY AS batch(r, n) ORDER BY n'
    """
    names = ", ".join(columns)
    values = ", ".join(f"r->>{k}" if kind == "text" else f"(r->>{k})::{kind}" for k, kind in enumerate(columns.values()))
    return (f"INSERT INTO {table} ({names}) SELECT {values} FROM {lock}, json_array_elements(%s::json) "
            f"WITH ORDINALITY AS batch(r, n) ORDER BY n")


_EVENT_TYPES = {"app": "text", "event_id": "text", "user_id": "text", "item_id": "text", "type": "text", "ts": "float8",
                "value": "float8", "text": "text", "scope": "text", "target": "text", "context": "jsonb"}
_ITEM_TYPES = {"app": "text", "item_id": "text", "title": "text", "text": "text", "categories": "jsonb",
               "attributes": "jsonb", "updated_at": "float8"}
_APPEND = ("WITH append_lock AS (SELECT pg_advisory_xact_lock(%s)) " + locked_batch_insert("events", _EVENT_TYPES, "append_lock")
           + " ON CONFLICT (app, event_id) DO NOTHING RETURNING seq, app, event_id")
# the change records the event head read after the lock: a sequence is read outside the
# statement's snapshot, and the subquery runs per upserted row, once the lock is held (no append
# is between its nextval and its commit then)
_UPSERT_ITEMS = (
    "WITH append_lock AS (SELECT pg_advisory_xact_lock(%s)), upserted AS ("
    + locked_batch_insert("items", _ITEM_TYPES, "append_lock")
    + """ ON CONFLICT (app, item_id) DO UPDATE SET title = EXCLUDED.title, text = EXCLUDED.text,
        categories = EXCLUDED.categories, attributes = EXCLUDED.attributes, updated_at = EXCLUDED.updated_at
    RETURNING app, item_id)
    INSERT INTO changes (app, kind, key, event_seq)
    SELECT app, 'item', item_id, (SELECT CASE WHEN is_called THEN last_value ELSE 0 END
                                  FROM events_seq_seq WHERE upserted.item_id IS NOT NULL)
    FROM upserted""")


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
        self._conn = Link(url, SCHEMA)
        self.schema = self._conn.schema
        self._lock = self._conn.lock
        # reads on a connection of their own: a request's catch-up never queues behind an append
        # of this process waiting for the advisory lock another worker holds
        self._read_conn = Link(url)
        self._read_lock = self._read_conn.lock
        self.events = _EventLog(self)
        self.deletions = _Deletions(self)
        self.catalog = _Catalog(self)
        self.snapshots = _Snapshots(self)
        self.keys = _Keys(self)
        self.experiments = _Experiments(self)

    def compact(self) -> bool:
        """Nothing done here: deleted rows are dead tuples until (auto)VACUUM reclaims their
        space, and their bytes stay in the table's pages until the space is reused (``VACUUM
        FULL`` rewrites a table, under a lock no deployment should take per deletion)."""
        return True

    def drop(self) -> None:
        """Remove the schema and everything in it (tests)."""
        self._conn.execute(f'DROP SCHEMA IF EXISTS "{self.schema}" CASCADE')

    def close(self) -> None:
        self._conn.close()
        self._read_conn.close()


class _EventLog(SqlEventReads):
    _s: PostgresStore

    def version(self) -> int | None:
        return None  # no cheap "did anyone commit" check: the follower asks for the heads

    def append(self, events: Sequence[Event]) -> AppendResult:
        if not events:
            return AppendResult([], 0)
        rows = batch_rows(
            (e.app, e.event_id, e.user_id, e.item_id, e.type, e.timestamp, e.value, e.text, e.scope, e.target,
             json.dumps(e.context) if e.context is not None else None)
            for e in events)
        # One statement (locked_batch_insert): appends commit in seq order, and batch order is
        # kept: the first of in-batch duplicates is the one stored. A connection found broken (PostgreSQL restarted
        # since its last use) is reopened and the append runs again: idempotent on (app,
        # event_id), at worst events a lost answer had stored come back as duplicates.
        stored = self._s._conn.execute(_APPEND, [APPEND_LOCK, rows]).fetchall()
        accepted = accepted_events(events, [(app, event_id) for _, app, event_id in sorted(stored)])
        return AppendResult(accepted, len(events) - len(accepted))

    def remove_user(self, app: str, user_id: str) -> list[tuple[int, Event]]:
        with self._s._conn.transaction() as conn:
            conn.execute("SELECT pg_advisory_xact_lock(%s)", (APPEND_LOCK,))  # changes commit in seq order too
            rows = conn.execute(f"DELETE FROM events WHERE app = %s AND user_id = %s RETURNING seq, {EVENT_COLUMNS}",
                                (app, user_id)).fetchall()
            conn.execute("INSERT INTO changes (app, kind, key, event_seq) VALUES (%s, 'user_deleted', %s, %s)",
                         (app, user_digest(app, user_id), _event_head(conn)))
        return [(r[0], self._event(r[1:])) for r in sorted(rows, key=lambda r: r[0])]


class _Deletions(SqlDeletionReads):
    _s: PostgresStore

    def record(self, entry: DeletionRecord) -> int:
        with self._s._conn.transaction() as conn:
            row = conn.execute(
                f"INSERT INTO deletions ({DELETION_COLUMNS}) VALUES (%s, %s, %s, %s, %s, %s::jsonb) RETURNING seq",
                (entry.deletion_id, entry.app, entry.subject, entry.requested_by, entry.at, json.dumps(entry.receipt))).fetchone()
        return int(row[0])


class _Catalog(SqlCatalogReads):
    _s: PostgresStore

    def upsert(self, items: Sequence[Item]) -> int:
        now = time.time()
        latest: dict[tuple[str, str], tuple] = {}  # an item given twice: its last version (one statement updates a row once)
        for i in items:
            latest[(i.app, i.item_id)] = (i.app, i.item_id, i.title, i.text, json.dumps(list(i.categories)),
                                          json.dumps(i.attributes), i.updated_at or now)
        if not latest:
            return 0
        # one statement, as an append (an upsert held the lock across five round trips, and every
        # append of every worker waited behind it)
        self._s._conn.execute(_UPSERT_ITEMS, [APPEND_LOCK, batch_rows(latest.values())])
        return len(items)


class _Snapshots(SqlSnapshotReads):
    _s: PostgresStore

    def put(self, app: str, name: str, blob: bytes) -> None:
        with self._s._conn.transaction() as conn:
            conn.execute(
                """INSERT INTO snapshots (app, name, blob, updated_at) VALUES (%s, %s, %s, %s)
                ON CONFLICT (app, name) DO UPDATE SET blob = EXCLUDED.blob, updated_at = EXCLUDED.updated_at""",
                (app, name, blob, time.time()),
            )

    def delete(self, app: str, name: str) -> bool:
        with self._s._conn.transaction() as conn:
            return conn.execute("DELETE FROM snapshots WHERE app = %s AND name = %s", (app, name)).rowcount > 0


class _Keys(SqlKeyReads):
    _s: PostgresStore

    def add(self, key: ApiKey) -> None:
        with self._s._conn.transaction() as conn:
            conn.execute("SELECT pg_advisory_xact_lock(%s)", (APPEND_LOCK,))  # the change commits in seq order
            conn.execute(f"INSERT INTO api_keys ({KEY_COLUMNS}) VALUES (%s,%s,%s,%s,%s,%s,%s,%s,%s)", key_row(key))
            conn.execute("INSERT INTO changes (app, kind, key, event_seq) VALUES (%s, 'api_key', %s, %s)",
                         (key.app, key.key_id, _event_head(conn)))

    def revoke(self, key_id: str, at: float) -> bool:
        with self._s._conn.transaction() as conn:
            conn.execute("SELECT pg_advisory_xact_lock(%s)", (APPEND_LOCK,))
            rows = conn.execute("UPDATE api_keys SET revoked_at = COALESCE(revoked_at, %s) WHERE key_id = %s RETURNING app",
                                (at, key_id)).fetchall()  # the key's app, or none: no such key
            if not rows:
                return False
            conn.execute("INSERT INTO changes (app, kind, key, event_seq) VALUES (%s, 'api_key', %s, %s)",
                         (rows[0][0], key_id, _event_head(conn)))
        return True

    def touch(self, used: dict[str, float]) -> None:
        if used:
            with self._s._conn.transaction() as conn, conn.cursor() as cur:
                cur.executemany(KEY_TOUCH.replace("?", "%s"), [(at, key_id, at) for key_id, at in used.items()])


class _Experiments(SqlExperimentReads):
    _s: PostgresStore

    def create(self, record: ExperimentRecord) -> None:
        with self._s._conn.transaction() as conn:
            conn.execute("SELECT pg_advisory_xact_lock(%s)", (APPEND_LOCK,))  # the change commits in seq order
            conn.execute(f"INSERT INTO experiments ({EXPERIMENT_COLUMNS}) VALUES (%s, %s, %s, %s, %s::jsonb, %s, %s)",
                         (record.experiment_id, record.app, record.name, record.kind, json.dumps(record.spec),
                          record.created_at, record.stopped_at))
            conn.execute("INSERT INTO changes (app, kind, key, event_seq) VALUES (%s, 'experiment', %s, %s)",
                         (record.app, record.experiment_id, _event_head(conn)))

    def stop(self, experiment_id: str, at: float) -> bool:
        with self._s._conn.transaction() as conn:
            conn.execute("SELECT pg_advisory_xact_lock(%s)", (APPEND_LOCK,))
            row = conn.execute("SELECT app FROM experiments WHERE experiment_id = %s", (experiment_id,)).fetchone()
            if row is None:
                return False
            conn.execute("UPDATE experiments SET stopped_at = COALESCE(stopped_at, %s) WHERE experiment_id = %s",
                         (at, experiment_id))
            conn.execute("INSERT INTO changes (app, kind, key, event_seq) VALUES (%s, 'experiment', %s, %s)",
                         (row[0], experiment_id, _event_head(conn)))
        return True
