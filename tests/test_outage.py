"""PostgreSQL going away and coming back, without restarting anything of liverec.

The store is reached through a TCP proxy this test controls (the shared server itself is never
touched, so other tests keep using it): ``cut`` closes the proxy's listener and every connection
it carries, as a stopped server or a lost network does; ``restore`` listens again on the same
port. While it is cut every request that needs the store answers 503 with a body naming the cause
and ``Retry-After``, within seconds; afterwards both workers serve again by themselves (same
processes), their followers fold new events, and every acknowledged event is in the log.
"""

from __future__ import annotations

import socket
import threading
import time
import uuid

import httpx
import pytest

from liverec.client import Client, Item
from liverec.ranking.impressions import Impression, PostgresImpressionLog
from liverec.store import StoreUnavailable, open_store

from .test_e2e_serve import free_port
from .test_store_contract import PG_URL, _postgres_available
from .test_workers import fresh, start_workers, stop_group

PG_HOST, PG_PORT = "127.0.0.1", 5432


class TcpProxy:
    """Forwards 127.0.0.1:``port`` to PostgreSQL until :meth:`cut`; :meth:`restore` reopens it."""

    def __init__(self) -> None:
        self.port = free_port()
        self._lock = threading.Lock()
        self._sockets: set[socket.socket] = set()
        self._listener: socket.socket | None = None
        self.restore()

    def restore(self) -> None:
        listener = socket.socket()
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self.port))
        listener.listen(64)
        self._listener = listener
        threading.Thread(target=self._accept, args=(listener,), daemon=True).start()

    def cut(self) -> None:
        """Refuse new connections and reset the open ones."""
        listener, self._listener = self._listener, None
        if listener is not None:
            try:
                listener.shutdown(socket.SHUT_RDWR)  # wakes the accepting thread (close alone leaves it listening)
            except OSError:
                pass
            listener.close()
        with self._lock:
            sockets, self._sockets = list(self._sockets), set()
        for s in sockets:
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            s.close()

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return  # cut
            try:
                server = socket.create_connection((PG_HOST, PG_PORT))
            except OSError:
                client.close()
                continue
            with self._lock:
                self._sockets |= {client, server}
            for a, b in ((client, server), (server, client)):
                threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        for s in (src, dst):
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass


@pytest.fixture
def proxied():
    """(a store URL through a proxy, the proxy, the same schema's direct URL); the schema is dropped after."""
    reason = _postgres_available()
    if reason:
        pytest.skip(reason)
    proxy = TcpProxy()
    schema = f"t_{uuid.uuid4().hex[:12]}"
    direct = f"{PG_URL}?schema={schema}"
    yield f"postgresql://127.0.0.1:{proxy.port}/test?schema={schema}", proxy, direct
    proxy.cut()
    store = open_store(direct)
    store.drop()
    store.close()


def event(k: int, user: str = "u1"):
    from liverec.events import Event

    return Event("default", f"e{k}", user, "view", 1_000.0 + k, f"m{k % 7}")


def test_store_calls_fail_fast_while_cut_and_reconnect_after(proxied):
    url, proxy, direct = proxied
    store = open_store(url)
    impressions = PostgresImpressionLog(url)
    try:
        assert len(store.events.append([event(k) for k in range(5)]).accepted) == 5
        proxy.cut()
        for call in (lambda: store.events.append([event(5)]), store.events.heads, lambda: store.catalog.get("default", "m1"),
                     lambda: store.snapshots.put("default", "x", b"1")):
            started = time.monotonic()
            with pytest.raises(StoreUnavailable) as raised:
                call()
            assert time.monotonic() - started < 5
            assert "store is unavailable" in str(raised.value) and raised.value.cause
        # an impression logged meanwhile waits in the writer's queue, which outlives the outage
        impressions.append([Impression("r1:0", "r1", "default", "u1", "m1", 0, 2_000.0, 1.0, False, "rank", event_seq=5)])
        time.sleep(1.0)
        proxy.restore()
        deadline = time.monotonic() + 10
        while True:  # calls fail at once for a moment after a failed connect, then connect again
            try:
                accepted = store.events.append([event(k) for k in range(3, 8)])
                break
            except StoreUnavailable:
                assert time.monotonic() < deadline, "the store did not reconnect"
                time.sleep(0.2)
        assert [e.event_id for e in accepted.accepted] == ["e5", "e6", "e7"] and accepted.duplicates == 2
        impressions.flush()
        assert [i.impression_id for i in impressions.scan("default")] == ["r1:0"]
    finally:
        impressions.close()
        store.close()
    check = open_store(direct)
    try:
        assert sorted(e.event_id for _, e in check.events.scan()) == [f"e{k}" for k in range(8)]
    finally:
        check.close()


