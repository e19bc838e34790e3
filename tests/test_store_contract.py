"""One contract for every storage backend (SQLite always; PostgreSQL when the server is up)."""

from __future__ import annotations

import threading
import time
import uuid
from dataclasses import replace

import pytest

from liverec.events import Event
from liverec.store import open_store
from liverec.store.base import DeletionRecord, Item, user_digest

PG_URL = "postgresql://127.0.0.1:5432/test"


def _postgres_available() -> str | None:
    try:
        import psycopg

        with psycopg.connect("postgresql://127.0.0.1:5432/test", connect_timeout=2):
            return None
    except Exception as exc:  # noqa: BLE001 - any failure means "no server to test against"
        return f"PostgreSQL at 127.0.0.1:5432/test is not reachable ({type(exc).__name__})"


@pytest.fixture(params=["sqlite", "postgresql"])
def store(request, tmp_path):
    if request.param == "sqlite":
        s = open_store(f"sqlite:///{tmp_path}/db.sqlite")
        yield s
        s.close()
    else:
        reason = _postgres_available()
        if reason:
            pytest.skip(reason)
        s = open_store(f"{PG_URL}?schema=t_{uuid.uuid4().hex[:12]}")
        yield s
        s.drop()
        s.close()


def ev(k: int, user: str = "u", app: str = "a", **kw) -> Event:
    return Event(app, kw.pop("event_id", f"e{k}"), user, kw.pop("type", "view"), float(k), item_id=kw.pop("item_id", f"i{k}"), **kw)


def test_append_is_idempotent_and_ordered(store):
    first = store.events.append([ev(1), ev(2), ev(1)])
    assert [e.event_id for e in first.accepted] == ["e1", "e2"] and first.duplicates == 1
    again = store.events.append([ev(2), ev(3)])
    assert [e.event_id for e in again.accepted] == ["e3"] and again.duplicates == 1
    seqs = [seq for seq, _ in store.events.scan()]
    assert seqs == sorted(seqs) and len(seqs) == 3
    assert store.events.last_seq() == seqs[-1]
    assert [e.event_id for _, e in store.events.scan(after_seq=seqs[0])] == ["e2", "e3"]


@pytest.mark.parametrize("n", [5, 6, 7])
def test_scan_reads_the_log_in_batches_to_its_end(store, n):
    """Batches of 3 over logs of 5, 6 and 7 events (a partial last batch, an exact multiple):
    every event once, in order, after any position."""
    store.events.append([ev(k) for k in range(1, n + 1)])
    seqs = [seq for seq, _ in store.events.scan(batch=3)]
    assert [e.event_id for _, e in store.events.scan(batch=3)] == [f"e{k}" for k in range(1, n + 1)]
    assert [s for s, _ in store.events.scan(after_seq=seqs[2], batch=3)] == seqs[3:]
    assert [e.event_id for _, e in store.events.scan(app="a", batch=3)] == [f"e{k}" for k in range(1, n + 1)]


def test_events_round_trip_every_field(store):
    e = Event("a", "x", "u", "block", 12.5, None, None, "no thanks", "category", "Horror", {"page": "home", "n": 2})
    store.events.append([e])
    (_, back), = list(store.events.scan())
    assert back == e


def test_tenants_and_users_are_separate(store):
    store.events.append([ev(1, app="a"), ev(2, app="b"), ev(3, app="a", user="v"), ev(1, app="b", event_id="e1")])
    assert store.events.count() == 4 and store.events.count("a") == 2
    assert [e.event_id for _, e in store.events.scan(app="b")] == ["e2", "e1"]
    assert [e.event_id for e in store.events.user_events("a", "v")] == ["e3"]
    assert store.events.delete_user("a", "u") == 1
    assert store.events.count("a") == 1 and store.events.count("b") == 2
    assert store.events.apps() == ["a", "b"]


def test_a_deleted_user_is_named_by_digest_in_the_changes(store):
    store.events.append([ev(1), ev(2, item_id="i1", text="red shoes"), ev(3, user="v", text="red shoes"), ev(4, text="only u")])
    assert store.events.user_span("a", "u") == (1, 4) and store.events.user_span("a", "nobody") is None
    assert store.events.texts_in_use(["red shoes", "only u", "never sent", ""]) == {"red shoes", "only u"}
    removed = store.events.remove_user("a", "u")
    assert [e.event_id for _, e in removed] == ["e1", "e2", "e4"]
    change, = store.events.changes()
    assert (change.kind, change.app, change.key) == ("user_deleted", "a", user_digest("a", "u"))
    assert store.events.texts_in_use(["red shoes", "only u"]) == {"red shoes"}
    assert store.events.user_span("a", "u") is None
    assert store.compact()


