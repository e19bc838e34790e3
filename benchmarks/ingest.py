"""Durable ingest throughput over HTTP and recommendation latency, ML-1M, embedded default.

    .venv/bin/python benchmarks/ingest.py --ml ../shared/data/ml-1m [--events 1000072] [--batch 5000]

1. Starts `liverec serve` as a subprocess on a fresh data dir (SQLite, synchronous=FULL).
2. POSTs ML-1M ratings (time order) as batches to /v1/events; each answer arrives only after the
   batch is committed durably and applied to user state. Reports events/s (whole run and median
   of per-batch rates).
3. Recommendation latency for random users over HTTP (server subprocess, keep-alive client) and
   in-process (Service.recommend on the same data), p50/p99.
Prints a JSON summary (and writes it with --out).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from liverec.evaluation.report import machine  # noqa: E402
from liverec.importers import read_movielens_ratings  # noqa: E402


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_healthy(url: str, proc: subprocess.Popen, timeout: float = 300) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc.poll() is not None:
            raise RuntimeError("server exited")
        try:
            if httpx.get(f"{url}/v1/health", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            time.sleep(0.2)
    raise TimeoutError("server not healthy")


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ml", type=Path, default=Path("../shared/data/ml-1m"))
    parser.add_argument("--events", type=int, default=1_000_072)
    parser.add_argument("--batch", type=int, default=5000)
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()

    frame = read_movielens_ratings(args.ml).sort_values("ts", kind="stable").head(args.events)
    payloads = []
    rows = list(frame.itertuples(index=False))
    for start in range(0, len(rows), args.batch):
        chunk = rows[start:start + args.batch]
        events = [{"event_id": f"r{u}:{i}", "user_id": u, "item_id": i, "type": "rating", "value": r, "timestamp": int(t)}
                  for u, i, r, t in chunk]
        payloads.append(json.dumps({"events": events}).encode())

    data_dir = Path(tempfile.mkdtemp(prefix="liverec-bench-"))
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "LIVEREC_SCORER": "cooccurrence"}
    proc = subprocess.Popen([sys.executable, "-m", "liverec.cli", "serve", "--data-dir", str(data_dir), "--port", str(port)], env=env)
    try:
        wait_healthy(url, proc)
        rates = []
        with httpx.Client(timeout=120) as client:
            t0 = time.perf_counter()
            for body in payloads:
                b0 = time.perf_counter()
                r = client.post(f"{url}/v1/events", content=body, headers={"content-type": "application/json"})
                r.raise_for_status()
                rates.append(r.json()["accepted"] / (time.perf_counter() - b0))
            ingest_s = time.perf_counter() - t0
            users = sorted(frame["user"].unique())
            rng = random.Random(0)
            sample = [rng.choice(users) for _ in range(args.requests)]
            for u in sample[:50]:  # warm-up
                client.get(f"{url}/v1/users/{u}/recommendations")
            http_lat = []
            for u in sample:
                s0 = time.perf_counter()
                client.get(f"{url}/v1/users/{u}/recommendations").raise_for_status()
                http_lat.append((time.perf_counter() - s0) * 1e3)
    finally:
        proc.terminate()
        proc.wait(30)

    from liverec.config import Settings
    from liverec.runtime.compose import build_service

    s0 = time.perf_counter()
    service = build_service(Settings(data_dir=data_dir, scorer="cooccurrence"))
    service.start()
    restart_s = time.perf_counter() - s0
    local_lat = []
    for u in sample:
        s1 = time.perf_counter()
        service.recommend("default", u, 10)
        local_lat.append((time.perf_counter() - s1) * 1e3)
    service.close()

    summary = {
        "machine": machine(),
        "date": time.strftime("%Y-%m-%d"),
        "events": len(rows),
        "batch": args.batch,
        "ingest_events_per_s": round(len(rows) / ingest_s),
        "ingest_batch_rate_median": round(statistics.median(rates)),
        "restart_rebuild_s": round(restart_s, 2),
        "recommend_http_ms": {"p50": round(percentile(http_lat, 0.5), 3), "p99": round(percentile(http_lat, 0.99), 3)},
        "recommend_inprocess_ms": {"p50": round(percentile(local_lat, 0.5), 3), "p99": round(percentile(local_lat, 0.99), 3)},
    }
    print(json.dumps(summary, indent=2))
    if args.out:
        args.out.write_text(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