ROUTES = [
    ("GET", "/v1/users/u1/recommendations", None),
    ("GET", "/v1/items/m1/similar", None),
    ("GET", "/v1/users/u1", None),
    ("POST", "/v1/events", {"event_id": "during-0", "user_id": "u1", "item_id": "m1", "type": "view", "timestamp": 9_000}),
    ("PUT", "/v1/items/m99", {"title": "New"}),
]


def test_two_workers_answer_503_while_postgres_is_away_and_recover_by_themselves(tmp_path, proxied):
    url_store, proxy, direct = proxied
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    proc = start_workers(tmp_path / "data", port, 2, url_store)
    acked: list[str] = []
    statuses: dict[int, int] = {}
    stop_load = threading.Event()

    def load() -> None:  # writes all along: each is acknowledged (200) or refused (503), nothing else
        k = 0
        with httpx.Client(timeout=30) as http:
            while not stop_load.is_set():
                eid = f"load-{k}"
                try:
                    r = http.post(f"{url}/v1/events", json={"event_id": eid, "user_id": f"u{k % 9}", "item_id": f"m{k % 20}",
                                                             "type": "view", "timestamp": 2_000 + k})
                except httpx.HTTPError:
                    statuses[-1] = statuses.get(-1, 0) + 1
                    continue
                statuses[r.status_code] = statuses.get(r.status_code, 0) + 1
                if r.status_code == 200:
                    acked.append(eid)
                k += 1
                time.sleep(0.01)

    try:
        with Client(url) as client:
            client.upsert_items([Item(f"m{k}", title=f"Movie {k}") for k in range(20)])
            client.send_events([{"event_id": f"seed-{u}-{k}", "user_id": f"u{u}", "item_id": f"m{(u + k) % 20}", "type": "view",
                                 "timestamp": 1_000 + 10 * u + k} for u in range(9) for k in range(5)])
        workers = {fresh("GET", f"{url}/v1/users/u1").headers["x-liverec-worker"] for _ in range(30)}
        assert len(workers) == 2
        writer = threading.Thread(target=load, daemon=True)
        writer.start()
        time.sleep(1.0)
        proxy.cut()
        for method, path, body in ROUTES * 3:  # fresh connections: both workers answer some
            started = time.monotonic()
            r = fresh(method, f"{url}{path}", json=body)
            assert time.monotonic() - started < 5, (method, path)
            assert r.status_code == 503, (method, path, r.status_code, r.text)
            assert "store is unavailable" in r.json()["detail"] and r.json()["errors"] == []
            assert int(r.headers["retry-after"]) >= 1
        assert fresh("GET", f"{url}/v1/health").status_code == 200  # the processes are up
        time.sleep(2.0)
        proxy.restore()
        deadline = time.monotonic() + 20
        for method, path, body in ROUTES:
            while (r := fresh(method, f"{url}{path}", json=body)).status_code != 200:
                assert r.status_code == 503 and time.monotonic() < deadline, (method, path, r.status_code, r.text)
                time.sleep(0.3)
        time.sleep(1.0)
        stop_load.set()
        writer.join(30)
        assert statuses.get(503, 0) > 0 and statuses.get(200, 0) > 0, statuses
        assert set(statuses) <= {200, 503}, statuses  # never a 500, never a dropped connection
        # the same two processes serve, and both fold what is written now (their followers live)
        r = fresh("POST", f"{url}/v1/events", json={"event_id": "after", "user_id": "u3", "item_id": "m99", "type": "view",
                                                    "timestamp": 10_000})
        assert r.status_code == 200 and r.json()["accepted"] == 1, r.text
        seen = set()
        for _ in range(30):
            r = fresh("GET", f"{url}/v1/users/u3")
            assert r.status_code == 200 and r.json()["history"][0]["event_id"] == "after", (r.headers["x-liverec-worker"], r.json()["history"][:3])
            seen.add(r.headers["x-liverec-worker"])
        assert seen == workers
    finally:
        stop_load.set()
        stop_group(proc)
    store = open_store(direct)
    try:
        logged = {e.event_id for _, e in store.events.scan()}
    finally:
        store.close()
    assert acked and set(acked) <= logged, f"{len(set(acked) - logged)} acknowledged events are not in the log"
