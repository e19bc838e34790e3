"""Per-user scoring latency of the Transformer in the request path (in-process), ML-1M size.

For real ML-1M users (their newest 200 ratings folded into online state) the
:class:`TransformerScorer` encodes the sequence and scores all 3,674 items — exactly what a
request does before the ranking stages. Reports p50/p99 over single requests and the per-user
cost when 8 requests are batched.

    python benchmarks/recommend_latency_model.py --data ../shared/data/ml-1m [--model DIR] [--threads 1]

Without ``--model`` a freshly initialised model of the reported configuration is timed (latency
does not depend on the weights).
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
import torch

from liverec.events import DEFAULT_TYPES, Event
from liverec.evaluation.protocol import load_movielens
from liverec.model.artifacts import load_artifact
from liverec.model.scorer import TransformerScorer
from liverec.model.text import MINILM_DIM
from liverec.model.transformer import FeedbackTransformer, ModelConfig
from liverec.state import UserState


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", required=True)
    ap.add_argument("--model", default=None, help="artifact directory (liverec evaluate ... --model-out)")
    ap.add_argument("--users", type=int, default=1000)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    log = load_movielens(args.data)
    if args.model:
        art = load_artifact(args.model)
        model, items = art.model, art.item_ids
    else:
        torch.manual_seed(0)
        model = FeedbackTransformer(ModelConfig(n_items=log.n_items, text_dim=MINILM_DIM)).eval()
        items = [str(i) for i in log.item_ids]
    scorer = TransformerScorer("ml", model, items)
    s = log.seqs
    rng = np.random.default_rng(0)
    users = rng.choice(s.n_users, size=min(args.users, s.n_users), replace=False)
    states = []
    for u in users:
        st = UserState(200)
        a, b = int(s.offsets[u]), int(s.offsets[u + 1])
        for k in range(max(a, b - 200), b):
            e = Event(app="ml", event_id=str(k), user_id=str(u), type="rating", timestamp=float(s.timestamps[k]),
                      item_id=str(log.item_ids[s.items[k] - 1]), value=float(s.values[k]))
            st.apply(e, DEFAULT_TYPES["rating"])
        states.append(st)
    for st in states[:50]:  # warm-up
        scorer.score("ml", st, 10)
    single = []
    for st in states:
        t0 = time.perf_counter()
        out = scorer.score("ml", st, 10)
        np.argpartition(-out.scores, 10)[:10]  # exact top-10, as the pipeline takes it
        single.append(time.perf_counter() - t0)
    batched = []
    for i in range(0, len(states) - 7, 8):
        t0 = time.perf_counter()
        scorer.score_many(states[i:i + 8])
        batched.append((time.perf_counter() - t0) / 8)
    ms = lambda xs, q: float(np.percentile(np.array(xs) * 1e3, q))  # noqa: E731
    lengths = [len(st.sequence) for st in states]
    res = {
        "items": len(items), "users": len(states), "mean_sequence_length": float(np.mean(lengths)),
        "threads": args.threads, "model": args.model or "untrained (same architecture)",
        "single_p50_ms": round(ms(single, 50), 3), "single_p99_ms": round(ms(single, 99), 3),
        "batch8_per_user_p50_ms": round(ms(batched, 50), 3), "batch8_per_user_p99_ms": round(ms(batched, 99), 3),
    }
    print(json.dumps(res, indent=1))
    if args.out:
        with open(args.out, "w") as f:
            json.dump(res, f, indent=1)


if __name__ == "__main__":
    main()
