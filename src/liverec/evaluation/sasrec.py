"""Plain SASRec baseline: causal self-attention over item ids only, full-softmax cross-entropy.

The baseline the feedback-aware Transformer has to beat at the same training budget (Kang &
McAuley 2018, trained with full-softmax CE over all items as in later full-ranking studies):

* input: the user's positive (target-type) events only, as item-id embeddings + learned
  positions; no event types, feedback values, time gaps, request time, text or repeat term;
* output: tied item embeddings, no per-item bias; the state after the newest event scores all
  items;
* the same optimiser, schedule, windows, early stopping on the validation position and time
  budget as the Transformer (the training loop of :mod:`liverec.model.train`).

It is built from :class:`~liverec.model.transformer.FeedbackTransformer` with every feature
switched off rather than a second attention stack, so the two differ only in what they read.
"""

from __future__ import annotations

import dataclasses
import time
from typing import Any, Callable

import numpy as np
import torch

from liverec.evaluation.protocol import Split, _select
from liverec.model.data import Sequences, input_windows
from liverec.model.features import is_target_type
from liverec.model.train import TrainConfig, TrainResult, ValidationSet, score_windows, train
from liverec.model.transformer import ModelConfig

#: Architecture keys taken from the recipe (capacity); everything else is switched off.
ARCH_KEYS = ("max_len", "d_model", "n_blocks", "n_heads", "ffn_mult", "dropout")


def sasrec_config(n_items: int, arch: dict[str, Any]) -> ModelConfig:
    """The plain SASRec configuration at the recipe's capacity.

    >>> c = sasrec_config(10, {"d_model": 32, "lr": 1e-3})
    >>> (c.d_model, c.use_types, c.use_values, c.use_gaps, c.text_dim, c.repeat_term, c.item_bias)
    (32, False, False, False, 0, False, False)
    """
    return ModelConfig(n_items=n_items, use_types=False, use_values=False, use_gaps=False, use_request_gap=False,
                       text_dim=0, repeat_term=False, item_bias=False, **{k: arch[k] for k in ARCH_KEYS if k in arch})


def positives_only(seqs: Sequences) -> Sequences:
    """Each user's target-type events with an item (what SASRec reads)."""
    return _select(seqs, is_target_type(seqs.types) & (seqs.items > 0))


def train_sasrec(split: Split, n_items: int, arch: dict[str, Any], train_cfg: TrainConfig,
                 log_fn: Callable[[str], None] | None = None, max_valid: int | None = None,
                 seed: int = 0) -> tuple[TrainResult, Callable[[], Any]]:
    """Train on ``split.train`` (positives only); returns the result and a function yielding
    (row slice, (B, N) scores) over the split's evaluated users at their test position.
    ``max_valid`` caps the validation users (a seeded sample), as for the Transformer."""
    cfg = sasrec_config(n_items, arch)
    ml = cfg.max_len
    train_seqs = positives_only(split.train)
    rows = np.arange(len(split.eval_users))
    if max_valid and max_valid < len(rows):
        rows = np.sort(np.random.default_rng(seed).choice(rows, int(max_valid), replace=False))
    valid = ValidationSet(input_windows(train_seqs, ml, split.eval_users[rows]), split.valid_targets[rows])
    tc = dataclasses.replace(train_cfg, bf16=False)
    res = train(cfg, tc, train_seqs, valid, progress=False, log=log_fn)
    test_windows = input_windows(positives_only(split.test_prefix), ml, split.eval_users)
    return res, lambda: score_windows(res.model, test_windows)


def run_sasrec(split: Split, n_items: int, arch: dict[str, Any], train_cfg: TrainConfig,
               log_fn: Callable[[str], None] | None = None, max_valid: int | None = None,
               seed: int = 0) -> dict[str, Any]:
    """Both ranking variants of the plain SASRec on the leave-one-out split, with its train time."""
    from liverec.evaluation.metrics import RankingAccumulator
    from liverec.model.train import mask_seen

    t0 = time.perf_counter()
    res, batches = train_sasrec(split, n_items, arch, train_cfg, log_fn, max_valid, seed)
    accs = {"all_items": RankingAccumulator(n_items), "seen_filtered": RankingAccumulator(n_items)}
    seen_all = split.seen_items()
    with torch.no_grad():
        for sl, scores in batches():
            targets = torch.from_numpy(split.test_targets[sl] - 1)
            accs["all_items"].add(scores, targets)
            accs["seen_filtered"].add(mask_seen(scores, torch.from_numpy(seen_all[sl].astype(np.int64))), targets)
    out: dict[str, Any] = {k: a.summary() for k, a in accs.items()}
    out["train_seconds"] = round(res.train_seconds, 1)
    out["seconds"] = round(time.perf_counter() - t0, 1)
    out["best_epoch"], out["epochs_run"] = res.best_epoch, res.epochs_run
    out["validation"] = {k: res.best_metrics.get(k) for k in ("NDCG@10", "HR@10")}
    out["model_config"] = res.model.cfg.to_dict()
    return out


__all__ = ["ARCH_KEYS", "positives_only", "run_sasrec", "sasrec_config", "train_sasrec"]
