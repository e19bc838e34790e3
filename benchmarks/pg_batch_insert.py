"""PostgreSQL batch inserts: what one append, item upsert or impression batch costs the calling
thread (CPU, ``time.thread_time``) and the caller (wall time), on a real server.

    .venv/bin/python benchmarks/pg_batch_insert.py [--pg postgresql://127.0.0.1:5432/test] [--n 2000]

An API worker runs these on every request that writes (an event: one append; a recommendation:
one impression batch of its slate), so their interpreter time is the worker's, taken from the
requests beside them. Each case runs --n times into a fresh schema (dropped afterwards); the
medians are printed and written as JSON (--out). To compare two versions of the code, run the
same command with each on ``PYTHONPATH`` (the script imports ``liverec`` from there first).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
import uuid
from pathlib import Path
from typing import Any, Callable

import psycopg

from liverec.events import Event
from liverec.ranking.impressions import Impression, PostgresImpressionLog
from liverec.store import Item, open_store


def timed(n: int, call: Callable[[int], None]) -> dict[str, float]:
    cpu, wall = [], []
    for k in range(n):
        c0, w0 = time.thread_time(), time.perf_counter()
        call(k)
        cpu.append(time.thread_time() - c0)
        wall.append(time.perf_counter() - w0)
    return {"cpu_us": statistics.median(cpu) * 1e6, "wall_us": statistics.median(wall) * 1e6}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--pg", default="postgresql://127.0.0.1:5432/test")
    p.add_argument("--n", type=int, default=2000, help="calls per case")
    p.add_argument("--out", type=Path)
    args = p.parse_args(argv)
    schema = f"bench_{uuid.uuid4().hex[:10]}"
    url = f"{args.pg}?schema={schema}"
    store = open_store(url)
    impressions = PostgresImpressionLog(url)
    now = time.time()

    def event(k: int, j: int = 0) -> Event:
        return Event("default", f"e{k}-{j}", f"u{k % 500}", "click", now + k, item_id=f"i{(k * 7 + j) % 3000}")

    def slate(k: int) -> list[tuple]:
        batch = [Impression(f"r{k}:{pos}", f"r{k}", "default", f"u{k % 500}", f"i{(k + pos) % 3000}", pos, now + k, 0.1,
                            False, "rank", event_seq=k, origin="bench") for pos in range(10)]
        return [(i.app, i.user_id, i.item_id, i.timestamp, json.dumps(i.to_dict(), separators=(",", ":")),  # built the same way for every version compared
                 i.impression_id, i.request_id, i.position, i.event_seq, i.origin, None, i.experiment, i.variant)
                for i in batch]

    cases = {
        "append 1 event": lambda k: store.events.append([event(k)]),
        "append 100 events": lambda k: store.events.append([event(k + 10**6, j) for j in range(100)]),
        "upsert 1 item": lambda k: store.catalog.upsert([Item("default", f"i{k}", f"Item {k}", categories=("a", "b"))]),
        "insert 10 impressions": lambda k: impressions._insert("", slate(k)),
    }
    results = {}
    try:
        for name, call in cases.items():
            n = args.n // 10 if "100" in name else args.n
            results[name] = timed(n, call)
            print(f"{name:>24}: {results[name]['cpu_us']:8.0f} us CPU  {results[name]['wall_us']:8.0f} us wall (median of {n})")
    finally:
        impressions.close()
        store.close()
        with psycopg.connect(args.pg, autocommit=True) as conn:
            conn.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE")
    import liverec
    report = {"benchmark": "pg_batch_insert", "date": time.strftime("%Y-%m-%d"), "command": " ".join(sys.argv),
              "liverec": str(Path(liverec.__file__).parent), "cases": results}
    if args.out:
        args.out.write_text(json.dumps(report, indent=2))
    return report


if __name__ == "__main__":
    main()
