"""`liverec serve --workers 2`: real worker processes over one store, spoken to over HTTP.

Every request opens a fresh connection, so consecutive requests land on either worker; the
``x-liverec-worker`` header says which one answered. Checked on SQLite and PostgreSQL:
read-your-writes across workers (a block is honoured and a view enters the sequence on the next
answer, whichever worker gives it), and a worker killed with SIGKILL under load: the other keeps
serving, every acknowledged event is in the log, and the replacement worker catches up.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx

from liverec.client import Client, Item
from liverec.store import open_store

from .test_e2e_serve import free_port, stop

N_ITEMS = 40


def start_workers(data_dir: Path, port: int, workers: int, store: str | None = None) -> subprocess.Popen:
    args = [sys.executable, "-m", "liverec.cli", "serve", "--data-dir", str(data_dir), "--port", str(port),
            "--workers", str(workers)]
    if store:
        args += ["--store", store]
    proc = subprocess.Popen(args, env={**os.environ, "HF_HUB_OFFLINE": "1"}, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, start_new_session=True)
    wait_ready(proc, port, workers)
    return proc


def wait_ready(proc: subprocess.Popen, port: int, workers: int, timeout: float = 90) -> dict:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(proc.stdout.read().decode())
        try:
            r = httpx.get(f"http://127.0.0.1:{port}/v1/health", timeout=2)
            if r.status_code == 200 and r.json().get("workers") == workers:
                return r.json()
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    stop_group(proc)
    raise TimeoutError(f"{workers} workers did not become ready")


def stop_group(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(20)
    except (subprocess.TimeoutExpired, ProcessLookupError):
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    stop(proc)


def fresh(method: str, url: str, **kw) -> httpx.Response:
    """One request on a new connection (the kernel hands it to whichever worker accepts)."""
    with httpx.Client(timeout=10) as client:
        return client.request(method, url, **kw)




def _seed(url: str) -> None:
    with Client(url) as client:
        assert client.upsert_items([Item(f"m{k}", title=f"Movie {k}", categories=[f"g{k % 4}"]) for k in range(N_ITEMS)]) == N_ITEMS
        events = [{"event_id": f"seed-{u}-{k}", "user_id": f"u{u}", "item_id": f"m{(u + k) % N_ITEMS}", "type": "view",
                   "timestamp": 1_000 + 10 * u + k} for u in range(30) for k in range(6)]
        assert client.send_events(events).accepted == len(events)


def test_read_your_writes_across_two_workers(tmp_path, store_url):
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    proc = start_workers(tmp_path / "data", port, 2, store_url)
    try:
        _seed(url)
        answered: set[str] = set()
        for trial in range(40):
            user = f"u{trial % 30}"
            top = fresh("GET", f"{url}/v1/users/{user}/recommendations", params={"n": 5}).json()["items"][0]["item_id"]
            ack = fresh("POST", f"{url}/v1/events", json={"event_id": f"b{trial}", "user_id": user, "item_id": top,
                                                          "type": "block", "timestamp": 5_000 + trial})
            assert ack.status_code == 200 and ack.json()["accepted"] == 1
            after = fresh("GET", f"{url}/v1/users/{user}/recommendations", params={"n": 5})
            answered.add(after.headers["x-liverec-worker"])
            assert top not in [i["item_id"] for i in after.json()["items"]], f"trial {trial}: blocked {top} shown"
            # a view enters the sequence at once, on whichever worker answers next
            viewed = f"m{(trial * 7) % N_ITEMS}"
            fresh("POST", f"{url}/v1/events", json={"event_id": f"v{trial}", "user_id": user, "item_id": viewed,
                                                    "type": "view", "timestamp": 6_000 + trial})
            history = fresh("GET", f"{url}/v1/users/{user}").json()["history"]
            assert history[0]["event_id"] == f"v{trial}"
        assert len(answered) == 2, f"only worker(s) {answered} answered 40 fresh connections"
        # a new item upserted on one worker is known to every worker
        fresh("PUT", f"{url}/v1/items/fresh-item", json={"title": "Fresh", "categories": ["g9"]})
        fresh("POST", f"{url}/v1/events", json={"event_id": "fi", "user_id": "u1", "item_id": "fresh-item",
                                                "type": "view", "timestamp": 7_000})
        for _ in range(6):
            history = fresh("GET", f"{url}/v1/users/u1").json()["history"]
            assert history[0]["title"] == "Fresh"
        # a deletion reaches every worker
        assert fresh("DELETE", f"{url}/v1/users/u2").json()["events_deleted"] > 0
        for _ in range(6):
            assert fresh("GET", f"{url}/v1/users/u2").status_code == 404
    finally:
        stop_group(proc)


def test_sigkill_of_a_worker_under_load_loses_nothing(tmp_path, store_url):
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    data_dir = tmp_path / "data"
    proc = start_workers(data_dir, port, 2, store_url)
    acked: list[str] = []
    failed = 0
    stop_load = threading.Event()

    def load(tag: str) -> None:
        nonlocal failed
        k = 0
        while not stop_load.is_set() and k < 5_000:
            batch = [{"event_id": f"{tag}-{k}-{j}", "user_id": f"u{(k + j) % 50}", "item_id": f"m{j % N_ITEMS}",
                      "type": "view", "timestamp": 10_000 + k} for j in range(5)]
            k += 1
            try:
                r = fresh("POST", f"{url}/v1/events", json={"events": batch})
            except httpx.HTTPError:
                failed += 1  # the killed worker's connection: not acknowledged, may or may not be stored
                continue
            if r.status_code == 200:
                acked.extend(e["event_id"] for e in batch)

    try:
        _seed(url)
        threads = [threading.Thread(target=load, args=(f"t{i}",)) for i in range(3)]
        for t in threads:
            t.start()
        time.sleep(2.0)
        victim = int(fresh("GET", f"{url}/v1/health").headers["x-liverec-worker"])
        os.kill(victim, signal.SIGKILL)
        # the other worker keeps serving while the victim is down
        served = 0
        for _ in range(10):
            try:
                r = fresh("GET", f"{url}/v1/users/u1/recommendations")
                served += r.status_code == 200
            except httpx.HTTPError:
                pass
        assert served >= 5
        time.sleep(2.0)
        stop_load.set()
        for t in threads:
            t.join(30)
        health = wait_ready(proc, port, 2)  # the supervisor replaced the victim; it caught up
        assert acked, "no event was acknowledged"
        store = open_store(store_url or f"sqlite:///{data_dir / 'liverec.db'}")
        try:
            stored = {e.event_id for _, e in store.events.scan()}
            expected = len(store.events.user_events("default", "u7"))
        finally:
            store.close()
        missing = [e for e in acked if e not in stored]
        assert not missing, f"{len(missing)} acknowledged events lost, e.g. {missing[:3]}"
        # every worker, the replacement included, answers from the whole log
        seen: dict[str, int] = {}
        for _ in range(20):
            r = fresh("GET", f"{url}/v1/users/u7")
            seen[r.headers["x-liverec-worker"]] = r.json()["n_events"]
        assert victim not in {int(w) for w in seen}
        assert len(seen) == 2 and health["workers"] == 2
        assert set(seen.values()) == {expected}, f"workers disagree with the log ({expected} events): {seen}"
    finally:
        stop_load.set()
        stop_group(proc)


def test_an_item_upserted_on_one_worker_is_recommended_by_every_worker(tmp_path, store_url):
    """A promoted text model serves two workers; an item upserted through one of them is in the
    next answers of both (recommended to the users of its genre, with its genre's items as
    similar items): each worker's fold of the upsert extends its served model."""
    import torch

    from liverec.config import Settings
    from liverec.model.registry import ModelRegistry
    from liverec.model.service_data import train_from_service
    from liverec.model.text import HashingEncoder
    from liverec.runtime.compose import build_service

    from .test_new_items import NEWS, RECIPE, catalog, events

    data_dir = tmp_path / "data"
    settings = Settings(data_dir=data_dir, **({"store_url": store_url} if store_url else {}))
    svc = build_service(settings)
    svc.start()
    svc.upsert_items("default", catalog())
    svc.ingest("default", events())
    svc.close()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        version = train_from_service(data_dir, "default", RECIPE, seed=0, text_encoder=HashingEncoder(32),
                                     progress=False, store_url=store_url)
    finally:
        torch.set_num_threads(threads)
    ModelRegistry.for_data_dir(data_dir, "default").promote(version)
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    proc = start_workers(data_dir, port, 2, store_url)
    try:
        space_user = "u1"  # watches space films only
        assert fresh("PUT", f"{url}/v1/items/news", json=NEWS).json() == {"upserted": 1}
        answered: set[str] = set()
        for _ in range(16):
            r = fresh("GET", f"{url}/v1/users/{space_user}/recommendations", params={"n": 5})
            answered.add(r.headers["x-liverec-worker"])
            assert r.json()["scorer"] == "transformer"
            assert "news" in [i["item_id"] for i in r.json()["items"]], (r.headers["x-liverec-worker"], r.json())
            r = fresh("GET", f"{url}/v1/items/news/similar", params={"n": 5})
            answered.add(r.headers["x-liverec-worker"])
            similar = r.json()["items"]
            assert len(similar) == 5 and all(i["categories"] == ["space"] for i in similar), similar
        assert len(answered) == 2, f"only worker(s) {answered} answered 32 fresh connections"
    finally:
        stop_group(proc)
