"""After a dislike, does the model (alone) stop recommending the disliked item's neighbours?

Trains the replay's training-period model on ML-1M (the first 80% of events by time; each
user's last training event validates) twice in one run, same seed and time budget: with the old
loss (cross-entropy only) and with the not-to-recommend term (:mod:`liverec.model.negatives`:
ratings of 2 stars or less are ML-1M's negative feedback, half of them read as dislike events in
training input). For each model:

* **validation NDCG@10** (the training run's best, on the validation split);
* **dislike responsiveness**, the model alone (no ranking stages, no filter, the disliked item
  not excluded by any policy): for a seeded sample of users, their training-period history is
  scored; one item of their top-10 is disliked at random (a ``dislike`` event appended 60 s
  after their last event) and the history scored again. Reported: the share of the disliked
  item's 20 nearest neighbours in the top-10 before and after the dislike (neighbours by cosine
  of the *old* model's item vectors, the same sets for both models; and by each model's own),
  how often the disliked item itself stays in the top-10, and the same after a ``view`` of that
  item instead (what an interaction does, for contrast);
* **replay online / frozen NDCG@10** on the first ``--replay-events`` events of the replay window
  (the replay's defaults: an update every 1,000 events, bias steps; the online updates use the
  variant's loss).

    PYTHONPATH=src flock /tmp/liverec-bench.lock python benchmarks/dislike_neighbours.py \\
        --data ../shared/data/ml-1m --budget 480 --users 1000 --replay-events 20000 \\
        --out benchmarks/results/dislike_neighbours_ml1m.json
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from liverec.evaluation.protocol import load_movielens
from liverec.evaluation.replay import ReplayConfig, make_stream, run_replay, save_model, subset_sequences, train_frozen
from liverec.evaluation.report import machine, now_iso
from liverec.learning.finetune import FineTuneConfig
from liverec.model.data import Sequences, input_windows
from liverec.model.features import TYPE_IDS
from liverec.model.negatives import NegativeFeedback
from liverec.model.transformer import FeedbackTransformer

NEW = NegativeFeedback(weight=1.0, neighbours=10, neighbour_weight=0.5, horizon=5, low_rating=2.0, low_rating_as_dislike=0.5)


def scores_after(model: FeedbackTransformer, seqs: Sequences, extra: tuple[np.ndarray, int] | None) -> torch.Tensor:
    """(U, N) model scores after each user's history (plus one appended event: items, type)."""
    if extra is not None:
        items, typ = extra
        parts: dict[str, list] = {"items": [], "types": [], "values": [], "ts": []}
        for u in range(seqs.n_users):
            a, b = int(seqs.offsets[u]), int(seqs.offsets[u + 1])
            parts["items"].append(seqs.items[a:b].tolist() + [int(items[u])])
            parts["types"].append(seqs.types[a:b].tolist() + [typ])
            parts["values"].append(seqs.values[a:b].tolist() + [np.nan])
            parts["ts"].append(seqs.timestamps[a:b].tolist() + [float(seqs.timestamps[b - 1]) + 60.0])
        seqs = Sequences.from_lists(parts["items"], parts["types"], parts["values"], parts["ts"])
    w = input_windows(seqs, model.cfg.max_len)
    out = []
    with torch.no_grad():
        model.eval()
        for s in range(0, len(w), 256):
            t = {k: torch.from_numpy(getattr(w, k)[s:s + 256]) for k in ("items", "types", "values", "gaps", "next_gaps")}
            out.append(model.score_last(t["items"], t["types"], t["values"], t["gaps"],
                                        next_gaps=t["next_gaps"] if model.cfg.use_request_gap else None))
    return torch.cat(out)


def neighbours(model: FeedbackTransformer, items: np.ndarray, k: int = 20) -> np.ndarray:
    """(U, k) 0-based nearest items of each 0-based item by cosine of the model's item vectors."""
    with torch.no_grad():
        unit = torch.nn.functional.normalize(model.item_vectors()[1:], dim=1)  # (N, D)
        sims = unit[torch.from_numpy(items)] @ unit.T  # (U, N)
        sims[torch.arange(len(items)), torch.from_numpy(items)] = float("-inf")
        return sims.topk(k, dim=1).indices.numpy()


def share_in(top: np.ndarray, sets: np.ndarray) -> np.ndarray:
    """(U,) share of each row of ``top`` (U, 10) that is in the row's ``sets`` (U, K)."""
    return np.array([len(set(t.tolist()) & set(n.tolist())) / len(t) for t, n in zip(top, sets)])


