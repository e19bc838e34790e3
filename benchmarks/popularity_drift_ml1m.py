"""How much item popularity drifts over ML-1M's replay window (the last 20% of ratings by time).

For every window event, two popularity rankings are scored (HR@k of the event's item, nothing
filtered): the training period's counts, frozen at the cut, and counts that keep following the
stream with an exponential half-life (in events). Reported per fifth of the window: where the
recent ranking finds the next item more often than the frozen one, a model whose item bias can
follow the stream has something to gain over one frozen at the cut.

    .venv/bin/python benchmarks/popularity_drift_ml1m.py --data ../shared/data/ml-1m --out drift.json
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
from pathlib import Path

import numpy as np
from tqdm import tqdm

from liverec.evaluation.protocol import load_movielens
from liverec.evaluation.replay import make_stream


def hits(scores: np.ndarray, targets: np.ndarray, k: int) -> np.ndarray:
    """(B,) 1.0 where the target (0-based) is among the ``k`` highest ``scores``."""
    rank = np.empty(len(scores), dtype=np.int64)
    rank[np.argsort(-scores, kind="stable")] = np.arange(len(scores))
    return (rank[targets] < k).astype(np.float64)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", type=Path, required=True, help="ML-1M folder")
    ap.add_argument("--train-frac", type=float, default=0.8)
    ap.add_argument("--half-life", type=float, default=5000.0, help="half-life of the recent counts, in events")
    ap.add_argument("--k", type=int, default=50)
    ap.add_argument("--block", type=int, default=500, help="events scored between count refreshes")
    ap.add_argument("--out", type=Path, default=Path("popularity_drift.json"))
    args = ap.parse_args()

    log = load_movielens(args.data)
    s = make_stream(log, args.train_frac)
    items = log.seqs.items.astype(np.int64) - 1
    train = s.order[: s.cut]
    window = s.order[s.cut:]
    frozen = np.bincount(items[train], minlength=log.n_items).astype(np.float64)
    decay = 0.5 ** (1.0 / args.half_life)
    recent = np.zeros(log.n_items)
    for e in train[-int(10 * args.half_life):]:  # warm start from the end of the training period
        recent *= decay
        recent[items[e]] += 1.0
    got = {"frozen": np.empty(len(window)), "recent": np.empty(len(window))}
    for a in tqdm(range(0, len(window), args.block), desc="window", unit="block"):
        blk = window[a:a + args.block]
        got["frozen"][a:a + len(blk)] = hits(frozen, items[blk], args.k)
        got["recent"][a:a + len(blk)] = hits(recent, items[blk], args.k)
        for e in blk:
            recent *= decay
            recent[items[e]] += 1.0
    ts = log.seqs.timestamps[window]
    fifths = np.array_split(np.arange(len(window)), 5)
    out = {
        "k": args.k, "half_life_events": args.half_life, "window_events": int(len(window)),
        "fifths": [{
            "from": str(dt.datetime.fromtimestamp(float(ts[f[0]]), dt.timezone.utc).date()),
            "to": str(dt.datetime.fromtimestamp(float(ts[f[-1]]), dt.timezone.utc).date()),
            f"frozen_HR@{args.k}": round(float(got["frozen"][f].mean()), 4),
            f"recent_HR@{args.k}": round(float(got["recent"][f].mean()), 4),
        } for f in fifths],
        f"frozen_HR@{args.k}": round(float(got["frozen"].mean()), 4),
        f"recent_HR@{args.k}": round(float(got["recent"].mean()), 4),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=2))
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
