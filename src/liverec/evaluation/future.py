"""Set metrics on a multi-item future: precision, recall and F1@10 of one top-10 list per user
against the user's next ``N`` target events (the split of :func:`~liverec.evaluation.protocol.future_split`).

The leave-one-out split has one relevant item per user, where precision@10 is HR@10 / 10 by
construction; here every evaluated user has ``N`` future events, so precision and recall measure
different things. Each model or baseline is fitted on the events before the future set only
(the Transformer is trained again on that split: the leave-one-out model has seen some of the
future events as training targets).
"""

from __future__ import annotations

from typing import Any, Callable, Iterable, Iterator

import numpy as np
import torch

from liverec.evaluation.metrics import set_metrics
from liverec.evaluation.protocol import FutureSplit

ScoreBatches = Iterable[tuple[slice, torch.Tensor]]  # (rows of the split's users, (B, N) scores)


def _variants(batches: ScoreBatches, split: FutureSplit) -> dict[str, dict[str, float]]:
    """Top-10 lists from score batches, both variants: all items / seen items filtered."""
    from liverec.model.train import mask_seen

    seen_all = split.seen_items()
    tops: dict[str, list[np.ndarray]] = {"all_items": [], "seen_filtered": []}
    for sl, scores in batches:
        k = min(10, scores.shape[1])
        tops["all_items"].append(scores.topk(k, dim=1).indices.cpu().numpy())
        seen = torch.from_numpy(seen_all[sl].astype(np.int64)).to(scores.device)
        tops["seen_filtered"].append(mask_seen(scores, seen).topk(k, dim=1).indices.cpu().numpy())
    return {name: set_metrics(np.concatenate(t), split.future) for name, t in tops.items() if t}


def baseline_batches(score_fn: Callable[[np.ndarray], np.ndarray], split: FutureSplit,
                     batch_size: int = 512) -> Iterator[tuple[slice, torch.Tensor]]:
    """Score batches of a baseline's (B, N) user scores over the split's evaluated users."""
    users = split.eval_users
    for s in range(0, len(users), batch_size):
        sl = slice(s, min(s + batch_size, len(users)))
        yield sl, torch.from_numpy(np.array(score_fn(users[sl]), dtype=np.float32))


def evaluate_future(batches: ScoreBatches, split: FutureSplit) -> dict[str, Any]:
    """``{"all_items": {P@10, R@10, F1@10, users}, "seen_filtered": {...}}`` of one scorer."""
    return _variants(batches, split)


__all__ = ["baseline_batches", "evaluate_future"]
