"""Memory probe: what each request class does to a serving process's resident size, in process.

    .venv/bin/python benchmarks/memory_probe.py --data ../shared/data/ml-latest-small \\
        --plan recs=300,mix=4000,mix=4000,items=600 [--trim] [--work bench-work] [--out probe.json]

A soak says *that* a worker grows; this says *which* requests make it grow, and whether the
growth is held (the folds) or only kept by the allocator (freed memory glibc has not given back).

1. Prepares (or reuses) the data dir benchmarks/serve_load.py prepares under --work (imported,
   a Transformer trained for --epochs and promoted), copies it to a scratch dir and builds the
   service there as a worker does (`build_service`, one PyTorch and BLAS thread per worker of
   --workers, the start-up freeze of the collector), in this process: no HTTP, no load generator,
   so phases are comparable and quick.
2. Runs the phases of --plan in order, each ``CLASS=N``: N requests of one class on random known
   users and items, as the soak sends them (recs, similar, events, feedback, items: an upsert,
   half of them new items) or ``mix`` (the soak's mix, --mix).
3. After each phase: a full collection (timed: how long a full pass of the cyclic collector holds
   the interpreter, which every request in flight waits out), the resident size
   (``/proc/self/statm``), the requests per second, and the objects the collector tracks; with --trim, one ``malloc_trim`` pass and the
   resident size after it (what the allocator held free); the most common types the collector
   tracks (``census``); with --tracemalloc, the source lines whose held allocations grew most
   over the phase (Python's tracemalloc: slower requests, exact attribution).

Prints a table, writes JSON (--out).
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import random
import shutil
import sys
import time
import tracemalloc
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "benchmarks"))

from serve_load import git_commit, known_ids, prepare, server_args  # noqa: E402
from soak import DEFAULT_MIX, NEGATIVE, POSITIVE  # noqa: E402

from liverec.config import Settings  # noqa: E402
from liverec.evaluation.report import machine  # noqa: E402
from liverec.memory import HeapTrimmer, census, freeze_long_lived, resident_bytes  # noqa: E402
from liverec.runtime.compose import build_service  # noqa: E402
from liverec.runtime.workers import share_cores  # noqa: E402

CLASSES = ("recs", "similar", "events", "feedback", "items", "mix")


def parse_plan(text: str) -> list[tuple[str, int]]:
    """``recs=300,mix=4000`` -> [("recs", 300), ("mix", 4000)]."""
    plan = []
    for part in text.split(","):
        name, _, n = part.strip().partition("=")
        if name not in CLASSES or not n.isdigit() or int(n) < 1:
            raise ValueError(f"--plan: {part!r}: expected CLASS=N with CLASS one of {', '.join(CLASSES)} and N >= 1")
        plan.append((name, int(n)))
    return plan


class Requests:
    """The soak's requests, called on the service directly."""

    def __init__(self, service: Any, users: list[str], items: list[str], mix: dict[str, float], seed: int) -> None:
        self.service, self.users, self.items = service, users, items
        self.kinds, self.weights = list(mix), list(mix.values())
        self.rng = random.Random(seed)
        self.k = 0

    def one(self, kind: str) -> None:
        self.k += 1
        rng, k = self.rng, self.k
        if kind == "mix":
            kind = rng.choices(self.kinds, self.weights)[0]
        if kind == "recs":
            self.service.recommend("default", rng.choice(self.users), 10)
        elif kind == "similar":
            self.service.similar("default", rng.choice(self.items), 10)
        elif kind == "items":
            item = f"probe-item-{k}" if rng.random() < 0.5 else rng.choice(self.items)
            self.service.put_item("default", item, {"title": f"Item {item} rev {k}", "categories": [f"soak{k % 7}"]})
        else:
            etype = rng.choice(POSITIVE if kind == "events" else NEGATIVE)
            event: dict[str, Any] = {"event_id": f"probe-{k}", "user_id": rng.choice(self.users), "item_id": rng.choice(self.items),
                                     "type": etype, "timestamp": time.time()}
            if etype == "rating":
                event["value"] = float(rng.randint(1, 5))
            self.service.ingest("default", [event], single=True)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    server_args(p, "../shared/data/ml-latest-small", 1)
    p.add_argument("--prepare-liverec", type=Path, default=Path(sys.executable).parent / "liverec")
    p.add_argument("--plan", default="recs=300,mix=4000,mix=4000,items=600")
    p.add_argument("--mix", default=DEFAULT_MIX)
    p.add_argument("--workers", type=int, default=2, help="threads as a worker of a server with this many workers")
    p.add_argument("--trim", action="store_true", help="a malloc_trim pass after each phase")
    p.add_argument("--tracemalloc", type=int, default=0, metavar="N",
                   help="trace allocations; per phase, the N source lines whose held memory grew most")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path)
    args = p.parse_args(argv)
    plan = parse_plan(args.plan)
    mix = {name: float(share) for name, share in (part.split("=") for part in args.mix.split(","))}
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    prepared, prepared_info = prepare(args, env)
    run_dir = args.work / "runs" / "memory-probe"
    shutil.rmtree(run_dir, ignore_errors=True)
    shutil.copytree(prepared, run_dir)
    users, items = known_ids(run_dir)
    share_cores(args.workers)
    service = build_service(Settings(data_dir=run_dir))
    service.start()
    service.wait_warm(600)
    freeze_long_lived()  # as a worker does once warm
    trimmer = HeapTrimmer(interval_s=0)
    requests = Requests(service, users, items, mix, args.seed)
    phases = []
    if args.tracemalloc:
        tracemalloc.start()
        traced = tracemalloc.take_snapshot()
    print(f"{'phase':>10} {'n':>6} {'MB before':>10} {'after':>8} {'trimmed':>8} {'KB/req':>8} {'req/s':>7} "
          f"{'tracked':>9} {'full pass ms':>12}")
    try:
        for kind, n in plan:
            before = resident_bytes()
            t0 = time.perf_counter()
            for _ in range(n):
                requests.one(kind)
            seconds = time.perf_counter() - t0
            gc.collect()  # the garbage of the phase; then a pass that only walks what is held
            t0 = time.perf_counter()
            gc.collect()
            full_pass = time.perf_counter() - t0
            after = resident_bytes()
            trimmed = after - trimmer.trim() if args.trim else None
            growth = []
            if args.tracemalloc:
                now = tracemalloc.take_snapshot()
                growth = [{"where": str(d.traceback[0]), "kb": d.size_diff / 1024, "blocks": d.count_diff}
                          for d in now.compare_to(traced, "lineno")[:args.tracemalloc]]
                traced = now
            row = {"phase": kind, "n": n, "rss_before_mb": before / 2**20, "rss_after_mb": after / 2**20,
                   "rss_trimmed_mb": None if trimmed is None else trimmed / 2**20,
                   "kb_per_request": ((trimmed if trimmed is not None else after) - before) / 1024 / n,
                   "requests_per_s": n / seconds, "tracked_objects": len(gc.get_objects()),
                   "full_pass_ms": full_pass * 1e3, "census": census(8), "grew_at": growth}
            phases.append(row)
            print(f"{kind:>10} {n:>6} {row['rss_before_mb']:>10.0f} {row['rss_after_mb']:>8.0f} "
                  f"{'-' if trimmed is None else f'{trimmed / 2**20:.0f}':>8} {row['kb_per_request']:>8.1f} "
                  f"{row['requests_per_s']:>7.0f} {row['tracked_objects']:>9} {row['full_pass_ms']:>12.1f}", flush=True)
            print(f"{'':>10} {row['census']}")
            for g in growth:
                print(f"{'':>10} {g['kb']:>+9.0f} KB {g['blocks']:>+8} blocks  {g['where']}")
    finally:
        service.close()
    report = {"benchmark": "memory_probe", "date": time.strftime("%Y-%m-%d"), "command": " ".join(sys.argv),
              "machine": machine(), "code": git_commit(ROOT), "prepared": prepared_info, "plan": args.plan, "mix": mix,
              "trim": args.trim, "phases": phases}
    if args.out:
        args.out.write_text(json.dumps(report, indent=2))
        print(f"wrote {args.out}")
    return report


if __name__ == "__main__":
    main()
