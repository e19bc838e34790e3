"""`liverec evaluate events` on every dataset in ../shared/data, then one table.

Each dataset runs as its own `liverec evaluate events` process (default recipe, per-dataset
selection included, every baseline in the same run), under `flock /tmp/liverec-bench.lock` for
that dataset only, so other heavy jobs can run between datasets. The Transformer's training
budget is `--budget` seconds (selection trials included); the plain SASRec baseline gets the same
budget and the set-metric models `future_share` of it. Reports go to
benchmarks/results/every_dataset/<dataset>.json (+ .md); a dataset whose report exists is not run
again unless --force. The table (markdown) goes to benchmarks/results/every_dataset.md.

    .venv/bin/python benchmarks/every_dataset.py --budget 120 --threads 2

ML-1M is measured by `liverec evaluate movielens` at its 45-minute budget (docs/benchmarks.md).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

#: (name, events file, items file) relative to the data directory.
DATASETS = [  # smallest first
    ("ml-latest-small", "ml-latest-small/ratings.csv", "ml-latest-small/movies.csv"),
    ("steam", "genrec-steam-100000/interactions.csv.gz", "genrec-steam-100000/item_titles.csv.gz"),
    ("amazon2014-toy", "genrec-amazon2014-toy/interactions.csv.gz", "genrec-amazon2014-toy/item_titles.csv.gz"),
    ("amazon2014-clothing", "genrec-amazon2014-clothing/interactions.csv.gz",
     "genrec-amazon2014-clothing/item_titles.csv.gz"),
    ("amazon2014-health", "genrec-amazon2014-health/interactions.csv.gz",
     "genrec-amazon2014-health/item_titles.csv.gz"),
    ("amazon2018-game", "genrec-amazon2018-game/interactions.csv.gz", "genrec-amazon2018-game/item_titles.csv.gz"),
    ("amazon2014-book", "genrec-amazon2014-book-1000000/interactions.csv.gz",
     "genrec-amazon2014-book-1000000/item_titles.csv.gz"),
    ("food", "genrec-food/interactions.csv.gz", "genrec-food/item_titles.csv.gz"),
]


def run_one(name: str, events: Path, items: Path, out: Path, budget: float, threads: int, seed: int,
            lock: str | None) -> float:
    recipe = json.dumps({"time_budget_s": budget})
    liverec = shutil.which("liverec") or str(Path(sys.executable).with_name("liverec"))
    cmd = [liverec, "evaluate", "events", str(events), "--items", str(items), "--out", str(out),
           "--seed", str(seed), "--threads", str(threads), "--recipe", recipe,
           "--text-cache", str(out.parent / ".liverec-text-cache")]
    if lock:
        cmd = ["flock", lock, *cmd]
    t0 = time.perf_counter()
    with open(out.with_suffix(".log"), "w") as logf:
        rc = subprocess.run(cmd, stdout=logf, stderr=subprocess.STDOUT, env=os.environ.copy()).returncode
    if rc != 0:
        raise SystemExit(f"{name}: liverec exited {rc}; see {out.with_suffix('.log')}")
    return time.perf_counter() - t0


def _threads(report: dict) -> str:
    """The --threads of the run that wrote ``report`` (from its command line)."""
    parts = report.get("command", "").split()
    return parts[parts.index("--threads") + 1] if "--threads" in parts[:-1] else "?"


def table(reports: dict[str, dict]) -> str:
    """One row per dataset: the Transformer against its best baseline (by NDCG@10, all items)."""
    head = ("| dataset | users / items / events | Transformer NDCG@10 | HR@10 | train s | SASRec NDCG@10 (HR@10, train s) "
            "| best other baseline NDCG@10 | Transformer - best baseline | F1@10 last 5 (best baseline) | RMSE (SVD) |")
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for name, r in reports.items():
        ds, v = r["dataset"], r["variants"]["all_items"]
        base = r.get("baselines", {})
        sas = base.get("sasrec", {})
        others = {k: b["all_items"]["NDCG@10"] for k, b in base.items() if k != "sasrec"}
        every = {**others, **({"sasrec": sas["all_items"]["NDCG@10"]} if sas else {})}
        best_name = max(every, key=every.__getitem__) if every else "-"
        best_other = max(others, key=others.__getitem__) if others else "-"
        margin = v["NDCG@10"] - every[best_name] if every else float("nan")
        sets = r.get("set_metrics", {})
        set_base = max((b["all_items"]["F1@10"] for b in sets.get("baselines", {}).values()), default=float("nan"))
        rating = r.get("rating")
        rmse = f"{rating['RMSE']:.3f} ({rating['baselines']['svd']['RMSE']:.3f})" if rating and "baselines" in rating else "-"
        sas_cell = (f"{sas['all_items']['NDCG@10']:.4f} ({sas['all_items']['HR@10']:.4f}, {sas['train_seconds']:.0f})"
                    if sas else "-")
        lines.append(
            f"| {name} | {ds['users']:,} / {ds['items']:,} / {ds['events']:,} | **{v['NDCG@10']:.4f}** | {v['HR@10']:.4f} "
            f"| {r['train_seconds']:.0f} ({_threads(r)} thr) | {sas_cell} | {best_other} {others.get(best_other, float('nan')):.4f} "
            f"| {margin:+.4f} vs {best_name} | {sets.get('F1@10', float('nan')):.4f} ({set_base:.4f}) | {rmse} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data")
    ap.add_argument("--out-dir", type=Path, default=ROOT / "benchmarks" / "results" / "every_dataset")
    ap.add_argument("--budget", type=float, default=120.0, help="Transformer (and SASRec) training seconds per dataset")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--only", nargs="*", help="dataset names to run (default: all)")
    ap.add_argument("--force", action="store_true", help="run again even where a report exists")
    ap.add_argument("--lock", default="/tmp/liverec-bench.lock", help="flock file per dataset ('' = none)")
    args = ap.parse_args()
    args.out_dir.mkdir(parents=True, exist_ok=True)
    reports: dict[str, dict] = {}
    for name, ev, it in DATASETS:
        out = args.out_dir / f"{name}.json"
        if (args.only is None or name in args.only) and (args.force or not out.exists()):
            secs = run_one(name, args.data / ev, args.data / it, out, args.budget, args.threads, args.seed, args.lock or None)
            print(f"{name}: {secs:.0f}s", flush=True)
        if out.exists():
            reports[name] = json.loads(out.read_text())
    text = table(reports)
    budgets = sorted({r["recipe"].get("time_budget_s") for r in reports.values()})
    (args.out_dir.parent / "every_dataset.md").write_text(
        f"Training budget per dataset (s, selection included; SASRec the same): {budgets}.\n\n" + text)
    print(text)


if __name__ == "__main__":
    main()
