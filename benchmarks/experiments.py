"""What a running experiment adds to a recommendation request, in process.

    flock /tmp/liverec-bench.lock .venv/bin/python benchmarks/experiments.py [--n 3000] [--out FILE]

One service (SQLite in a temporary data dir, the co-occurrence scorer, full ranking stages)
serves three apps with the same synthetic catalog (20 categories x 100 items) and history
(2,000 users): ``none`` without an experiment, ``split`` with a two-variant split experiment
whose variants change nothing (so the difference is the experiment's own work: the hash, the
variant's request, the tags), and ``interleave`` with a two-ranker interleaving experiment (both
rankers rank: the price of interleaving). Requests for random known users alternate between the
apps in batches of 50, so drift hits all alike. Then the read-out: ``GET
/v1/experiments/{id}``'s work (fold the new impressions, the summary) after the run.

Medians and p99 in milliseconds; prints JSON (and writes it with --out).
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from liverec.config import Settings  # noqa: E402
from liverec.evaluation.report import machine  # noqa: E402
from liverec.evaluation.simulate import synthetic_world  # noqa: E402
from liverec.experiments.metrics import ExperimentFold  # noqa: E402
from liverec.runtime.compose import build_service  # noqa: E402


def summary(samples: list[float]) -> dict[str, float]:
    samples = sorted(samples)
    return {"p50_ms": round(samples[len(samples) // 2], 4), "p99_ms": round(samples[int(len(samples) * 0.99)], 4),
            "mean_ms": round(statistics.fmean(samples), 4), "n": len(samples)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=3000, help="requests per condition")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()

    world = synthetic_world(n_categories=20, per_category=100, n_background=2000, seed=0)
    service = build_service(Settings(data_dir=tempfile.mkdtemp(), scorer="cooccurrence", snapshot_interval_s=0))
    service.start()
    items = [{"item_id": m, "title": t, "categories": c} for m, t, c in zip(world.item_ids, world.titles, world.categories)]
    apps = {"none": None, "split": "split", "interleave": "interleave"}
    experiments = {}
    for app, kind in apps.items():
        service.upsert_items(app, items)
        for s in range(0, len(world.history), 5000):
            service.ingest(app, world.history[s:s + 5000])
        if kind is not None:
            experiments[app] = service.experiments.create(app, f"bench-{kind}", kind, [{"name": "A"}, {"name": "B"}])["experiment_id"]
    users = sorted({e["user_id"] for e in world.history})
    rng = random.Random(0)
    for app in apps:  # warm-up
        for _ in range(100):
            service.recommend(app, rng.choice(users))
    times: dict[str, list[float]] = {app: [] for app in apps}
    order = list(apps)
    while min(len(t) for t in times.values()) < args.n:
        rng.shuffle(order)
        for app in order:
            for _ in range(50):
                user = rng.choice(users)
                start = time.perf_counter()
                out = service.recommend(app, user)
                times[app].append((time.perf_counter() - start) * 1000)
                assert (app == "none") == ("experiment" not in out)
    reads = {}
    for app, exp_id in experiments.items():
        samples = []
        for _ in range(20):
            start = time.perf_counter()
            view = service.experiments.view(app, exp_id)
            samples.append((time.perf_counter() - start) * 1000)
        reads[app] = {**summary(samples), "impressions": sum(v["impressions"] for v in view["variants"])}
    # the fold's own cost per tagged impression: read from the log (column filter, JSON decode) and folded
    live = service.experiments
    live.impressions.flush()
    fresh = ExperimentFold()
    for exp in live._all.values():
        fresh.register(exp)
    start = time.perf_counter()
    rows = live._tagged(0, live.impressions.head())
    read_s = time.perf_counter() - start
    fresh.impressions(rows)
    fold_s = time.perf_counter() - start - read_s
    start = time.perf_counter()
    live.stop()  # a start's rebuild of the fold from the two logs
    live.start()
    rebuild_s = time.perf_counter() - start
    service.close()
    result = {
        "benchmark": "experiments", "date": time.strftime("%Y-%m-%d"), "machine": machine(),
        "catalog_items": len(world.item_ids), "history_events": len(world.history),
        "recommend": {app: summary(t) for app, t in times.items()},
        "added_p50_ms": {app: round(summary(times[app])["p50_ms"] - summary(times["none"])["p50_ms"], 4)
                         for app in ("split", "interleave")},
        "read_out": reads, "fold_rebuild_s": round(rebuild_s, 3), "tagged_impressions": len(rows),
        "read_us_per_impression": round(1e6 * read_s / max(len(rows), 1), 2),
        "fold_us_per_impression": round(1e6 * fold_s / max(len(rows), 1), 2),
    }
    text = json.dumps(result, indent=2)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")


if __name__ == "__main__":
    main()
