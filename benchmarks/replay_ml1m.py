"""Prequential replay on ML-1M without the CLI's service dependencies (for GPU machines).

Same code path as ``liverec replay movielens PATH --out replay.json``:

    PYTHONPATH=src python benchmarks/replay_ml1m.py --data /work/shared/data/ml-1m --out replay.json \\
        --device cuda --no-rtrec --save-model ml1m_train80.safetensors
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from liverec.evaluation.replay import ReplayConfig, run_replay, write
from liverec.learning.finetune import FineTuneConfig


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", type=Path, required=True)
    ap.add_argument("--out", type=Path, default=Path("replay.json"))
    ap.add_argument("--max-events", type=int, default=None)
    ap.add_argument("--user-stride", type=int, default=1)
    ap.add_argument("--cadence", type=int, default=5000)
    ap.add_argument("--steps", type=int, default=60)
    ap.add_argument("--lr", type=float, default=1e-4)
    ap.add_argument("--epochs", type=int, default=30)
    ap.add_argument("--train-budget", type=float, default=600.0)
    ap.add_argument("--model", type=Path, default=None)
    ap.add_argument("--save-model", type=Path, default=None)
    ap.add_argument("--replay-ratio", type=float, default=0.5)
    ap.add_argument("--recent", choices=["events", "windows"], default="events")
    ap.add_argument("--passes", type=float, default=1.0)
    ap.add_argument("--no-rtrec", action="store_true")
    ap.add_argument("--rtrec-parallel", action="store_true")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    cfg = ReplayConfig(max_events=args.max_events, user_stride=args.user_stride, cadence=args.cadence,
                       epochs=args.epochs, train_budget_s=args.train_budget, rtrec=not args.no_rtrec,
                       rtrec_parallel=args.rtrec_parallel, device=args.device, seed=args.seed,
                       recent=args.recent, passes=args.passes,
                       finetune=FineTuneConfig(steps=args.steps, lr=args.lr, replay_ratio=args.replay_ratio))
    summary = run_replay(args.data, cfg, args.out.parent, log=lambda m: print(m, flush=True),
                         model_path=args.model, save_to=args.save_model)
    write(summary, args.out)
    print(json.dumps({k: summary[k] for k in ("online", "frozen", "rtrec", "events", "events_per_second", "online_vs_frozen") if k in summary}, indent=2))


if __name__ == "__main__":
    main()