def responsiveness(model: FeedbackTransformer, seqs: Sequences, rng: np.random.Generator,
                   reference: FeedbackTransformer) -> dict[str, Any]:
    before = scores_after(model, seqs, None)
    top_before = before.topk(10, dim=1).indices.numpy()  # (U, 10)
    disliked = top_before[np.arange(len(top_before)), rng.integers(0, 10, len(top_before))]  # (U,) 0-based
    own = neighbours(model, disliked)
    ref = neighbours(reference, disliked)
    out: dict[str, Any] = {"users": int(seqs.n_users)}
    for name, typ in (("dislike", TYPE_IDS["dislike"]), ("view", TYPE_IDS["view"])):
        after = scores_after(model, seqs, (disliked + 1, typ))
        top_after = after.topk(10, dim=1).indices.numpy()
        rank = (after > after.gather(1, torch.from_numpy(disliked)[:, None])).sum(1).numpy()
        out[name] = {
            "neighbour_share_before": round(float(share_in(top_before, ref).mean()), 4),
            "neighbour_share_after": round(float(share_in(top_after, ref).mean()), 4),
            "own_neighbour_share_before": round(float(share_in(top_before, own).mean()), 4),
            "own_neighbour_share_after": round(float(share_in(top_after, own).mean()), 4),
            "item_in_top10_after": round(float((rank < 10).mean()), 4),
            "item_median_rank_after": float(np.median(rank)),
        }
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", type=Path, required=True)
    ap.add_argument("--budget", type=float, default=480.0, help="training seconds per model")
    ap.add_argument("--users", type=int, default=1000)
    ap.add_argument("--replay-events", type=int, default=20000, help="replay window events (0: no replay)")
    ap.add_argument("--variants", default="old,new")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results/dislike_neighbours_ml1m.json"))
    args = ap.parse_args()
    say = lambda m: print(m, flush=True)  # noqa: E731
    log = load_movielens(args.data)
    stream = make_stream(log, 0.8)
    keep = np.zeros(log.seqs.n_events, dtype=bool)
    keep[stream.order[: stream.cut]] = True
    history = subset_sequences(stream, keep)
    users = np.flatnonzero(history.lengths() >= 2)
    users = np.sort(np.random.default_rng(args.seed).choice(users, size=min(args.users, len(users)), replace=False))
    probe = subset_sequences(stream, keep, users)
    import sys

    result: dict[str, Any] = {"benchmark": "dislike_neighbours", "dataset": "ml-1m", "date": now_iso(), "machine": machine(),
                              "command": "python " + " ".join(sys.argv), "budget_s": args.budget, "users": len(users), "seed": args.seed,
                              "new_loss": asdict(NEW), "variants": {}}
    reference: FeedbackTransformer | None = None  # whose item vectors define the neighbours for every variant
    for variant in args.variants.split(","):
        negatives = NEW if variant == "new" else None
        cfg = ReplayConfig(train_budget_s=args.budget, rtrec=False, seed=args.seed, negatives=negatives,
                           max_events=args.replay_events or None,
                           finetune=replace(ReplayConfig().finetune, negatives=negatives))
        say(f"[{variant}] training ({args.budget:.0f} s budget)")
        t0 = time.perf_counter()
        torch.manual_seed(args.seed)
        res = train_frozen(stream, cfg, say)
        row: dict[str, Any] = {"val_NDCG@10": round(res.best_metrics.get("NDCG@10", float("nan")), 4),
                               "val_HR@10": round(res.best_metrics.get("HR@10", float("nan")), 4),
                               "best_epoch": res.best_epoch, "epochs": res.epochs_run,
                               "train_seconds": round(res.train_seconds, 1)}
        if reference is None:
            reference = res.model
            result["reference_neighbours"] = f"item vectors of the '{variant}' model (cosine, 20 nearest)"
        row["responsiveness"] = responsiveness(res.model, probe, np.random.default_rng(args.seed), reference)
        say(f"[{variant}] {json.dumps(row)}")
        if args.replay_events:
            with tempfile.TemporaryDirectory() as tmp:
                path = Path(tmp) / "frozen.safetensors"
                save_model(res.model, path)
                summary = run_replay(args.data, cfg, None, log=lambda m: None, model_path=path)
            row["replay"] = {k: summary[k] for k in ("online", "frozen", "online_vs_frozen", "events") if k in summary}
            say(f"[{variant}] replay {json.dumps(row['replay'])}")
        row["seconds"] = round(time.perf_counter() - t0, 1)
        result["variants"][variant] = row
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=2))
    say(json.dumps(result["variants"], indent=2))


if __name__ == "__main__":
    main()
