"""HTTP load benchmark of the liverec service: a real `liverec serve` process under concurrent load.

    .venv/bin/python benchmarks/serve_load.py --data ../shared/data/ml-1m --label after \\
        --out serve_load.json [--work bench-work] [--epochs 3] [--workers N] \\
        [--liverec ../other-checkout/.venv/bin/liverec] [--scenarios recs,events1,events1000,ack,restart] \\
        [--connections 32] [--recs-s 15] [--events1-s 15] [--events1000-s 15] \\
        [--ack-trials 200] [--ack-background-rps 500] [--ack-s 60]

1. Prepares a data dir once per dataset under --work (git-ignored): `liverec import movielens`,
   then `liverec train --epochs E` so a Transformer is promoted. Steps whose output exists are
   skipped. Preparation uses this venv's `liverec` (--prepare-liverec to change it), so both
   sides of a before/after comparison serve the same events and the same model.
2. Copies the prepared dir to a scratch run dir (the scenarios write events, impressions and
   snapshots; every run starts from the same state), reads the known user and item ids from its
   SQLite store, and starts `<--liverec> serve --data-dir RUN --port P [--workers N]` (the flag
   only when N > 1: older checkouts have none). The time from process start until
   `GET /v1/health` answers 200 (and, with N > 1, reports N workers) is the `restart` figure.
3. Runs the scenarios, each in a separate load-generator process:
   - recs: `GET /v1/users/{id}/recommendations` for random known users at --connections
     keep-alive connections: req/s, p50/p90/p99 latency, errors;
   - events1: single-event `POST /v1/events` (type view, random known user and item) at
     8 connections: events/s, p50/p90/p99;
   - events1000: batches of 1,000 such events at 4 connections: events/s, latency per batch;
   - ack: while a second process sends ~--ack-background-rps recommendation requests for other
     users, each trial GETs a user's slate, POSTs a `block` of its top item, then GETs the slate
     again on a fresh connection; latency = from sending the POST until that GET's answer
     arrives; a violation is the blocked item still in the slate.
   Every scenario also records the server's CPU time (its process group, from /proc) and the
   generator's, so CPU per request can be compared where latency is dominated by queueing.
4. Stops the server (SIGTERM, then SIGKILL), writes the JSON (--out) and prints a table.

A short run on the small dataset:

    .venv/bin/python benchmarks/serve_load.py --data ../shared/data/ml-latest-small --epochs 1 \\
        --recs-s 5 --events1-s 5 --events1000-s 5 --ack-s 30 --label trial --out trial.json

The load generator is a small asyncio HTTP/1.1 keep-alive client on raw streams (uvloop when
installed): httpx or aiohttp spend more CPU per request than the server does on 2 shared cores,
and wrk (not installed by default) can neither pace the background load nor run the ack check.
--label tags a run ("before", "after") so two JSON files can be compared.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing as mp
import os
import queue
import random
import re
import shlex
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import time
import urllib.parse
import urllib.request
import uuid
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable

from tqdm import tqdm

from liverec.evaluation.report import machine

REPO = Path(__file__).resolve().parents[1]
SCENARIOS = ("recs", "events1", "events1000", "ack", "restart")
# A request that takes longer than this is counted as an error (the server is then overloaded).
REQUEST_TIMEOUT_S = 30.0


# --------------------------------------------------------------------------------------------
# HTTP/1.1 client on raw asyncio streams (runs inside the load-generator processes)
# --------------------------------------------------------------------------------------------

class HTTPError(Exception):
    """The server answered something that is not a well-formed HTTP/1.1 response."""


class Connection:
    """One keep-alive connection; reopened transparently after the server closed it. Says how
    old the open connection is, how many responses it carried and when it last finished one
    (a failed request tells a stale connection from a fresh one)."""

    def __init__(self, host: str, port: int) -> None:
        self.host, self.port = host, port
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None
        self.host_header = f"Host: {host}:{port}\r\n"
        self.opened_at = self.last_done = 0.0  # time.monotonic()
        self.served = 0

    def history(self) -> dict[str, float | int]:
        """Of the connection a request is about to use: its age, responses carried, idle time."""
        now = time.monotonic()
        if self.writer is None:
            return {"conn_age_s": 0.0, "conn_served": 0, "conn_idle_s": 0.0}
        return {"conn_age_s": round(now - self.opened_at, 3), "conn_served": self.served,
                "conn_idle_s": round(now - (self.last_done or self.opened_at), 3)}

    async def request(self, method: str, path: str, body: bytes | None = None) -> tuple[int, bytes]:
        if self.writer is None:
            self.reader, self.writer = await asyncio.open_connection(self.host, self.port)
            self.opened_at, self.last_done, self.served = time.monotonic(), 0.0, 0
        head = f"{method} {path} HTTP/1.1\r\n{self.host_header}"
        if body is not None:
            head += f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n"
        self.writer.write(head.encode("latin-1") + b"\r\n" + (body or b""))
        try:
            status, payload, keep = await read_response(self.reader, method)  # type: ignore[arg-type]
        except BaseException:
            self.close()  # a half-read response leaves the stream unusable
            raise
        self.served += 1
        self.last_done = time.monotonic()
        if not keep:
            self.close()
        return status, payload

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
        self.reader = self.writer = None


async def read_response(reader: asyncio.StreamReader, method: str) -> tuple[int, bytes, bool]:
    """Status, body and whether the connection stays open; Content-Length, chunked or until close."""
    raw = await reader.readuntil(b"\r\n\r\n")
    lines = raw[:-4].decode("latin-1").split("\r\n")
    parts = lines[0].split(" ", 2)
    if len(parts) < 2 or not parts[0].startswith("HTTP/1."):
        raise HTTPError(f"bad status line {lines[0]!r}")
    status = int(parts[1])
    length: int | None = None
    chunked = False
    keep = parts[0] == "HTTP/1.1"
    for line in lines[1:]:
        name, _, value = line.partition(":")
        name = name.strip().lower()
        if name == "content-length":
            length = int(value.strip())
        elif name == "transfer-encoding":
            chunked = "chunked" in value.lower()
        elif name == "connection":
            keep = "close" not in value.lower() and (keep or "keep-alive" in value.lower())
    if method == "HEAD" or status in (204, 304) or 100 <= status < 200:
        return status, b"", keep
    if chunked:  # takes precedence over Content-Length (RFC 9112 6.3)
        chunks = []
        while True:
            size_line = await reader.readuntil(b"\r\n")
            size = int(size_line.split(b";", 1)[0].strip(), 16)
            if size == 0:
                while await reader.readuntil(b"\r\n") != b"\r\n":  # trailer fields, then the empty line
                    pass
                break
            chunks.append(await reader.readexactly(size))
            if await reader.readexactly(2) != b"\r\n":
                raise HTTPError("chunk not followed by CRLF")
        return status, b"".join(chunks), keep
    if length is not None:
        return status, await reader.readexactly(length), keep
    return status, await reader.read(), False  # body delimited by the server closing


# --------------------------------------------------------------------------------------------
# Measurements (inside the load-generator processes)
# --------------------------------------------------------------------------------------------

def percentile(ordered: list[float], q: float) -> float | None:
    """Linear interpolation between closest ranks of an ascending list."""
    if not ordered:
        return None
    pos = q * (len(ordered) - 1)
    lo = int(pos)
    hi = min(lo + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (pos - lo)


def latency_summary(seconds: list[float]) -> dict[str, Any]:
    ordered = sorted(s * 1000.0 for s in seconds)
    out: dict[str, Any] = {"n": len(ordered)}
    for name, q in (("p50", 0.5), ("p90", 0.9), ("p99", 0.99)):
        value = percentile(ordered, q)
        out[name] = None if value is None else round(value, 3)
    out["max"] = round(ordered[-1], 3) if ordered else None
    out["mean"] = round(sum(ordered) / len(ordered), 3) if ordered else None
    return out


class Recorder:
    """Latencies and outcomes of the requests that completed inside the measured window."""

    def __init__(self, start: float, end: float) -> None:
        self.start, self.end = start, end
        self.latencies: list[float] = []
        self.errors: dict[str, int] = {}
        self.ok = 0
        self.completed = 0  # warm-up included: what the server's CPU time is divided by

    def add(self, t0: float, t1: float, outcome: int | str) -> None:
        self.completed += 1
        if t0 < self.start or t1 > self.end:
            return  # warm-up, or finished after the window closed
        if outcome == 200:
            self.ok += 1
            self.latencies.append(t1 - t0)
        else:
            key = str(outcome)
            self.errors[key] = self.errors.get(key, 0) + 1

    def summary(self, items_per_request: int = 1) -> dict[str, Any]:
        window = self.end - self.start
        errors = sum(self.errors.values())
        return {
            "window_s": round(window, 3),
            "requests_ok": self.ok,
            "requests_per_s": round(self.ok / window, 1),
            "items_per_s": round(self.ok * items_per_request / window, 1),
            "errors": errors,
            "errors_by_kind": self.errors,
            "latency_ms": latency_summary(self.latencies),
            "requests_completed": self.completed,
            "client_cpu_s": round(time.process_time(), 2),
        }


async def timed(conn: Connection, method: str, path: str, body: bytes | None = None) -> tuple[int | str, bytes]:
    """(status or exception name, body); never raises for transport problems."""
    try:
        async with asyncio.timeout(REQUEST_TIMEOUT_S):
            return await conn.request(method, path, body)
    except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, HTTPError, ValueError, TimeoutError) as exc:
        conn.close()
        return type(exc).__name__, b""


def event_body(rng: random.Random, users: list[str], items: list[str], now: float) -> dict[str, Any]:
    return {"event_id": uuid.uuid4().hex, "user_id": rng.choice(users), "item_id": rng.choice(items),
            "type": "view", "timestamp": now}


def recs_path(user: str) -> str:
    return f"/v1/users/{urllib.parse.quote(user, safe='')}/recommendations"


async def ticker(progress: Any, start: float, stop: asyncio.Event) -> None:
    """Elapsed seconds to the orchestrator, twice a second, for its progress bar."""
    while not stop.is_set():
        progress.put(("progress", time.perf_counter() - start))
        try:
            await asyncio.wait_for(stop.wait(), 0.5)
        except TimeoutError:
            pass


async def closed_loop(spec: dict[str, Any], progress: Any) -> dict[str, Any]:
    """`connections` workers, each sending its next request as soon as the last one answered."""
    rng = random.Random(spec["seed"])
    users, items = spec["users"], spec["items"]
    kind, batch = spec["kind"], spec.get("batch", 1)
    t_start = time.perf_counter()
    rec = Recorder(t_start + spec["warmup_s"], t_start + spec["warmup_s"] + spec["duration_s"])

    def next_request() -> tuple[str, str, bytes | None]:
        if kind == "recs":
            return "GET", recs_path(rng.choice(users)), None
        now = time.time()
        if kind == "events1":
            return "POST", "/v1/events", json.dumps(event_body(rng, users, items, now)).encode()
        events = [event_body(rng, users, items, now) for _ in range(batch)]
        return "POST", "/v1/events", json.dumps({"events": events}).encode()

    async def worker() -> None:
        conn = Connection(spec["host"], spec["port"])
        while time.perf_counter() < rec.end:
            method, path, body = next_request()  # built before the clock starts
            t0 = time.perf_counter()
            status, _ = await timed(conn, method, path, body)
            rec.add(t0, time.perf_counter(), status)
        conn.close()

    stop = asyncio.Event()
    tick = asyncio.create_task(ticker(progress, t_start, stop))
    await asyncio.gather(*(worker() for _ in range(spec["connections"])))
    stop.set()
    await tick
    return {"connections": spec["connections"], "batch": batch, **rec.summary(batch)}


async def paced_load(spec: dict[str, Any], stop_flag: Any, progress: Any) -> dict[str, Any]:
    """Recommendation requests at a target rate over a few connections, until `stop_flag` is set.

    A slot missed because every connection was busy is dropped, not made up later: the offered
    rate never exceeds the target, and an overloaded server shows as an achieved rate below it.
    """
    rng = random.Random(spec["seed"])
    users = spec["users"]
    interval = 1.0 / spec["rps"]
    t_start = time.perf_counter()
    rec = Recorder(t_start + spec["warmup_s"], float("inf"))
    next_slot = t_start

    async def worker() -> None:
        nonlocal next_slot
        conn = Connection(spec["host"], spec["port"])
        while not stop_flag.is_set() and time.perf_counter() - t_start < spec["max_s"]:
            now = time.perf_counter()
            slot = max(next_slot, now)
            next_slot = slot + interval
            if slot > now:
                await asyncio.sleep(slot - now)
            t0 = time.perf_counter()
            status, _ = await timed(conn, "GET", recs_path(rng.choice(users)))
            rec.add(t0, time.perf_counter(), status)
        conn.close()

    await asyncio.gather(*(worker() for _ in range(spec["connections"])))
    rec.end = time.perf_counter()
    out = rec.summary()
    out["target_rps"] = spec["rps"]
    out["connections"] = spec["connections"]
    return out


async def ack_trials(spec: dict[str, Any], progress: Any) -> dict[str, Any]:
    """Block the top item of a user's slate; time until a fresh connection's slate lacks it."""
    host, port = spec["host"], spec["port"]
    users = spec["users"]
    conn = Connection(host, port)
    await asyncio.sleep(spec["ramp_s"])  # let the background load reach its rate first
    latencies, acks, violations, skipped = [], [], [], 0
    errors: dict[str, int] = {}

    def error(kind: str) -> None:
        errors[kind] = errors.get(kind, 0) + 1

    t_start = time.perf_counter()
    for k in range(spec["trials"]):
        if time.perf_counter() - t_start > spec["max_s"]:
            break
        if k % 5 == 0:
            progress.put(("progress", k))
        user = users[k % len(users)]
        path = recs_path(user)
        status, body = await timed(conn, "GET", path)
        if status != 200:
            error(f"first GET {status}")
            continue
        slate = json.loads(body).get("items") or []
        if not slate:
            skipped += 1
            continue
        top = slate[0]["item_id"]
        event = {"event_id": uuid.uuid4().hex, "user_id": user, "item_id": top, "type": "block",
                 "timestamp": time.time()}
        payload = json.dumps(event).encode()
        t0 = time.perf_counter()
        status, _ = await timed(conn, "POST", "/v1/events", payload)
        t_ack = time.perf_counter()
        if status != 200:
            error(f"POST {status}")
            continue
        fresh = Connection(host, port)
        status, body = await timed(fresh, "GET", path)
        t1 = time.perf_counter()
        fresh.close()
        if status != 200:
            error(f"second GET {status}")
            continue
        latencies.append(t1 - t0)
        acks.append(t_ack - t0)
        if any(entry["item_id"] == top for entry in json.loads(body).get("items") or []):
            violations.append({"user_id": user, "item_id": top})
    conn.close()
    return {
        "trials_done": len(latencies),
        "trials_requested": spec["trials"],
        "skipped_empty_slate": skipped,
        "errors": sum(errors.values()),
        "errors_by_kind": errors,
        "violations": len(violations),
        "violation_examples": violations[:10],
        "ack_to_changed_ms": latency_summary(latencies),
        "post_ack_ms": latency_summary(acks),
        "duration_s": round(time.perf_counter() - t_start, 3),
        "client_cpu_s": round(time.process_time(), 2),
    }


def generator_main(target: str, spec: dict[str, Any], results: Any, stop_flag: Any = None) -> None:
    """Entry point of a load-generator process: runs one coroutine, puts its result on `results`."""
    try:
        import uvloop  # cheaper event loop: more of the two cores left to the server

        runner: Callable[[Any], Any] = uvloop.run
    except ImportError:
        runner = asyncio.run
    try:
        if target == "closed":
            out = runner(closed_loop(spec, results))
        elif target == "paced":
            out = runner(paced_load(spec, stop_flag, results))
        else:
            out = runner(ack_trials(spec, results))
        results.put(("result", out))
    except BaseException as exc:  # the orchestrator must learn about it rather than wait forever
        results.put(("error", f"{type(exc).__name__}: {exc}"))


# --------------------------------------------------------------------------------------------
# Orchestration: data dir, server process, scenarios, report
# --------------------------------------------------------------------------------------------

def run_logged(cmd: list[str], env: dict[str, str], log: Path) -> str:
    """Run a preparation step with its output in `log`; stdout returned; raises on failure."""
    print("$ " + shlex.join(cmd), flush=True)
    with open(log, "a") as f:
        f.write(f"\n$ {shlex.join(cmd)}\n")
        f.flush()
        proc = subprocess.run(cmd, env=env, stdout=subprocess.PIPE, stderr=f, text=True)
        f.write(proc.stdout)
    if proc.returncode != 0:
        raise SystemExit(f"failed ({proc.returncode}): {shlex.join(cmd)}; see {log}")
    return proc.stdout


def prepare(args: argparse.Namespace, env: dict[str, str]) -> tuple[Path, dict[str, Any]]:
    """The cached, prepared data dir for the dataset: imported and with a promoted model."""
    prepared = args.work / args.data.resolve().name
    log = args.work / f"{prepared.name}.prepare.log"
    liverec = str(args.prepare_liverec)
    imported, trained = prepared / ".imported.json", prepared / ".trained.json"
    info: dict[str, Any] = {"dir": str(prepared)}
    if not imported.exists():
        shutil.rmtree(prepared, ignore_errors=True)  # a half-finished import is not reusable
        prepared.mkdir(parents=True)
        t0 = time.perf_counter()
        out = run_logged([liverec, "import", "movielens", str(args.data), "--data-dir", str(prepared)], env, log)
        report = json.loads(out.strip().splitlines()[-1])
        imported.write_text(json.dumps({"report": report, "seconds": round(time.perf_counter() - t0, 1)}))
    else:
        print(f"import: cached in {prepared}", flush=True)
    info["import"] = json.loads(imported.read_text())
    promoted = prepared / "models" / "default" / "PROMOTED"
    done = json.loads(trained.read_text()) if trained.exists() else {}
    if not promoted.exists() or done.get("epochs") != args.epochs:
        t0 = time.perf_counter()
        out = run_logged([liverec, "train", "--data-dir", str(prepared), "--epochs", str(args.epochs)], env, log)
        version = out.strip().splitlines()[-1].strip()
        trained.write_text(json.dumps({"epochs": args.epochs, "version": version, "seconds": round(time.perf_counter() - t0, 1)}))
    else:
        print(f"train: cached ({done.get('version')}, {args.epochs} epochs)", flush=True)
    info["train"] = json.loads(trained.read_text())
    # A snapshot of the folds, as a running server leaves one behind (every 60 s by default):
    # `restart` then measures a start from it plus the log's tail. Code without snapshots
    # ignores the stored blob and folds the whole log.
    snapped = prepared / ".snapshot.json"
    if not snapped.exists():
        out = run_logged([liverec, "snapshot", "--data-dir", str(prepared)], env, log)
        snapped.write_text(out.strip().splitlines()[-1])
    info["snapshot"] = json.loads(snapped.read_text())
    return prepared, info


def known_ids(data_dir: Path) -> tuple[list[str], list[str]]:
    """User and item ids of the default app, read from the store before the server opens it."""
    db = sqlite3.connect(f"file:{data_dir / 'liverec.db'}?mode=ro", uri=True)
    try:
        users = [r[0] for r in db.execute("SELECT DISTINCT user_id FROM events WHERE app = 'default'")]
        items = [r[0] for r in db.execute(
            "SELECT DISTINCT item_id FROM events WHERE app = 'default' AND item_id IS NOT NULL AND scope = 'item'")]
    finally:
        db.close()
    return sorted(users), sorted(items)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def health(url: str) -> dict[str, Any] | None:
    try:
        with urllib.request.urlopen(f"{url}/v1/health", timeout=2) as r:
            return json.loads(r.read()) if r.status == 200 else None
    except (OSError, ValueError):
        return None  # not listening yet, still starting, or reset


class Server:
    """`liverec serve` as a subprocess in its own process group."""

    def __init__(self, args: argparse.Namespace, data_dir: Path, port: int, env: dict[str, str], log: Path) -> None:
        self.cmd = [str(args.liverec), "serve", "--data-dir", str(data_dir), "--port", str(port)]
        if args.workers > 1:
            self.cmd += ["--workers", str(args.workers)]
        self.url = f"http://127.0.0.1:{port}"
        self.workers = args.workers
        self.env, self.log = env, log
        self.proc: subprocess.Popen | None = None

    def start(self, timeout: float) -> tuple[float, dict[str, Any]]:
        """Seconds from process start until healthy (and every worker up), and the health JSON."""
        self.log_file = open(self.log, "a")
        t0 = time.perf_counter()
        self.proc = subprocess.Popen(self.cmd, env=self.env, stdout=self.log_file, stderr=subprocess.STDOUT,
                                     start_new_session=True)
        while time.perf_counter() - t0 < timeout:
            if self.proc.poll() is not None:
                raise SystemExit(f"server exited with {self.proc.returncode}; see {self.log}")
            doc = health(self.url)
            if doc is not None and doc.get("status", "ok") == "ok":
                if self.workers <= 1 or "workers" not in doc or doc["workers"] == self.workers:
                    return time.perf_counter() - t0, doc
            time.sleep(0.05)
        raise SystemExit(f"server not healthy after {timeout:.0f} s; see {self.log}")

    def wait_warm(self, timeout: float) -> float:
        """Seconds until every worker's background start-up work is done (e.g. the sentence
        encoder loading after the server already answers): the load scenarios start after it, so
        they do not measure a one-off. Servers that do not report it count as warm."""
        t0 = time.perf_counter()
        while time.perf_counter() - t0 < timeout:
            doc = health(self.url)
            if doc is not None and doc.get("warm_workers", self.workers) >= max(self.workers, 1):
                break
            time.sleep(0.2)
        return time.perf_counter() - t0

    def stop(self) -> dict[str, Any]:
        if self.proc is None:
            return {}
        t0 = time.perf_counter()
        how = "sigterm"
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                how = "sigkill"
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        try:  # stragglers (worker processes) left in the server's own group
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.log_file.close()
        return {"stopped_by": how, "stop_s": round(time.perf_counter() - t0, 2), "exit_code": self.proc.returncode}


def group_cpu_s(pgid: int) -> float:
    """CPU seconds (user + system) of the live processes in a process group, from /proc."""
    ticks = 0
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/stat") as f:
                stat = f.read()
        except OSError:
            continue  # exited meanwhile
        fields = stat[stat.rfind(")") + 2:].split()  # after "pid (comm) ": state, ppid, pgrp, ...
        if int(fields[2]) == pgid:
            ticks += int(fields[11]) + int(fields[12])  # utime, stime
    return ticks / os.sysconf("SC_CLK_TCK")


def measured(server: Server, run: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    """A scenario's result with the server's CPU use over it (cores busy, CPU ms per request)."""
    cpu0, t0 = group_cpu_s(server.proc.pid), time.perf_counter()  # type: ignore[union-attr]
    out = run()
    cpu = group_cpu_s(server.proc.pid) - cpu0  # type: ignore[union-attr]
    wall = time.perf_counter() - t0
    done = out.get("requests_completed") or out.get("trials_done")
    out["server_cpu"] = {"cpu_s": round(cpu, 2), "wall_s": round(wall, 2), "cores_busy": round(cpu / wall, 2),
                         "cpu_ms_per_request": round(1000 * cpu / done, 3) if done and "trials_done" not in out else None}
    return out


def spawn(ctx: Any, target: str, spec: dict[str, Any], stop_flag: Any = None) -> tuple[Any, Any]:
    results = ctx.Queue()
    proc = ctx.Process(target=generator_main, args=(target, spec, results, stop_flag), daemon=True)
    proc.start()
    return proc, results


def collect(proc: Any, results: Any, bar: tqdm | None, timeout: float, fill: bool = True) -> dict[str, Any]:
    """Wait for a generator's result, moving `bar` with its progress reports."""
    deadline = time.perf_counter() + timeout
    while time.perf_counter() < deadline:
        try:
            kind, value = results.get(timeout=0.5)
        except queue.Empty:
            if not proc.is_alive():
                raise RuntimeError(f"load generator died (exit code {proc.exitcode})") from None
            continue
        if kind == "progress":
            if bar is not None:
                bar.update(min(value, bar.total) - bar.n)
            continue
        proc.join(10)
        if kind == "error":
            raise RuntimeError(f"load generator failed: {value}")
        if bar is not None and fill:
            bar.update(bar.total - bar.n)
        return value
    proc.kill()
    raise RuntimeError("load generator did not finish in time")