def test_the_deletion_audit_log_is_append_only(store):
    first = DeletionRecord("d1", "a", user_digest("a", "u"), "key-1", 100.0, {"counts": {"events": 3, "impressions": 2}})
    second = DeletionRecord("d2", "b", user_digest("b", "u"), "open:127.0.0.1", 101.5, {"counts": {"events": 0}})
    seqs = [store.deletions.record(first), store.deletions.record(second)]
    assert seqs == sorted(seqs) and len(set(seqs)) == 2
    assert store.deletions.list() == [replace(first, seq=seqs[0]), replace(second, seq=seqs[1])]
    assert store.deletions.list("b") == [replace(second, seq=seqs[1])]
    assert store.deletions.list(subject=user_digest("a", "u")) == [replace(first, seq=seqs[0])]
    assert store.deletions.list("a", user_digest("b", "u")) == []
    with pytest.raises(Exception):  # noqa: B017 - a deletion is recorded once (whatever the driver's error)
        store.deletions.record(first)
    assert not any(callable(getattr(store.deletions, name, None)) for name in ("update", "remove", "delete", "clear"))


def test_catalog_upsert_get_scan(store):
    store.catalog.upsert([Item("a", "i1", "One", "text", ("X", "Y"), {"creator": "ann"}), Item("a", "i2", "Two")])
    store.catalog.upsert([Item("a", "i1", "One v2", "", ("Z",), {})])
    assert store.catalog.get("a", "i1").title == "One v2"
    assert store.catalog.get("a", "i1").categories == ("Z",)
    assert store.catalog.get("b", "i1") is None
    assert [i.item_id for i in store.catalog.scan("a")] == ["i1", "i2"]
    assert store.catalog.count("a") == 2 and store.catalog.count() == 2


def test_snapshots(store):
    assert store.snapshots.get("a", "state") is None
    store.snapshots.put("a", "state", b"\x00\x01")
    store.snapshots.put("a", "state", b"\x02")
    assert store.snapshots.get("a", "state") == b"\x02"
    store.snapshots.put("a", "streams/k%_/0", b"")
    store.snapshots.put("a", "streams/k%_/1", b"")
    store.snapshots.put("a", "streamsX", b"")
    store.snapshots.put("b", "streams/other", b"")
    assert store.snapshots.names("a", "streams/k%_/") == ["streams/k%_/0", "streams/k%_/1"]
    assert store.snapshots.names("a") == ["state", "streams/k%_/0", "streams/k%_/1", "streamsX"]
    assert store.snapshots.get("b", "state") is None
    assert store.snapshots.delete("a", "streamsX") and not store.snapshots.delete("a", "streamsX")
    assert store.snapshots.get("a", "streamsX") is None and store.snapshots.names("b") == ["streams/other"]


def test_batch_is_all_or_nothing(store):
    bad = Event("a", "bad", "u", "view", 1.0, item_id="i", context={"x": float("nan")})
    try:
        store.events.append([ev(1), bad])
    except Exception:  # noqa: BLE001 - a backend may refuse the value; then nothing may be stored
        assert store.events.count() == 0
    else:
        assert store.events.count() == 2


def test_service_restart_on_backend_rebuilds_the_same_state(store, tmp_path):
    from liverec.config import Settings
    from liverec.runtime.compose import build_service

    settings = Settings(data_dir=tmp_path)
    live = build_service(settings, store=store)
    live.start()
    live.ingest("a", [{"user_id": "u", "item_id": f"i{k}", "type": "view", "timestamp": k} for k in range(5)])
    live.ingest("a", [{"user_id": "u", "type": "block", "scope": "category", "target": "X", "timestamp": 9}])
    expected = live.state.snapshot()
    recs = live.recommend("a", "v", 3)
    restarted = build_service(settings, store=store)
    restarted.start()
    assert restarted.state.snapshot() == expected
    assert restarted.recommend("a", "v", 3)["items"] == recs["items"]


