"""Restart time: folding the whole log vs. loading the newest snapshot of the folds, ML-1M.

    .venv/bin/liverec import movielens ../shared/data/ml-1m --data-dir /tmp/ml1m-snap   # once
    .venv/bin/python benchmarks/restart.py --data-dir /tmp/ml1m-snap \\
        [--out benchmarks/results/restart-2026-11-29.json]

Each start runs in a fresh process (as a restart does), with the co-occurrence scorer only, so
no model is loaded:

1. fold: the stored snapshot is cleared, then ``build_service(...).start()`` folds the whole log;
   then a snapshot is written (the time the follower's lock is held, the encoding outside it,
   the store write), and the lock-held time is measured again with a large delta in the
   counters (the log's last 100k events observed once more, in memory only);
2. restore: ``build_service(...).start()`` loads that snapshot and follows the log after it.

"serving" is the time from building the service to its first answered recommendation. Both
processes print a digest of their folds (user states, counters); the summary says whether they
are equal. Prints a JSON summary (and writes it with --out).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))


def digest(service) -> dict[str, str]:
    """Hashes of the folds: equal digests, equal user states and counters."""
    import orjson

    states = service.state.snapshot()
    state_hash = hashlib.sha256(orjson.dumps([[list(k), states[k]] for k in sorted(states)])).hexdigest()
    counters = hashlib.sha256()
    for app in sorted(service.store.events.apps()):
        ids, dense = service.baseline.matrix(app)
        pop = service.baseline.popularity(app)
        counters.update(orjson.dumps(ids))
        counters.update(dense.tobytes())
        counters.update(orjson.dumps([pop[i] for i in ids]))
    return {"state": state_hash[:16], "counters": counters.hexdigest()[:16]}


def phase(data_dir: str, name: str) -> dict:
    started = time.perf_counter()
    from liverec.config import Settings
    from liverec.runtime.compose import build_service
    from liverec.runtime.snapshots import SNAPSHOT_APP, SNAPSHOT_NAME, capture, write_snapshot
    from liverec.store import open_store

    imports_s = time.perf_counter() - started
    settings = Settings(data_dir=data_dir, scorer="cooccurrence", snapshot_interval_s=0)
    out: dict = {"imports_s": round(imports_s, 3)}
    if name == "fold":
        store = open_store(settings.store_url_resolved())
        store.snapshots.put(SNAPSHOT_APP, SNAPSHOT_NAME, b"")  # no usable snapshot: fold the whole log
        store.close()
    t0 = time.perf_counter()
    service = build_service(settings, watch_models=False)
    service.start()
    t1 = time.perf_counter()
    user = service.state.users("default")[0]
    service.recommend("default", user, n=10)
    t2 = time.perf_counter()
    out.update(start_s=round(t1 - t0, 3), serving_s=round(t2 - t0, 3), position=list(service.follower.position),
               users=service.state.count(), events=service.store.events.count())
    if name == "fold":
        out["write"] = write_snapshot(service).to_dict()
        out["digest"] = digest(service)
        model = service.baseline._apps["default"]
        out["counters"] = {"items": len(model.ids), "cells": int(model.base.nnz)}
        # The lock-held part again with a delta of live events in the counters.
        tail = [e for _, e in service.store.events.scan(after_seq=max(0, service.follower.event_seq - 100_000))]
        for event in tail:
            service.baseline.observe(event.app, event)
        held = [capture(service).lock_held_s for _ in range(5)]
        out["lock_held_with_delta"] = {"delta_cells": model.delta_cells, "observed_events": len(tail), "median_s": round(statistics.median(held), 5),
                                       "max_s": round(max(held), 5)}
    else:
        out["digest"] = digest(service)
    service.close()
    return out


def run_phase(data_dir: str, name: str) -> dict:
    done = subprocess.run([sys.executable, __file__, "--data-dir", data_dir, "--phase", name],
                          check=True, capture_output=True, text=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data-dir", required=True, help="A data dir holding the imported log.")
    parser.add_argument("--out", type=Path, help="Write the JSON summary here too.")
    parser.add_argument("--phase", choices=["fold", "restore"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.phase:
        print(json.dumps(phase(args.data_dir, args.phase)))
        return
    from liverec.evaluation.report import machine, now_iso

    fold = run_phase(args.data_dir, "fold")
    restore = run_phase(args.data_dir, "restore")
    write = fold["write"]
    summary = {
        "benchmark": "restart",
        "date": now_iso(),
        "machine": machine(),
        "data": {"events": fold["events"], "users": fold["users"], **fold["counters"], "position": fold["position"]},
        "a_full_fold": {"start_s": fold["start_s"], "serving_s": fold["serving_s"], "imports_s": fold["imports_s"]},
        "b_write_snapshot": {"total_s": round(write["total_s"], 3), "lock_held_s": round(write["lock_held_s"], 5),
                             "encode_s": round(write["encode_s"], 3), "put_s": round(write["put_s"], 3),
                             "bytes": write["bytes"], "lock_held_with_delta": fold["lock_held_with_delta"]},
        "c_start_from_snapshot": {"start_s": restore["start_s"], "serving_s": restore["serving_s"],
                                  "imports_s": restore["imports_s"], "position": restore["position"]},
        "same_folds": fold["digest"] == restore["digest"],
    }
    text = json.dumps(summary, indent=2)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