def run_closed(ctx: Any, name: str, base: dict[str, Any], duration: float, **extra: Any) -> dict[str, Any]:
    spec = {**base, "kind": name, "duration_s": duration, **extra}
    proc, results = spawn(ctx, "closed", spec)
    bar = tqdm(total=round(base["warmup_s"] + duration, 1), desc=name, unit="s", bar_format="{desc:>10} {bar} {n:.0f}/{total:.0f} s")
    try:
        return collect(proc, results, bar, duration + base["warmup_s"] + REQUEST_TIMEOUT_S + 60)
    finally:
        bar.close()


def run_ack(ctx: Any, args: argparse.Namespace, base: dict[str, Any]) -> dict[str, Any]:
    """Ack trials on their own users, with paced recommendation traffic for the others beside them."""
    rng = random.Random(args.seed + 1)
    users = list(base["users"])
    rng.shuffle(users)
    n_ack = max(1, min(args.ack_trials, len(users) // 2))
    ack_users, others = users[:n_ack], users[n_ack:] or users
    stop_flag = ctx.Event()
    background = None
    if args.ack_background_rps > 0:
        spec = {**base, "users": others, "rps": args.ack_background_rps, "connections": args.ack_background_connections,
                "max_s": args.ack_s + 120, "seed": args.seed + 2}
        background = spawn(ctx, "paced", spec, stop_flag)
    spec = {**base, "users": ack_users, "trials": args.ack_trials, "max_s": args.ack_s,
            "ramp_s": base["warmup_s"] if background else 0.0}
    proc, results = spawn(ctx, "ack", spec)
    bar = tqdm(total=args.ack_trials, desc="ack", unit="trial", bar_format="{desc:>10} {bar} {n:.0f}/{total:.0f} trials")
    try:
        out = collect(proc, results, bar, args.ack_s + base["warmup_s"] + REQUEST_TIMEOUT_S + 60, fill=False)
        bar.update(out["trials_done"] - bar.n)
    finally:
        bar.close()
        stop_flag.set()
    out["users"] = n_ack
    if background is not None:
        out["background"] = collect(*background, None, REQUEST_TIMEOUT_S + 30)
    return out


def git_commit(path: Path) -> dict[str, Any]:
    def git(*cmd: str) -> str | None:
        try:
            r = subprocess.run(["git", "-C", str(path), *cmd], capture_output=True, text=True, timeout=20)
        except (OSError, subprocess.TimeoutExpired):
            return None
        return r.stdout.strip() if r.returncode == 0 else None

    commit = git("rev-parse", "HEAD")
    if commit is None:
        return {"commit": None}
    dirty = git("status", "--porcelain", "--untracked-files=no")
    return {"commit": commit, "dirty": bool(dirty), "repo": git("rev-parse", "--show-toplevel")}


def log_problems(log: Path, limit: int = 20) -> dict[str, Any]:
    """Tracebacks and error lines the server wrote during the run."""
    lines = log.read_text(errors="replace").splitlines() if log.exists() else []
    bad = [ln for ln in lines if "Traceback" in ln or "ERROR" in ln or "Error:" in ln or "Exception" in ln
           or "WARNING" in ln]
    # the collector monitor's line for a pass of 250 ms or more (liverec.memory.CollectorPauses)
    passes = [float(m.group(1)) for ln in lines if (m := SLOW_PASS.search(ln))]
    return {"tracebacks": sum("Traceback" in ln for ln in lines), "error_lines": len(bad), "examples": bad[:limit],
            "slow_collector_passes": {"count": len(passes), "longest_ms": max(passes, default=0.0),
                                      "examples": [ln for ln in lines if SLOW_PASS.search(ln)][:limit]}}


SLOW_PASS = re.compile(r"garbage collection of generation \d held the interpreter (\d+) ms")


def table(report: dict[str, Any]) -> str:
    rows = [("scenario", "rate", "p50 ms", "p90 ms", "p99 ms", "errors", "srv cores")]

    def lat(d: dict[str, Any], key: str) -> str:
        v = d.get(key)
        return "-" if v is None else f"{v:.2f}"

    res = report["scenarios"]

    def cores(d: dict[str, Any]) -> str:
        return f"{d['server_cpu']['cores_busy']:.2f}" if "server_cpu" in d else ""
    if "recs" in res:
        r = res["recs"]
        rows.append(("recs", f"{r['requests_per_s']:.0f} req/s", lat(r["latency_ms"], "p50"), lat(r["latency_ms"], "p90"),
                     lat(r["latency_ms"], "p99"), str(r["errors"]), cores(r)))
    for name in ("events1", "events1000"):
        if name in res:
            r = res[name]
            rows.append((name, f"{r['items_per_s']:.0f} events/s", lat(r["latency_ms"], "p50"), lat(r["latency_ms"], "p90"),
                         lat(r["latency_ms"], "p99"), str(r["errors"]), cores(r)))
    if "ack" in res:
        r = res["ack"]
        lm = r["ack_to_changed_ms"]
        rows.append(("ack", f"{r['trials_done']} trials, {r['violations']} viol.", lat(lm, "p50"), lat(lm, "p90"),
                     lat(lm, "p99"), str(r["errors"]), cores(r)))
        if "background" in r:
            b = r["background"]
            rows.append(("  backgr.", f"{b['requests_per_s']:.0f}/{b['target_rps']} req/s", lat(b["latency_ms"], "p50"),
                         lat(b["latency_ms"], "p90"), lat(b["latency_ms"], "p99"), str(b["errors"]), ""))
    if "restart" in res:
        rows.append(("restart", f"{res['restart']['startup_s']:.2f} s to healthy", "", "", "", "", ""))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(c.ljust(w) if i == 0 or i == 1 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths)))
                     for r in rows)