def test_api_keys(store):
    from liverec.store.base import ApiKey

    assert not store.keys.exists() and store.keys.get("k1") is None and store.keys.list() == []
    a = ApiKey("k1", "shop", ("ingest", "read"), "d1", 10.0, 20.0, 100.0)
    b = ApiKey("k2", "news", ("admin",), "d2", 1.5, 3.0, 101.0)
    store.keys.add(a)
    store.keys.add(b)
    assert store.keys.exists() and store.keys.get("k1") == a
    assert store.keys.list() == [a, b] and store.keys.list("news") == [b]
    with pytest.raises(Exception):  # noqa: B017 - each backend's own unique-key error
        store.keys.add(a)
    store.keys.touch({"k1": 150.0, "k2": 140.0})
    store.keys.touch({"k1": 120.0})  # an older time never replaces a newer one
    assert store.keys.get("k1").last_used_at == 150.0 and store.keys.get("k2").last_used_at == 140.0
    assert store.keys.revoke("k1", 200.0) and store.keys.revoke("k1", 300.0)
    assert store.keys.get("k1").revoked_at == 200.0  # revoked once, at the first time
    assert not store.keys.revoke("nope", 1.0)
    assert store.keys.exists()  # revoked keys still count: revoking every key keeps auth on


def test_experiments(store):
    from liverec.store.base import ExperimentRecord

    spec = {"variants": [{"name": "A"}, {"name": "B", "ranking": {"diversity": 0.3}}], "traffic": 1.0}
    a = ExperimentRecord("x1", "shop", "mmr", "split", spec, 100.0)
    assert store.experiments.list() == [] and store.experiments.get("x1") is None
    before = store.events.heads()[1]
    store.experiments.create(a)
    assert store.experiments.get("x1") == a and store.experiments.list("shop") == [a] and store.experiments.list("news") == []
    store.experiments.create(ExperimentRecord("x3", "news", "n", "split", spec, 102.0))
    assert store.experiments.stop("x1", 200.0) and store.experiments.stop("x1", 300.0)
    assert store.experiments.get("x1").stopped_at == 200.0  # stopped once, at the first time
    assert not store.experiments.stop("nope", 1.0)
    store.experiments.create(ExperimentRecord("x2", "shop", "other", "interleave", spec, 101.0))
    assert [r.experiment_id for r in store.experiments.list()] == ["x1", "x3", "x2"]
    with pytest.raises(Exception):
        store.experiments.create(a)  # ids are unique
    # every worker learns of each creation and stop from the changes feed, in commit order
    changes = [(c.app, c.kind, c.key) for c in store.events.changes(before)]
    assert changes == [("shop", "experiment", "x1"), ("news", "experiment", "x3"), ("shop", "experiment", "x1"),
                       ("shop", "experiment", "x1"), ("shop", "experiment", "x2")]


def test_postgres_batch_inserts_name_the_columns_the_reads_expect():
    from liverec.store import postgres, sql

    assert ", ".join(postgres._EVENT_TYPES) == sql.EVENT_COLUMNS and ", ".join(postgres._ITEM_TYPES) == sql.ITEM_COLUMNS


