"""Soak: a PostgreSQL-backed `liverec serve --workers 2` under paced mixed traffic for a long
time, with the online learner publishing versions and PostgreSQL restarted mid-run.

    flock /tmp/liverec-bench.lock .venv/bin/python benchmarks/soak.py --minutes 30 \\
        [--data ../shared/data/ml-latest-small] [--rps 300] [--outage-at 0.5] [--outage-s 10]

1. Prepares a data dir as benchmarks/serve_load.py does (imported, a Transformer trained and
   promoted; cached under --work), copies it to a scratch run dir and copies its log and catalog
   into a fresh PostgreSQL schema (`soak_<stamp>`, dropped at the end unless --keep).
2. Starts `liverec serve --store postgresql://...?schema=... --workers 2` and the learner role
   `liverec learn` beside it (niced, one PyTorch thread: it stands for a learner on a machine of
   its own; --learner-interval / --learner-min-events / --learner-steps set its cadence), whose
   promoted versions every worker hot-swaps.
3. A load generator (another process; the raw-asyncio HTTP/1.1 client of serve_load.py) sends an
   open-loop mix at --rps: a request is due at its slot whether or not earlier ones answered, and
   its latency runs from the slot (a queue in the client or the server counts), over up to
   --max-connections keep-alive connections. The default mix (--mix) stands for a platform that
   sends its interaction events as they happen and asks for a slate per page view:
   recs 35 %, similar 10 %, single events 45 % (views, clicks, likes, ratings), explicit
   negative feedback 8 % (skip, dislike, block), item upserts 2 % (half of them new items).
4. Every --window-s (60 s) it records per window: achieved req/s, p50/p99 per route class,
   failures by status, the RSS of every process (master, each worker, the learner; /proc), and
   the model versions the workers serve (`GET /v1/stats` on fresh connections: hot-swaps seen).
5. At --outage-at of the run it stops PostgreSQL (`pg_ctlcluster 15 main stop -m fast`), waits
   --outage-s, starts it again, and records the 503s (each must carry a JSON body naming the
   cause), any other failure, and the time from PostgreSQL accepting connections again until the
   last 503.
6. At the end: every acknowledged write is looked up in PostgreSQL directly (events by id, items
   by id); RSS drift of each process (mean of the last window against the first after
   --warmup-min); p99 drift per class (first against last third of the run after warm-up; the
   outage lies in the middle third); a verdict per target. JSON (--out) and a PNG beside it.
   A failed request is one answered with anything but 200 (a 503 with its body during the outage
   excepted), one that timed out (--max-connections busy: a request waits for a connection, then
   has 30 s), or one still waiting for a connection 35 s after the last was sent.

--minutes shortens a trial; --no-outage skips the restart (it disturbs everyone using the
shared server for the outage's length).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import multiprocessing as mp
import os
import queue
import random
import shlex
import shutil
import signal
import subprocess
import sys
import threading
import time
import urllib.parse
import urllib.request
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from tqdm import tqdm

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "benchmarks"))

from serve_load import (Connection, HTTPError, free_port, git_commit, known_ids, latency_summary,  # noqa: E402
                        log_problems, percentile, prepare, server_args)

from liverec.evaluation.report import machine  # noqa: E402

CLASSES = ("recs", "similar", "events", "feedback", "items")
WRITES = ("events", "feedback", "items")
DEFAULT_MIX = "recs=0.35,similar=0.10,events=0.45,feedback=0.08,items=0.02"
POSITIVE = ("view", "view", "view", "click", "click", "like", "add_to_cart", "rating")
NEGATIVE = ("skip", "skip", "dislike", "block")
REQUEST_TIMEOUT_S = 30.0
RSS_TARGET = 0.10  # flat within 10 %
P99_TARGET = 0.20  # the last third's p99 at most 20 % above the first third's


# --------------------------------------------------------------------------------------------
# The load generator (its own process)
# --------------------------------------------------------------------------------------------

class Pool:
    """Keep-alive connections handed to one request at a time; a new one while fewer than
    ``cap`` exist, else the request waits for one (its latency, counted from its slot, shows it)."""

    IDLE_S = 30.0  # the server closes a keep-alive connection idle for 65 s (runtime.workers.KEEP_ALIVE_S): not reused past this

    def __init__(self, host: str, port: int, cap: int) -> None:
        self.host, self.port, self.cap = host, port, cap
        self.idle: list[tuple[Connection, float]] = []
        self.opened = 0
        self.waiters: asyncio.Queue[Connection] = asyncio.Queue()
        self.waiting = 0

    async def get(self) -> Connection:
        while self.idle:
            conn, since = self.idle.pop()
            if time.monotonic() - since < self.IDLE_S:
                return conn
            conn.close()  # reopened on its next request rather than racing the server's close
            return conn
        if self.opened < self.cap:
            self.opened += 1
            return Connection(self.host, self.port)
        self.waiting += 1
        try:
            return await self.waiters.get()
        finally:
            self.waiting -= 1

    def put(self, conn: Connection) -> None:
        if self.waiting:
            self.waiters.put_nowait(conn)
        else:
            self.idle.append((conn, time.monotonic()))


class Windows:
    """Per window and class: latencies of the answered requests (ms), statuses of the others;
    per second: answered and failed counts (the plot's finer line)."""

    def __init__(self, start: float, window_s: float) -> None:
        self.start, self.window_s = start, window_s
        self.lat: dict[int, dict[str, list[float]]] = {}
        self.status: dict[int, dict[str, int]] = {}
        self.per_s: dict[int, list[int]] = {}
        self.done_per_w: dict[int, int] = {}  # window -> 200s answered in it (by when they were answered)

    def add(self, slot: float, done: float, kind: str, status: int | str) -> None:
        w = int((slot - self.start) // self.window_s)
        sec = int(slot - self.start)
        counts = self.per_s.setdefault(sec, [0, 0, 0])  # ok, 503, other failures
        if status == 200:
            self.lat.setdefault(w, {}).setdefault(kind, []).append(1000.0 * (done - slot))
            counts[0] += 1
            answered = int((done - self.start) // self.window_s)
            self.done_per_w[answered] = self.done_per_w.get(answered, 0) + 1
        else:
            key = f"{kind}:{status}"
            self.status.setdefault(w, {})[key] = self.status.setdefault(w, {}).get(key, 0) + 1
            counts[1 if status == 503 else 2] += 1


def nice_autogroup(pid: int, nice: int) -> str:
    """Set the scheduler autogroup nice of ``pid``'s session; what /proc says afterwards (or why not)."""
    path = Path(f"/proc/{pid}/autogroup")
    try:
        path.write_text(str(nice))
        return path.read_text().strip()
    except OSError as exc:
        return f"not set: {exc}"


async def open_loop(spec: dict[str, Any], progress: Any, stop_flag: Any) -> dict[str, Any]:
    rng = random.Random(spec["seed"])
    users, items = spec["users"], spec["items"]
    kinds, weights = zip(*spec["mix"].items())
    interval = 1.0 / spec["rps"]
    start = spec["start_at"]
    end = start + spec["duration_s"]
    pool = Pool(spec["host"], spec["port"], spec["max_connections"])
    win = Windows(start, spec["window_s"])
    acked_events: list[str] = []
    acked_items: list[str] = []
    refused: list[dict[str, Any]] = []  # every 503: when, what, and its body
    failures: list[dict[str, Any]] = []  # every other non-200 (the first 200 kept in full)
    failure_count = 0
    new_items = 0
    tasks: set[asyncio.Task] = set()
    prefix = f"soak{int(start)}"

    def request(k: int) -> tuple[str, str, str, bytes | None, str | None]:
        nonlocal new_items
        kind = rng.choices(kinds, weights)[0]
        if kind == "recs":
            user = urllib.parse.quote(rng.choice(users), safe="")
            return kind, "GET", f"/v1/users/{user}/recommendations?n=10", None, None
        if kind == "similar":
            return kind, "GET", f"/v1/items/{urllib.parse.quote(rng.choice(items), safe='')}/similar?n=10", None, None
        if kind == "items":
            if rng.random() < 0.5:
                new_items += 1
                item = f"{prefix}-item-{new_items}"
            else:
                item = rng.choice(items)
            body = {"title": f"Item {item} rev {k}", "categories": [f"soak{k % 7}"]}
            return kind, "PUT", f"/v1/items/{urllib.parse.quote(item, safe='')}", json.dumps(body).encode(), item
        eid = f"{prefix}-{k}"
        etype = rng.choice(POSITIVE if kind == "events" else NEGATIVE)
        event: dict[str, Any] = {"event_id": eid, "user_id": rng.choice(users), "item_id": rng.choice(items), "type": etype,
                                 "timestamp": time.time()}
        if etype == "rating":
            event["value"] = float(rng.randint(1, 5))
        return kind, "POST", "/v1/events", json.dumps(event).encode(), eid

    async def one(k: int, slot: float) -> None:
        nonlocal failure_count
        kind, method, path, body, key = request(k)
        conn = await pool.get()
        history = conn.history()
        status: int | str
        try:
            async with asyncio.timeout(REQUEST_TIMEOUT_S):
                status, payload = await conn.request(method, path, body)
        except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, HTTPError, ValueError, TimeoutError) as exc:
            conn.close()
            status, payload = type(exc).__name__, b""
        pool.put(conn)
        done = time.time()
        win.add(slot, done, kind, status)
        if status == 200:
            if kind in ("events", "feedback"):
                ack = json.loads(payload)
                if ack.get("accepted") == 1:
                    acked_events.append(key)  # type: ignore[arg-type]
            elif kind == "items":
                acked_items.append(key)  # type: ignore[arg-type]
            return
        text = payload[:300].decode("utf-8", "replace")
        record = {"t": round(slot, 3), "done": round(done, 3), "kind": kind, "status": status, "body": text, **history}
        if status == 503:
            try:
                record["detail"] = json.loads(payload)["detail"]
            except (ValueError, KeyError, TypeError):
                record["detail"] = None  # a 503 without the JSON body: counted as a failure below
            refused.append(record)
        else:
            failure_count += 1
            if len(failures) < 200:
                failures.append(record)

    k = 0
    last_tick = 0.0
    while not stop_flag.is_set():
        slot = start + k * interval
        if slot >= end:
            break
        now = time.time()
        if slot > now:
            await asyncio.sleep(slot - now)
        task = asyncio.create_task(one(k, slot))
        tasks.add(task)
        task.add_done_callback(tasks.discard)
        k += 1
        if now - last_tick > 1.0:
            progress.put(("progress", {"elapsed": now - start, "sent": k, "connections": pool.opened, "in_flight": len(tasks)}))
            last_tick = now
    if tasks:
        await asyncio.wait(tasks, timeout=REQUEST_TIMEOUT_S + 5)
    # still queued in this client for a connection (a server far behind): never answered, so failed
    unanswered = len(tasks)
    for conn, _ in pool.idle:
        conn.close()
    return {"sent": k, "connections_opened": pool.opened, "acked_events": acked_events, "acked_items": acked_items,
            "refused": refused, "failures": failures, "failure_count": failure_count, "unanswered": unanswered,
            "lat": {str(w): v for w, v in win.lat.items()}, "status": {str(w): v for w, v in win.status.items()},
            "per_s": {str(s): v for s, v in win.per_s.items()},
            "done_per_w": {str(w): n for w, n in win.done_per_w.items()}}


def generator_main(spec: dict[str, Any], results: Any, stop_flag: Any) -> None:
    try:
        import uvloop

        runner: Any = uvloop.run
    except ImportError:
        runner = asyncio.run
    try:
        results.put(("result", runner(open_loop(spec, results, stop_flag))))
    except BaseException as exc:  # the orchestrator must learn of it rather than wait
        results.put(("error", f"{type(exc).__name__}: {exc}"))


# --------------------------------------------------------------------------------------------
# Orchestration
# --------------------------------------------------------------------------------------------

def rss_mb(pid: int) -> float | None:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024.0
    except OSError:
        return None
    return None


def children(pid: int) -> list[int]:
    """The worker processes of a server (its children, but multiprocessing's resource tracker)."""
    out = []
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            try:
                with open(f"/proc/{entry.name}/stat") as f:
                    stat = f.read()
            except OSError:
                continue
            if int(stat[stat.rfind(")") + 2:].split()[1]) == pid:
                try:
                    cmdline = Path(f"/proc/{entry.name}/cmdline").read_bytes()
                except OSError:
                    continue
                if b"resource_tracker" not in cmdline:
                    out.append(int(entry.name))
    return sorted(out)


def fresh_get(url: str, timeout: float = 5.0) -> tuple[int, dict[str, str], bytes]:
    req = urllib.request.Request(url, headers={"Connection": "close"})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, dict(r.headers), r.read()
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers), exc.read()
    except OSError:
        return 0, {}, b""


def copy_to_postgres(sqlite_dir: Path, pg_url: str) -> dict[str, Any]:
    """The prepared SQLite store's events and catalog into a fresh PostgreSQL schema."""
    from liverec.store import open_store

    t0 = time.perf_counter()
    src, dst = open_store(f"sqlite:///{sqlite_dir / 'liverec.db'}"), open_store(pg_url)
    try:
        items = list(src.catalog.scan())
        for k in range(0, len(items), 2_000):
            dst.catalog.upsert(items[k:k + 2_000])
        batch: list = []
        events = 0
        for _, event in src.events.scan():
            batch.append(event)
            if len(batch) == 20_000:
                events += len(dst.events.append(batch).accepted)
                batch = []
        events += len(dst.events.append(batch).accepted) if batch else 0
    finally:
        src.close()
        dst.close()
    return {"events": events, "items": len(items), "seconds": round(time.perf_counter() - t0, 1)}


def pg_ctl(action: str) -> tuple[float, str]:
    """Run `pg_ctlcluster 15 main ACTION` (stop in fast mode: open sessions are ended)."""
    cmd = ["pg_ctlcluster", "15", "main", action] + (["-m", "fast"] if action == "stop" else [])
    t0 = time.time()
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    if proc.returncode != 0:
        raise RuntimeError(f"{shlex.join(cmd)} failed: {proc.stderr.strip()}")
    return t0, shlex.join(cmd)


def pg_ready(timeout: float = 60.0) -> float | None:
    """Time when PostgreSQL answers a query again."""
    import psycopg

    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            with psycopg.connect("postgresql://127.0.0.1:5432/test", connect_timeout=1) as conn:
                conn.execute("SELECT 1")
            return time.time()
        except psycopg.Error:
            time.sleep(0.1)
    return None


class Outage:
    """Stop PostgreSQL, wait, start it: the times, in a thread beside the load."""

    def __init__(self, at: float, seconds: float) -> None:
        self.at, self.seconds = at, seconds
        self.record: dict[str, Any] = {}
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        try:
            time.sleep(max(0.0, self.at - time.time()))
            self.record["stop_at"], self.record["stop_cmd"] = pg_ctl("stop")
            self.record["stopped_at"] = time.time()
            time.sleep(self.seconds)
            self.record["start_at"], self.record["start_cmd"] = pg_ctl("start")
            self.record["ready_at"] = pg_ready()
        except Exception as exc:  # noqa: BLE001 - reported; the run goes on
            self.record["error"] = f"{type(exc).__name__}: {exc}"
            if "ready_at" not in self.record:
                subprocess.run(["pg_ctlcluster", "15", "main", "start"], capture_output=True)


def sample_processes(server: subprocess.Popen, learner: subprocess.Popen) -> dict[str, float]:
    out: dict[str, float] = {}
    for role, pid in [("master", server.pid), *[(f"worker-{p}", p) for p in children(server.pid)], ("learner", learner.pid)]:
        rss = rss_mb(pid)
        if rss is not None:
            out[role] = round(rss, 1)
    return out


def served_versions(url: str, tries: int = 4) -> dict[str, str]:
    """worker pid -> the model version it serves (fresh connections land on either worker)."""
    seen: dict[str, str] = {}
    for _ in range(tries):
        status, headers, body = fresh_get(f"{url}/v1/stats", timeout=3.0)
        if status == 200:
            model = json.loads(body).get("model") or {}
            worker = {k.lower(): v for k, v in headers.items()}.get("x-liverec-worker", "?")
            if model.get("version"):
                seen[worker] = model["version"]
    return seen


def summarise(gen: dict[str, Any], samples: list[dict[str, Any]], versions: list[dict[str, Any]], outage: dict[str, Any],
              args: argparse.Namespace, start: float) -> dict[str, Any]:
    n_windows = max(1, math.ceil(args.minutes * 60 / args.window_s))
    windows = []
    for w in range(n_windows):
        lat = gen["lat"].get(str(w), {})
        statuses = gen["status"].get(str(w), {})
        t0, t1 = start + w * args.window_s, start + (w + 1) * args.window_s
        ok = sum(len(v) for v in lat.values())
        rss = [s for s in samples if t0 <= s["t"] < t1]
        roles = sorted({r for s in rss for r in s["rss_mb"]})
        windows.append({
            "window": w, "t0_s": w * args.window_s,
            "achieved_rps": round(ok / args.window_s, 1),
            # by when they were answered: below the offered rate when a backlog builds up (what the
            # server served), where achieved_rps (by when they were due) catches up at the end
            "answered_rps": round(gen.get("done_per_w", {}).get(str(w), 0) / args.window_s, 1),
            "latency_ms": {k: {"n": len(v), "p50": _q(v, 0.5), "p99": _q(v, 0.99)} for k, v in sorted(lat.items())},
            "failures_by_status": statuses,
            "rss_mb": {r: round(sum(s["rss_mb"][r] for s in rss if r in s["rss_mb"]) / max(1, sum(r in s["rss_mb"] for s in rss)), 1)
                       for r in roles},
            "versions_served": sorted({v for s in versions if t0 <= s["t"] < t1 for v in s["by_worker"].values()}),
        })
    warm = min(int(args.warmup_min * 60 // args.window_s), n_windows - 1)
    # RSS drift: the last window against the first after warm-up, per process
    first, last = windows[warm]["rss_mb"], windows[-1]["rss_mb"]
    rss_drift = {r: round(last[r] / first[r] - 1.0, 4) for r in first if r in last}
    # p99 drift: first against last third of the windows after warm-up
    measured = list(range(warm, n_windows))
    third = max(1, len(measured) // 3)
    p99_drift = {}
    for kind in CLASSES:
        a = [x for w in measured[:third] for x in gen["lat"].get(str(w), {}).get(kind, [])]
        b = [x for w in measured[-third:] for x in gen["lat"].get(str(w), {}).get(kind, [])]
        if a and b:
            pa, pb = _q(a, 0.99), _q(b, 0.99)
            p99_drift[kind] = {"first_third_ms": pa, "last_third_ms": pb, "drift": round(pb / pa - 1.0, 4)}
    # 503s: expected while PostgreSQL is away (and until each connection notices it is back)
    refused = gen["refused"]
    down_from = outage.get("stop_at", math.inf)
    back_at = outage.get("ready_at") or outage.get("start_at") or math.inf
    grace_s = 30.0
    # by when they were answered: a request due before the stop but answered after it is refused too
    inside = [r for r in refused if down_from - 1 <= r["done"] <= back_at + grace_s and r["detail"]]
    outside = [r for r in refused if r not in inside]
    last_503 = max((r["done"] for r in inside), default=None)
    first_ok_after = None
    for s in sorted(gen["per_s"], key=int):
        t = start + int(s)
        if back_at != math.inf and t >= (last_503 or back_at) and gen["per_s"][s][0] > 0:
            first_ok_after = t
            break
    all_lat = {kind: [x for w in gen["lat"].values() for x in w.get(kind, [])] for kind in CLASSES}
    total_ok = sum(len(v) for v in all_lat.values())
    elapsed = args.minutes * 60
    failures = gen["failure_count"] + len(outside) + gen.get("unanswered", 0)
    return {
        "start_epoch": start,
        "windows": windows,
        "warmup_windows": warm,
        "overall": {"sent": gen["sent"], "answered_200": total_ok, "achieved_rps": round(total_ok / elapsed, 1),
                    "offered_rps": round(gen["sent"] / elapsed, 1), "connections_opened": gen["connections_opened"],
                    "latency_ms": {k: latency_summary([x / 1000.0 for x in v]) for k, v in all_lat.items() if v}},
        "failures": {"count": failures, "non_503": gen["failure_count"], "503_outside_outage_or_without_body": len(outside),
                     "unanswered_at_end": gen.get("unanswered", 0),
                     "examples": (gen["failures"] + outside)[:20]},
        "outage": {**outage, "refused_503": len(inside),
                   "refused_by_class": {k: sum(r["kind"] == k for r in inside) for k in CLASSES},
                   "example_503": inside[0] if inside else None,
                   "last_503_after_ready_s": round(last_503 - back_at, 2) if last_503 and back_at != math.inf else None,
                   "recovery_s": round(first_ok_after - back_at, 2) if first_ok_after and back_at != math.inf else None,
                   "last_503_after_start_cmd_s": round(last_503 - outage["start_at"], 2) if last_503 and "start_at" in outage else None,
                   "first_to_last_503_s": round(last_503 - min(r["done"] for r in inside), 2) if inside else None,
                   "window_s": round(back_at - down_from, 2) if back_at != math.inf and down_from != math.inf else None},
        "rss_drift": rss_drift,
        "p99_drift": p99_drift,
    }


def _q(values: list[float], q: float) -> float | None:
    value = percentile(sorted(values), q)
    return None if value is None else round(value, 2)


def verify_writes(pg_url: str, acked_events: list[str], acked_items: list[str]) -> dict[str, Any]:
    """Every acknowledged write, looked up in PostgreSQL directly."""
    from liverec.store.postgres import connect

    conn, _ = connect(pg_url, "")
    try:
        found_events = conn.execute("SELECT COUNT(*) FROM events WHERE app = 'default' AND event_id = ANY(%s)",
                                    (acked_events,)).fetchone()[0]
        found_items = conn.execute("SELECT COUNT(DISTINCT item_id) FROM items WHERE app = 'default' AND item_id = ANY(%s)",
                                   (sorted(set(acked_items)),)).fetchone()[0]
        soak_events = conn.execute("SELECT COUNT(*) FROM events WHERE app = 'default' AND event_id LIKE 'soak%%'").fetchone()[0]
        missing = [] if found_events == len(acked_events) else [r[0] for r in conn.execute(
            "SELECT e FROM unnest(%s::text[]) AS e WHERE e NOT IN (SELECT event_id FROM events WHERE app = 'default')",
            (acked_events,)).fetchmany(20)]
    finally:
        conn.close()
    return {"acked_events": len(acked_events), "acked_events_in_log": int(found_events),
            "acked_items": len(set(acked_items)), "acked_items_in_catalog": int(found_items),
            "soak_events_in_log": int(soak_events), "missing_examples": missing}


def plot(report: dict[str, Any], gen_per_s: dict[str, list[int]], samples: list[dict[str, Any]],
         swaps: list[dict[str, Any]], start: float, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(3, 1, figsize=(11, 10), sharex=True)
    minutes = lambda t: (t - start) / 60.0  # noqa: E731
    secs = sorted(int(s) for s in gen_per_s)
    bins = 10
    xs, ok, refused, failed = [], [], [], []
    for b in range(0, (secs[-1] if secs else 0) + 1, bins):
        counts = [gen_per_s.get(str(s), [0, 0, 0]) for s in range(b, b + bins)]
        xs.append((b + bins / 2) / 60.0)
        ok.append(sum(c[0] for c in counts) / bins)
        refused.append(sum(c[1] for c in counts) / bins)
        failed.append(sum(c[2] for c in counts) / bins)
    axes[0].plot(xs, ok, label="answered 200 (10 s bins)")
    axes[0].plot(xs, refused, label="503 (store away)")
    if any(failed):
        axes[0].plot(xs, failed, label="other failures", color="red")
    axes[0].axhline(report["settings"]["rps"], color="grey", ls=":", label="offered")
    axes[0].set_ylabel("req/s")
    for kind in CLASSES:
        pts = [(w["t0_s"] / 60 + 0.5, w["latency_ms"][kind]["p99"]) for w in report["windows"] if kind in w["latency_ms"]]
        if pts:
            axes[1].plot(*zip(*pts), marker="o", ms=3, label=kind)
    axes[1].set_ylabel("p99 per minute (ms)")
    axes[1].set_yscale("log")
    roles = sorted({r for s in samples for r in s["rss_mb"]})
    for role in roles:
        pts = [(minutes(s["t"]), s["rss_mb"][role]) for s in samples if role in s["rss_mb"]]
        axes[2].plot(*zip(*pts), label=role)
    axes[2].set_ylabel("RSS (MB)")
    axes[2].set_xlabel("minutes")
    outage = report["outage"]
    for ax in axes:
        if outage.get("stop_at") and outage.get("ready_at"):
            ax.axvspan(minutes(outage["stop_at"]), minutes(outage["ready_at"]), color="red", alpha=0.15,
                       label="PostgreSQL down" if ax is axes[0] else None)
        for k, s in enumerate(swaps):
            ax.axvline(minutes(s["t"]), color="green", alpha=0.3, lw=0.8, label="hot-swap seen" if ax is axes[0] and k == 0 else None)
        ax.legend(fontsize=7, loc="upper left", ncol=3)
        ax.grid(alpha=0.3)
    fig.suptitle(f"soak: {report['settings']['rps']:.0f} req/s offered, {report['settings']['minutes']:g} min, "
                 f"liverec serve --workers {report['settings']['workers']} on PostgreSQL")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    server_args(p, "../shared/data/ml-latest-small", 1)
    p.add_argument("--pg", default="postgresql://127.0.0.1:5432/test", help="PostgreSQL database (a fresh schema is made in it)")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--minutes", type=float, default=30.0)
    p.add_argument("--rps", type=float, default=300.0, help="offered requests per second, all classes together")
    p.add_argument("--mix", default=DEFAULT_MIX, help="share of each request class")
    p.add_argument("--max-connections", type=int, default=128)
    p.add_argument("--window-s", type=float, default=60.0)
    p.add_argument("--warmup-min", type=float, default=None, help="minutes left out of the drift figures (default: 10 %% of the run, at least 1)")
    p.add_argument("--outage-at", type=float, default=0.5, help="when PostgreSQL is restarted, as a share of the run")
    p.add_argument("--outage-s", type=float, default=10.0, help="seconds PostgreSQL stays stopped")
    p.add_argument("--no-outage", action="store_true")
    p.add_argument("--learner-interval", type=float, default=30.0)
    p.add_argument("--learner-min-events", type=int, default=500)
    p.add_argument("--learner-steps", type=int, default=20)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--keep", action="store_true", help="keep the run dir and the PostgreSQL schema")
    p.add_argument("--out", type=Path, help="JSON report (the PNG goes beside it)")
    args = p.parse_args(argv)
    args.prepare_liverec = args.liverec
    if args.warmup_min is None:
        args.warmup_min = max(1.0, 0.1 * args.minutes)
    mix = {}
    for part in args.mix.split(","):
        name, _, share = part.partition("=")
        if name.strip() not in CLASSES:
            p.error(f"--mix: unknown class {name!r}; expected some of {', '.join(CLASSES)}")
        mix[name.strip()] = float(share)
    args.mix = mix
    return args


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    args.work.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    stamp = datetime.now(timezone.utc).strftime("%Y%m%d%H%M%S")
    report: dict[str, Any] = {
        "benchmark": "soak",
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "command": shlex.join([sys.executable, *sys.argv]) if argv is None else shlex.join(argv),
        "machine": {**machine(), "loadavg_start": os.getloadavg()},
        "code": git_commit(ROOT),
        "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
    }
    prepared, report["prepared"] = prepare(args, env)
    run_dir = args.work / "runs" / f"soak-{stamp}"
    shutil.rmtree(run_dir, ignore_errors=True)
    shutil.copytree(prepared, run_dir)
    users, items = known_ids(run_dir)
    schema = f"soak_{stamp}"
    pg_url = f"{args.pg}?schema={schema}"
    report["store"] = {"url": pg_url, **copy_to_postgres(run_dir, pg_url)}
    print(f"store: {report['store']}", flush=True)
    log = run_dir / "serve.log"
    server = learner = None
    try:
        with open(log, "a") as out:
            server = subprocess.Popen([str(args.liverec), "serve", "--data-dir", str(run_dir), "--store", pg_url,
                                       "--workers", str(args.workers), "--port", str(port := free_port())],
                                      env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        url = f"http://127.0.0.1:{port}"
        t0 = time.time()
        while True:
            status, _, body = fresh_get(f"{url}/v1/health")
            if status == 200 and json.loads(body).get("warm_workers", 0) >= args.workers:
                break
            if server.poll() is not None or time.time() - t0 > 600:
                raise SystemExit(f"server did not start; see {log}")
            time.sleep(0.5)
        report["start_s"] = round(time.time() - t0, 1)
        learner_log = run_dir / "learn.log"
        with open(learner_log, "a") as out:
            learner = subprocess.Popen(
                ["nice", "-n", "10", str(args.liverec), "learn", "--data-dir", str(run_dir), "--store", pg_url,
                 "--interval", str(args.learner_interval), "--min-events", str(args.learner_min_events),
                 "--steps", str(args.learner_steps)],
                env={**env, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}, stdout=out, stderr=subprocess.STDOUT,
                start_new_session=True)
        # A new session is a scheduler autogroup of its own (Linux, sched_autogroup_enabled), and
        # nice counts only inside one: the group got a fair half of the CPU against the whole
        # server (75 % of a core in a 150 req/s run). Nice the group too.
        report["learner_autogroup"] = nice_autogroup(learner.pid, 10)
        duration = args.minutes * 60.0
        start = time.time() + 2.0
        spec = {"host": "127.0.0.1", "port": port, "users": users, "items": items, "mix": args.mix, "rps": args.rps,
                "start_at": start, "duration_s": duration, "window_s": args.window_s, "seed": args.seed,
                "max_connections": args.max_connections}
        ctx = mp.get_context("spawn")
        results, stop_flag = ctx.Queue(), ctx.Event()
        gen = ctx.Process(target=generator_main, args=(spec, results, stop_flag), daemon=True)
        gen.start()
        outage = None if args.no_outage else Outage(start + args.outage_at * duration, args.outage_s)
        if outage is not None:
            outage.thread.start()
        samples: list[dict[str, Any]] = []
        versions: list[dict[str, Any]] = []
        swaps: list[dict[str, Any]] = []
        served: dict[str, str] = {}
        bar = tqdm(total=round(duration), unit="s", desc="soak", bar_format="{desc} {bar} {n:.0f}/{total:.0f} s {postfix}")
        result = None
        next_sample = start
        polling = threading.Event()

        def poll_versions() -> None:  # beside the loop: a slow answer never stalls the sampling
            while not polling.wait(15.0):
                now = time.time()
                if now >= start + duration:
                    return
                seen = served_versions(url)
                versions.append({"t": now, "by_worker": seen})
                for worker, version in seen.items():
                    if served.get(worker) not in (None, version):
                        swaps.append({"t": now, "worker": worker, "from": served[worker], "to": version})
                    served[worker] = version

        poller = threading.Thread(target=poll_versions, daemon=True)
        poller.start()
        while result is None:
            try:
                kind, value = results.get(timeout=0.5)
            except queue.Empty:
                kind, value = None, None
                if not gen.is_alive():
                    raise RuntimeError(f"load generator died (exit code {gen.exitcode})")
            if kind == "progress":
                bar.update(min(value["elapsed"], duration) - bar.n)
                bar.set_postfix_str(f"conns {value['connections']} in flight {value['in_flight']}")
            elif kind == "error":
                raise RuntimeError(f"load generator failed: {value}")
            elif kind == "result":
                result = value
            now = time.time()
            if now >= next_sample:
                samples.append({"t": now, "rss_mb": sample_processes(server, learner)})
                next_sample = now + 10.0
        bar.close()
        polling.set()
        gen.join(10)
        if outage is not None:
            outage.thread.join(180)
        report["learner_alive"] = learner.poll() is None
        report["server_alive"] = server.poll() is None
        report["workers_at_end"] = children(server.pid)
        report.update(summarise(result, samples, versions, outage.record if outage else {}, args, start))
        report["hot_swaps"] = {"count": len(swaps), "versions_seen": sorted({v for s in versions for v in s["by_worker"].values()}),
                               "swaps": [{**s, "t_s": round(s["t"] - start, 1)} for s in swaps]}
        report["learner_updates"] = _learner_updates(learner_log)
        report["writes"] = verify_writes(pg_url, result["acked_events"], result["acked_items"])
        report["rss_samples"] = [{"t_s": round(s["t"] - start, 1), **s["rss_mb"]} for s in samples]
        report["verdict"] = verdict(report, args)
        report["server_log_problems"] = log_problems(log)
        out_path = args.out or ROOT / "benchmarks" / "results" / f"soak-{datetime.now(timezone.utc):%Y-%m-%d}.json"
        out_path.parent.mkdir(parents=True, exist_ok=True)
        out_path.write_text(json.dumps(report, indent=2))
        plot(report, result["per_s"], samples, swaps, start, out_path.with_suffix(".png"))
        print(json.dumps({k: report[k] for k in ("overall", "failures", "outage", "rss_drift", "p99_drift", "hot_swaps",
                                                 "writes", "verdict")}, indent=2, default=str)[:12000])
        print(f"wrote {out_path} and {out_path.with_suffix('.png')}")
        return report
    finally:
        for proc in (learner, server):
            if proc is not None and proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
                try:
                    proc.wait(30)
                except subprocess.TimeoutExpired:
                    os.killpg(proc.pid, signal.SIGKILL)
        if pg_ready(120) is None:
            print("PostgreSQL is not answering: start it with `pg_ctlcluster 15 main start`", file=sys.stderr)
        if not args.keep:
            from liverec.store import open_store

            try:
                store = open_store(pg_url)
                store.drop()
                store.close()
            except Exception as exc:  # noqa: BLE001
                print(f"dropping schema {schema} failed: {exc}", file=sys.stderr)
            shutil.rmtree(run_dir, ignore_errors=True)


def _learner_updates(path: Path) -> dict[str, Any]:
    updates = []
    unavailable = 0
    for line in path.read_text(errors="replace").splitlines() if path.exists() else []:
        try:
            doc = json.loads(line)
        except ValueError:
            continue
        if "store_unavailable" in doc:
            unavailable += 1
        elif isinstance(doc, dict) and "users" in doc:
            updates.append(doc)
    return {"tried": len(updates), "published": sum(1 for u in updates if u.get("version")),
            "steps_that_found_the_store_away": unavailable,
            "versions": [u["version"] for u in updates if u.get("version")]}


def verdict(report: dict[str, Any], args: argparse.Namespace) -> dict[str, Any]:
    out: dict[str, Any] = {}
    overall = report["overall"]
    # every window outside the outage answers at the offered rate (by when answers came: a server
    # that falls behind answers below it) and its p50 stays under a second (no backlog carried)
    steady = [w for i, w in enumerate(report["windows"]) if not _in_outage(i, report, args)]
    out["rate"] = {"target": f">= {args.rps:g} req/s offered, answered at that rate outside the outage",
                   "value": overall["achieved_rps"],
                   "answered_rps_min": min((w["answered_rps"] for w in steady), default=None),
                   "pass": overall["offered_rps"] >= 0.99 * args.rps
                   and all(w["answered_rps"] >= 0.97 * args.rps for w in steady)
                   and all(v["p50"] is None or v["p50"] < 1000.0 for w in steady for v in w["latency_ms"].values())}
    worst_rss = max(report["rss_drift"].items(), key=lambda kv: abs(kv[1]), default=(None, 0.0))
    out["rss_flat"] = {"target": f"every process within {RSS_TARGET:.0%}", "worst": worst_rss,
                       "pass": all(abs(v) <= RSS_TARGET for v in report["rss_drift"].values())}
    worst_p99 = max(report["p99_drift"].items(), key=lambda kv: kv[1]["drift"], default=(None, {"drift": 0.0}))
    out["p99_flat"] = {"target": f"last third's p99 at most {P99_TARGET:.0%} above the first third's, per class",
                       "worst": [worst_p99[0], worst_p99[1]["drift"]],
                       "pass": all(v["drift"] <= P99_TARGET for v in report["p99_drift"].values())}
    out["zero_failures"] = {"target": "0 failed requests (503 with a body while PostgreSQL is away excepted)",
                            "value": report["failures"]["count"], "pass": report["failures"]["count"] == 0}
    writes = report["writes"]
    out["nothing_lost"] = {"target": "every acknowledged write in the log",
                           "value": f"{writes['acked_events_in_log']}/{writes['acked_events']} events, "
                                    f"{writes['acked_items_in_catalog']}/{writes['acked_items']} items",
                           "pass": writes["acked_events_in_log"] == writes["acked_events"]
                           and writes["acked_items_in_catalog"] == writes["acked_items"]}
    out["hot_swaps"] = {"target": "the learner publishes versions the workers swap in", "value": report["hot_swaps"]["count"],
                        "pass": report["hot_swaps"]["count"] > 0}
    if not args.no_outage:
        o = report["outage"]
        out["outage"] = {"target": "503 with a body while down, recovery on its own, same processes",
                         "value": {"refused_503": o.get("refused_503"), "recovery_s": o.get("recovery_s")},
                         "pass": o.get("refused_503", 0) > 0 and o.get("recovery_s") is not None and report["server_alive"]
                         and report["learner_alive"]}
    out["all"] = all(v["pass"] for v in out.values())
    return out


def _in_outage(window: int, report: dict[str, Any], args: argparse.Namespace) -> bool:
    o = report["outage"]
    if not o.get("stop_at"):
        return False
    start = report["start_epoch"]
    t0, t1 = start + window * args.window_s, start + (window + 1) * args.window_s
    return t0 <= (o.get("ready_at") or o["stop_at"]) + 30 and t1 >= o["stop_at"]


if __name__ == "__main__":
    main()