def server_args(p: argparse.ArgumentParser, data: str, epochs: int) -> Path:
    """The arguments every serving benchmark takes (what it prepares and what serves it); returns
    the venv's liverec executable, their default."""
    venv_liverec = Path(sys.executable).parent / "liverec"
    p.add_argument("--data", type=Path, default=Path(data), help="MovieLens folder")
    p.add_argument("--work", type=Path, default=Path("bench-work"), help="cache of prepared data dirs, scratch and logs")
    p.add_argument("--epochs", type=int, default=epochs, help="training epochs of the prepared model")
    p.add_argument("--liverec", type=Path, default=venv_liverec, help="the liverec executable that serves")
    return venv_liverec


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    venv_liverec = server_args(p, "../shared/data/ml-1m", 3)
    p.add_argument("--prepare-liverec", type=Path, default=venv_liverec, help="the liverec executable that imports and trains")
    p.add_argument("--workers", type=int, default=1, help="server worker processes (--workers passed only when > 1)")
    p.add_argument("--port", type=int, default=0, help="server port (0: a free one)")
    p.add_argument("--scenarios", default=",".join(SCENARIOS), help=f"comma-separated subset of {','.join(SCENARIOS)}")
    p.add_argument("--connections", type=int, default=32, help="connections of the recs scenario")
    p.add_argument("--recs-s", type=float, default=15.0)
    p.add_argument("--events1-s", type=float, default=15.0)
    p.add_argument("--events1-connections", type=int, default=8)
    p.add_argument("--events1000-s", type=float, default=15.0)
    p.add_argument("--events1000-connections", type=int, default=4)
    p.add_argument("--batch", type=int, default=1000, help="events per batch of the events1000 scenario")
    p.add_argument("--ack-trials", type=int, default=200)
    p.add_argument("--ack-s", type=float, default=60.0, help="upper bound on the ack scenario's duration")
    p.add_argument("--ack-background-rps", type=float, default=500.0, help="recommendation traffic beside the ack trials (0: none)")
    p.add_argument("--ack-background-connections", type=int, default=16)
    p.add_argument("--warmup-s", type=float, default=1.0, help="unmeasured start of every scenario")
    p.add_argument("--start-timeout", type=float, default=900.0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--label", default="", help="tag of this run, e.g. before / after")
    p.add_argument("--out", type=Path, help="JSON report")
    p.add_argument("--keep-run-dir", action="store_true", help="keep the scratch data dir after the run")
    args = p.parse_args(argv)
    args.scenarios = [s.strip() for s in args.scenarios.split(",") if s.strip()]
    unknown = sorted(set(args.scenarios) - set(SCENARIOS))
    if unknown:
        p.error(f"unknown scenarios {unknown}; known: {', '.join(SCENARIOS)}")
    for exe in (args.liverec, args.prepare_liverec):
        if not os.access(exe, os.X_OK):
            p.error(f"not an executable: {exe}")
    return args


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    args.work.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    report: dict[str, Any] = {
        "benchmark": "serve_load",
        "label": args.label,
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "command": shlex.join([sys.executable, *sys.argv]) if argv is None else shlex.join(argv),
        "machine": {**machine(), "loadavg_start": os.getloadavg()},
        "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
    }

    prepared, prep_info = prepare(args, env)
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    tag = f"{prepared.name}-{args.label or 'run'}-{stamp}"
    run_dir = args.work / "runs" / tag
    shutil.rmtree(run_dir, ignore_errors=True)
    shutil.copytree(prepared, run_dir)
    users, items = known_ids(run_dir)
    if not users or not items:
        raise SystemExit(f"no users or items in {run_dir / 'liverec.db'}")
    (args.work / "logs").mkdir(exist_ok=True)
    log = args.work / "logs" / f"serve-{tag}.log"
    port = args.port or free_port()
    server = Server(args, run_dir, port, env, log)
    report["git"] = git_commit(REPO)  # now, not at the start: preparing can take long on a busy tree
    report["server"] = {"command": shlex.join(server.cmd), "liverec": str(args.liverec),
                        "git": git_commit(args.liverec.parent), "log": str(log), "workers": args.workers}
    report["data"] = {"path": str(args.data), "prepared": prep_info, "users": len(users), "items": len(items)}

    ctx = mp.get_context("spawn")  # a clean interpreter per generator: no inherited threads or sockets
    base = {"host": "127.0.0.1", "port": port, "users": users, "items": items, "warmup_s": args.warmup_s, "seed": args.seed}
    results: dict[str, Any] = {}
    report["scenarios"] = results
    print(f"starting: {shlex.join(server.cmd)}", flush=True)
    try:
        startup_s, doc = server.start(args.start_timeout)
        report["server"]["health"] = doc
        print(f"   restart {startup_s:.2f} s until healthy", flush=True)
        warm_s = server.wait_warm(args.start_timeout)
        print(f"   warm {warm_s:.2f} s later (background start-up work done)", flush=True)
        if "restart" in args.scenarios:
            results["restart"] = {"startup_s": round(startup_s, 3), "warm_after_s": round(warm_s, 3), "health": doc}
        if "recs" in args.scenarios:
            results["recs"] = measured(server, lambda: run_closed(ctx, "recs", base, args.recs_s, connections=args.connections))
        if "events1" in args.scenarios:
            results["events1"] = measured(server, lambda: run_closed(ctx, "events1", base, args.events1_s,
                                                                     connections=args.events1_connections))
        if "events1000" in args.scenarios:
            results["events1000"] = measured(server, lambda: run_closed(ctx, "events1000", base, args.events1000_s,
                                                                        connections=args.events1000_connections,
                                                                        batch=args.batch))
        if "ack" in args.scenarios:
            results["ack"] = measured(server, lambda: run_ack(ctx, args, base))
        report["server"]["health_after"] = health(server.url)
    finally:
        report["server"]["stop"] = server.stop()
        report["server"]["log_problems"] = log_problems(log)
        if not args.keep_run_dir:
            shutil.rmtree(run_dir, ignore_errors=True)
        report["machine"]["loadavg_end"] = os.getloadavg()
        if args.out:
            args.out.parent.mkdir(parents=True, exist_ok=True)
            args.out.write_text(json.dumps(report, indent=2) + "\n")

    print()
    print(f"serve_load {args.label or ''} on {report['machine']['cpu']} ({report['machine']['cores']} cores), "
          f"{args.data.name}, {len(users)} users, {len(items)} items, workers={args.workers}")
    print(table(report))
    problems = report["server"]["log_problems"]
    if problems["error_lines"]:
        print(f"server log: {problems['tracebacks']} tracebacks, {problems['error_lines']} error lines ({log})")
    if args.out:
        print(f"wrote {args.out}")
    return report


if __name__ == "__main__":
    main()