def test_item_upserts_record_the_event_head_they_committed_after(store):
    store.events.append([ev(1), ev(2), ev(3)])
    head = store.events.heads()[0]
    before = store.events.heads()[1]
    # an item given twice in one batch: its last version is stored
    assert store.catalog.upsert([Item("a", "i1", "One"), Item("a", "i2", "Two"), Item("a", "i1", "One v2")]) == 3
    assert store.catalog.get("a", "i1").title == "One v2"
    changes = store.events.changes(before)
    assert {c.key for c in changes} == {"i1", "i2"} and all(c.kind == "item" and c.event_seq == head for c in changes)
    store.events.append([ev(4)])
    store.catalog.upsert([Item("a", "i3", "Three")])
    assert store.events.changes(before)[-1].event_seq == store.events.heads()[0]


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_upserts_beside_appends_record_heads_in_commit_order(backend, tmp_path):
    """Workers append and upsert items at once: the changes feed, in its order, names event heads
    that never go down, each no higher than the events committed before it (a follower applies
    a change after exactly the events its head names)."""
    if backend == "postgresql" and _postgres_available():
        pytest.skip(_postgres_available())
    url = f"sqlite:///{tmp_path}/db.sqlite" if backend == "sqlite" else f"{PG_URL}?schema=t_{uuid.uuid4().hex[:12]}"
    store = open_store(url)
    writers = [open_store(url) for _ in range(4)]

    def write(w: int) -> None:
        for k in range(60):
            if k % 3 == 0:
                writers[w].catalog.upsert([Item("a", f"w{w}-i{k}", f"item {k}")])
            else:
                writers[w].events.append([ev(1000 * w + k, user=f"w{w}", event_id=f"w{w}-{k}")])

    threads = [threading.Thread(target=write, args=(w,)) for w in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    heads = [c.event_seq for c in store.events.changes(0)]
    assert len(heads) == 80 and heads == sorted(heads)
    assert max(heads) <= store.events.heads()[0]
    for w in writers:
        w.close()
    if backend == "postgresql":
        store.drop()
    store.close()


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_concurrent_appends_commit_in_seq_order(backend, tmp_path):
    """Writers on their own connections (workers) append at once; a reader that sees head H never
    later finds an event below H it had not seen (a follower would have skipped it)."""
    import threading

    if backend == "postgresql" and _postgres_available():
        pytest.skip(_postgres_available())
    url = f"sqlite:///{tmp_path}/db.sqlite" if backend == "sqlite" else f"{PG_URL}?schema=t_{uuid.uuid4().hex[:12]}"
    store = open_store(url)
    writers = [open_store(url) for _ in range(4)]
    observed: list[tuple[int, int]] = []  # (head, events at or below it) as the reader saw them
    done = threading.Event()

    def write(w: int) -> None:
        for k in range(150):
            writers[w].events.append([ev(1000 * w + k, user=f"w{w}", event_id=f"w{w}-{k}")])

    def read() -> None:
        while not done.is_set():
            head = store.events.heads()[0]
            observed.append((head, sum(1 for s, _ in store.events.scan(after_seq=0) if s <= head)))

    threads = [threading.Thread(target=write, args=(w,)) for w in range(4)]
    reader = threading.Thread(target=read)
    reader.start()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    done.set()
    reader.join()
    final = [s for s, _ in store.events.scan(after_seq=0)]
    assert len(final) == 600
    for head, seen in observed:
        assert seen == sum(1 for s in final if s <= head), f"an event below head {head} committed after it was seen"
    for w in writers:
        w.close()
    if backend == "postgresql":
        store.drop()
    store.close()


def test_a_connect_beside_an_append_waiting_for_the_lock_neither_waits_nor_deadlocks():
    """A worker starting (or reconnecting) beside one whose append holds the events table and
    waits for the append lock: the schema exists, so the connect runs no DDL and takes no lock
    (``CREATE INDEX IF NOT EXISTS`` under the append lock waited for that table: a deadlock)."""
    reason = _postgres_available()
    if reason:
        pytest.skip(reason)
    import psycopg

    from liverec.store.postgres import APPEND_LOCK, SCHEMA, applied, connect

    url = f"{PG_URL}?schema=t_{uuid.uuid4().hex[:12]}"
    store = open_store(url)
    holder = psycopg.connect(PG_URL, autocommit=True)
    try:
        assert applied(holder, store.schema, SCHEMA)
        assert not applied(holder, store.schema, SCHEMA + "CREATE INDEX IF NOT EXISTS events_new ON events (ts);")
        assert not applied(holder, store.schema, SCHEMA + "ALTER TABLE events ADD COLUMN IF NOT EXISTS extra TEXT;")
        assert not applied(holder, store.schema, SCHEMA + "CREATE SEQUENCE IF NOT EXISTS other;")  # not understood: run
        with holder.transaction():
            holder.execute("SELECT pg_advisory_xact_lock(%s)", (APPEND_LOCK,))
            # an append: its statement holds the table while it waits for the lock held above
            waiting = threading.Thread(target=lambda: store.events.append([ev(1)]), daemon=True)
            waiting.start()
            deadline = time.monotonic() + 5
            while time.monotonic() < deadline and not holder.execute(
                    "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted").fetchone()[0]:
                time.sleep(0.02)
            done: list = []
            connecting = threading.Thread(target=lambda: done.append(connect(url, SCHEMA)), daemon=True)
            connecting.start()
            connecting.join(3)
            assert done, "the connect waited behind the append"
            done[0][0].close()
        waiting.join(5)
        assert store.events.count() == 1
    finally:
        holder.close()
        store.drop()
        store.close()
