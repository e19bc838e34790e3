"""Data-parallel training on ML-1M: one process against N processes at the same number of epochs.

Each variant runs the offline protocol (:func:`liverec.evaluation.offline.evaluate_log`, the
reported recipe with ``--epochs`` in place of its 50, no baselines) with ``nproc`` training
processes: the same global batch, seed and schedule. Reported per variant: validation NDCG@10
(all items, the best checked epoch: the model-selection figure), test NDCG@10, wall time of the
whole run and of the training loop; then the difference of the validation figures against the
target (|diff| <= 0.005).

    flock /tmp/liverec-bench.lock .venv/bin/python benchmarks/ddp_train.py --data ../shared/data/ml-1m \\
        --epochs 8 --text-cache CACHE --out benchmarks/results/ddp_train-DATE.json

One process gets every core as PyTorch threads, each of N processes cores // N. On a machine
with few cores N processes are no speed-up (the same arithmetic on the same cores, plus a
gradient all-reduce every step): the run checks that the result is the same.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
import time
from pathlib import Path
from typing import Any

import torch

from liverec.evaluation.offline import DEFAULT_RECIPE, evaluate_log
from liverec.evaluation.protocol import load_movielens
from liverec.evaluation.report import machine, now_iso
from liverec.model.distributed import Launch

TARGET_DIFF = 0.005


def run_variant(log: Any, nproc: int, epochs: int, text_cache: str | None, seed: int) -> dict[str, Any]:
    cores = len(os.sched_getaffinity(0))
    torch.set_num_threads(cores)  # one process: every core; the ranks set their own (cores // nproc)
    t0 = time.perf_counter()
    report, _ = evaluate_log(log, {"epochs": epochs}, seed=seed, text_cache=text_cache, baselines=False,
                             progress=False, log_fn=lambda s: print(f"[nproc={nproc}] {s}", file=sys.stderr, flush=True),
                             launch=Launch(nproc=nproc))
    wall = time.perf_counter() - t0
    return {
        "nproc": nproc,
        "threads_per_process": max(1, cores // nproc),
        "val_NDCG@10": report["validation"]["NDCG@10"],
        "val_HR@10": report["validation"]["HR@10"],
        "test_NDCG@10": report["variants"]["all_items"]["NDCG@10"],
        "test_HR@10": report["variants"]["all_items"]["HR@10"],
        "best_epoch": report["best_epoch"],
        "epochs_run": report["epochs_run"],
        "train_seconds": report["train_seconds"],
        "wall_seconds": round(wall, 1),
        "history": report["history"],
    }


def markdown(doc: dict[str, Any]) -> str:
    rows = doc["variants"]
    lines = [
        f"# Data-parallel training on ML-1M, {doc['date']}",
        "",
        f"`{doc['command']}`",
        "",
        f"Machine: {doc['machine']['cpu']}, {doc['machine']['cores']} cores. Recipe: `DEFAULT_RECIPE` with "
        f"{doc['epochs']} epochs (of 50: the reduced count fits ~10-15 minutes per variant on 2 cores).",
        "",
        "| processes | threads each | val NDCG@10 (all items) | val HR@10 | test NDCG@10 | best epoch | train s | wall s | s per epoch |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in rows:
        lines.append(f"| {r['nproc']} | {r['threads_per_process']} | {r['val_NDCG@10']:.4f} | {r['val_HR@10']:.4f} | "
                     f"{r['test_NDCG@10']:.4f} | {r['best_epoch']} | {r['train_seconds']:.0f} | {r['wall_seconds']:.0f} | "
                     f"{' / '.join(f'{x:.0f}' for x in epoch_seconds(r['history']))} |")
    lines += ["", f"Validation NDCG@10 difference (N - 1 process): **{doc['val_ndcg_diff']:+.4f}** "
                  f"(target |diff| <= {TARGET_DIFF}: {'met' if doc['target_met'] else 'not met'})."]
    if doc.get("note"):
        lines += ["", f"Note: {doc['note']}"]
    return "\n".join(lines) + "\n"


def epoch_seconds(history: list[dict[str, float]]) -> list[float]:
    """Seconds of each epoch's training steps (the history records the time at each epoch's end,
    after the previous epoch's validation)."""
    ends = [h["seconds"] for h in history]
    return [b - a for a, b in zip([0.0, *ends], ends)]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", required=True, help="ML-1M directory")
    ap.add_argument("--epochs", type=int, default=8, help="epochs of every variant (the recipe's 50 take ~35 min)")
    ap.add_argument("--nproc", type=int, default=2, help="processes of the parallel variant")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--text-cache", default=None, help="directory caching the MiniLM item vectors")
    ap.add_argument("--out", required=True, help="JSON result (a .md summary is written beside it)")
    ap.add_argument("--note", default="", help="a remark kept with the result (e.g. what else ran on the machine)")
    args = ap.parse_args()
    log = load_movielens(args.data)
    variants = []
    for nproc in (1, args.nproc):
        print(f"== {nproc} process(es), {args.epochs} epochs", file=sys.stderr, flush=True)
        variants.append(run_variant(log, nproc, args.epochs, args.text_cache, args.seed))
    diff = variants[1]["val_NDCG@10"] - variants[0]["val_NDCG@10"]
    doc = {
        "benchmark": "ddp_train",
        "date": now_iso(),
        "command": " ".join(shlex.quote(a) for a in [".venv/bin/python", *sys.argv]),
        "machine": machine(),
        "dataset": args.data,
        "epochs": args.epochs,
        "recipe": {**DEFAULT_RECIPE, "epochs": args.epochs},
        "variants": variants,
        "val_ndcg_diff": round(diff, 5),
        "target_abs_diff": TARGET_DIFF,
        "target_met": abs(diff) <= TARGET_DIFF,
        "note": args.note,
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(doc, indent=2))
    out.with_suffix(".md").write_text(markdown(doc))
    print(markdown(doc))


if __name__ == "__main__":
    main()
