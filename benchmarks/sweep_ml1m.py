"""Recipe search on the ML-1M protocol: train several configurations, report validation + test.

Model selection uses the validation figures only; test figures are printed for the record.

    python benchmarks/sweep_ml1m.py --data ../shared/data/ml-1m --configs '[{"d_model": 64}]'

Each config is a dict of :class:`ModelConfig` and :class:`TrainConfig` field overrides, plus
``"text": true`` to use the MiniLM item text vectors (``--text-cache`` directory).
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import fields
from pathlib import Path

import numpy as np
import torch

from liverec.evaluation.protocol import leave_one_out, load_movielens
from liverec.model.text import MINILM_DIM, MiniLMEncoder, text_matrix
from liverec.model.train import TrainConfig, ValidationSet, evaluate_windows, train
from liverec.model.transformer import ModelConfig


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", required=True)
    ap.add_argument("--configs", required=True, help="JSON list of override dicts")
    ap.add_argument("--text-cache", default=None)
    ap.add_argument("--out", default=None)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = ap.parse_args()
    log = load_movielens(args.data)
    split = leave_one_out(log)
    mfields = {f.name for f in fields(ModelConfig)}
    tfields = {f.name for f in fields(TrainConfig)}
    results = []
    for conf in json.loads(args.configs):
        conf = dict(conf)
        use_text = bool(conf.pop("text", False))
        mc = ModelConfig(n_items=log.n_items, text_dim=MINILM_DIM if use_text else 0,
                         **{k: v for k, v in conf.items() if k in mfields})
        tc = TrainConfig(device=args.device, **{k: v for k, v in conf.items() if k in tfields})
        item_text = text_matrix(log.item_texts, MiniLMEncoder(), args.text_cache) if use_text else None
        t0 = time.time()
        res = train(mc, tc, split.train, ValidationSet(split.valid_windows, split.valid_targets),
                    item_text=item_text, progress=False,
                    log=lambda s: print("   ", s, flush=True) if "val_" in s else None)
        secs = time.time() - t0
        out = {"config": conf, "text": use_text, "best_epoch": res.best_epoch, "epochs": res.epochs_run,
               "seconds": round(secs, 1), "val": res.best_metrics}
        for variant, filt in (("all_items", False), ("seen_filtered", True)):
            out[variant] = evaluate_windows(res.model, split.test_windows, split.test_targets, filter_seen=filt, device=args.device)
        if res.model.cfg.repeat_term:
            out["rep_type_rating"] = float(res.model.rep_type[5])
            out["rep_value"] = [round(float(x), 3) for x in res.model.rep_value.detach().cpu()]
        print(json.dumps({k: (round(v, 4) if isinstance(v, float) else v) for k, v in {
            "config": conf, "text": use_text, "best_epoch": res.best_epoch, "epochs": res.epochs_run, "sec": round(secs),
            "val_ndcg10": res.best_metrics.get("NDCG@10"), "val_hr10": res.best_metrics.get("HR@10"),
            "test_all_ndcg10": out["all_items"]["NDCG@10"], "test_all_hr10": out["all_items"]["HR@10"],
            "test_seen_ndcg10": out["seen_filtered"]["NDCG@10"], "test_seen_hr10": out["seen_filtered"]["HR@10"]}.items()}),
            flush=True)
        results.append(out)
        if args.out:
            Path(args.out).write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
