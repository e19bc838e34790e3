"""Cold start on ML-1M: items hidden from training, served from their text alone.

5% of the items (seeded; among items with at least 20 ratings) are removed from the training
data entirely. The model is trained on the rest, then the hidden items are added the way the
service adds new catalog items (:meth:`TransformerScorer.add_items`: zero ID embedding, projected
MiniLM text vector). For each hidden item's first 10 interactions (by time), the user's history
before it (last 200 events) is encoded and all items are ranked; HR@10/HR@50 of the hidden item
are reported beside random ranking (k / N).

    python benchmarks/cold_start_ml1m.py --data ../shared/data/ml-1m --text-cache DIR --out cold.json \
        [--time-budget 1500] [--recipe '{"id_dropout": 0.3}']

The model is trained with the reported recipe (``DEFAULT_RECIPE``, overridable) under a time
budget; the request time of each query is the hidden item's interaction time.
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
import torch

from liverec.evaluation.offline import DEFAULT_RECIPE, split_overrides
from liverec.evaluation.protocol import build_log, leave_one_out, load_movielens
from liverec.model.data import Sequences, input_windows
from liverec.model.scorer import TransformerScorer
from liverec.model.text import MINILM_DIM, MiniLMEncoder, TextVectorCache, text_matrix
from liverec.model.train import TrainConfig, ValidationSet, evaluate_windows, train
from liverec.model.transformer import ModelConfig


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", required=True)
    ap.add_argument("--text-cache", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--recipe", default="{}", help="JSON overrides of DEFAULT_RECIPE (e.g. id_dropout, epochs)")
    ap.add_argument("--time-budget", type=float, default=1500.0, help="training time budget (s); 0 = none")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = ap.parse_args()
    recipe = {**DEFAULT_RECIPE, "time_budget_s": args.time_budget or None, **json.loads(args.recipe)}  # 0: no budget
    mo, to, _ = split_overrides(recipe)
    full = load_movielens(args.data)
    rng = np.random.default_rng(args.seed)
    counts = np.bincount(full.seqs.items, minlength=full.n_items + 1)[1:]
    eligible = np.nonzero(counts >= 20)[0]
    hidden = set(rng.choice(eligible, size=int(0.05 * full.n_items), replace=False).tolist())  # 0-based
    hidden_ids = [str(full.item_ids[i]) for i in sorted(hidden)]
    s = full.seqs
    users = np.repeat(np.arange(s.n_users), s.lengths())
    keep = ~np.isin(s.items - 1, list(hidden))
    log = build_log("ml-1m-cold", full.user_ids[users[keep]], full.item_ids[s.items[keep] - 1], s.timestamps[keep],
                    values=s.values[keep].astype(np.float64),
                    item_text={str(i): t for i, t in zip(full.item_ids, full.item_texts)})
    split = leave_one_out(log)
    enc = MiniLMEncoder()
    item_text = text_matrix(log.item_texts, enc, args.text_cache)
    mc = ModelConfig(n_items=log.n_items, text_dim=MINILM_DIM, **mo)
    tc = TrainConfig(**{**to, "seed": args.seed, "device": args.device, "threads": args.threads})
    t0 = time.time()
    res = train(mc, tc, split.train, ValidationSet(split.valid_windows, split.valid_targets), item_text=item_text,
                progress=False)
    model = res.model.cpu()
    cache = TextVectorCache(args.text_cache, enc)
    text_of = {str(i): t for i, t in zip(full.item_ids, full.item_texts)}

    class Cached:
        name, dim = enc.name, enc.dim

        def encode(self, texts: list[str]) -> np.ndarray:
            return cache.get(texts)

    scorer = TransformerScorer("ml", model, [str(i) for i in log.item_ids], text_encoder=Cached())
    scorer = scorer.add_items(hidden_ids, [text_of[i] for i in hidden_ids])
    index = scorer.index  # item id -> 1-based row in the extended model
    # Queries: each hidden item's first 10 interactions, with the user's full history before them.
    mapped = np.array([index[str(full.item_ids[i - 1])] for i in s.items], dtype=np.int32)
    seqs = Sequences(s.offsets, mapped, s.types, s.values, s.timestamps, s.text_ids)
    queries: list[tuple[int, int]] = []  # (user, position)
    for h in sorted(hidden):
        pos = np.nonzero(s.items - 1 == h)[0]
        pos = pos[np.argsort(s.timestamps[pos], kind="stable")][:10]
        queries += [(int(users[p]), int(p)) for p in pos]
    starts = np.array([s.offsets[u] for u, _ in queries])
    ends = np.array([p for _, p in queries])
    lengths = ends - starts
    offsets = np.zeros(len(queries) + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    idx = np.concatenate([np.arange(a, b) for a, b in zip(starts, ends)]) if len(queries) else np.zeros(0, np.int64)
    qseqs = Sequences(offsets, seqs.items[idx], seqs.types[idx], seqs.values[idx], seqs.timestamps[idx], seqs.text_ids[idx])
    ok = lengths > 0
    windows = input_windows(qseqs, 200, np.nonzero(ok)[0], request_times=s.timestamps[ends])
    targets = np.array([index[str(full.item_ids[s.items[p] - 1])] for _, p in queries], dtype=np.int64)[ok]
    m = evaluate_windows(scorer.model, windows, targets)
    n = scorer.model.cfg.n_items
    warm = evaluate_windows(model, split.test_windows, split.test_targets)
    out = {
        "hidden_items": len(hidden_ids), "queries": int(ok.sum()), "catalog_items": n,
        "cold_HR@10": m["HR@10"], "cold_HR@50": m["HR@50"], "cold_NDCG@10": m["NDCG@10"],
        "random_HR@10": 10 / n, "random_HR@50": 50 / n,
        "warm_test_all_items": {k: warm[k] for k in ("HR@10", "NDCG@10")},
        "recipe": recipe, "train_seconds": round(res.train_seconds, 1), "best_epoch": res.best_epoch, "device": args.device,
        "wall_seconds": round(time.time() - t0, 1),
    }
    print(json.dumps(out, indent=1))
    with open(args.out, "a") as f:
        f.write(json.dumps(out) + "\n")


if __name__ == "__main__":
    main()
