"""Incremental updates of the Transformer: fine-tuning with replay, new items, a guard rail.

:class:`FineTuner` keeps one optimizer across updates. Each update takes ``steps`` minibatches,
each mixing windows from *recent* sequences (the users who just acted) with windows *replayed*
from older data (so the model does not forget what it knew: the replay share is
``replay_ratio``), and is guarded: the validation metric is measured before and after, and an
update that lowers it by more than ``tolerance`` (relative) is rolled back, optimizer state
included.

:func:`init_new_items` gives items the model has never trained on a starting vector from their
text: the mean ID embedding of the ``k`` trained items nearest in text space (and, when the model
has text features, the item's own projected text vector is part of its vector already).

:func:`bias_step` is the fast half of online learning: between fine-tuning updates, every new
event moves the model's per-item output bias by one SGD step on its own cross-entropy, taken
from the scores the model gave just *before* the event. The bias is the part of the model that
follows what is popular now (in the last 40% of ML-1M's replay window, a ranking by recent
popularity finds the next item 41% more often than the training period's popularity does:
``benchmarks/popularity_drift_ml1m.py``). In the replay the step reuses the scores that ranked
the events; the service learner scores the new events' prefixes for it (one forward pass).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch

from ..model.data import Windows, concat_windows
from ..model.negatives import NegativeFeedback
from ..model.train import _tensors, batch_loss
from ..model.transformer import FeedbackTransformer


@dataclass
class FineTuneConfig:
    """Settings of one incremental update."""

    steps: int = 40
    batch_size: int = 128
    lr: float = 3e-4
    weight_decay: float = 0.0
    replay_ratio: float = 0.5  # share of each batch drawn from older data
    tolerance: float = 0.05  # relative validation drop that blocks promotion
    # With per-event validation values: the drop must also be significant, mean paired difference
    # below -significance standard errors (one-sided; 1.64 = 95%). 0: the tolerance alone decides.
    significance: float = 0.0
    # The learning rate rises linearly over the first ``warmup_steps`` steps of the learner's life:
    # a fresh AdamW moves every weight by about ``lr`` per step whatever its gradient, which jolts a
    # converged model before the moment estimates settle. 0: full rate from the first step.
    warmup_steps: int = 0
    seed: int = 0
    device: str = "cpu"
    negatives: NegativeFeedback | None = None  # the not-to-recommend term of the loss (None: off)


@dataclass
class UpdateResult:
    """What one guarded update did."""

    accepted: bool
    before: float
    after: float
    loss: float
    steps: int
    recent_windows: int
    replay_windows: int


class FineTuner:
    """Fine-tunes ``model`` in place; one instance per model lineage (keeps the optimizer)."""

    def __init__(self, model: FeedbackTransformer, cfg: FineTuneConfig | None = None) -> None:
        self.model = model
        self.cfg = cfg or FineTuneConfig()
        self.rng = np.random.default_rng(self.cfg.seed)
        # Dropout draws from torch's global generator; the tuner keeps a stream of its own and
        # swaps it in only while it trains, so an update is reproducible from ``seed`` whatever
        # else in the process uses torch's randomness, and it leaves that randomness untouched.
        self._devices = [torch.device(self.cfg.device).index or 0] if torch.device(self.cfg.device).type == "cuda" else []
        with torch.random.fork_rng(devices=self._devices):
            torch.manual_seed(self.cfg.seed)
            self._torch_rng = self._rng_state()
        self.opt = torch.optim.AdamW(model.parameters(), lr=self.cfg.lr, weight_decay=self.cfg.weight_decay, betas=(0.9, 0.98))
        self.steps_taken = 0  # optimizer steps kept (a rejected update's are undone)

    def _rng_state(self) -> tuple[torch.Tensor, list[torch.Tensor]]:
        return torch.get_rng_state(), [torch.cuda.get_rng_state(d) for d in self._devices]

    def _set_rng_state(self, state: tuple[torch.Tensor, list[torch.Tensor]]) -> None:
        torch.set_rng_state(state[0])
        for d, s in zip(self._devices, state[1]):
            torch.cuda.set_rng_state(s, d)

    def _rate(self) -> float:
        w = self.cfg.warmup_steps
        return self.cfg.lr * min(1.0, (self.steps_taken + 1) / w) if w > 0 else self.cfg.lr

    def _batch(self, recent: Windows, replay: Windows | None) -> Windows:
        b = self.cfg.batch_size
        n_replay = int(round(b * self.cfg.replay_ratio)) if replay is not None and len(replay) else 0
        n_recent = b - n_replay
        parts = [recent.select(self.rng.integers(0, len(recent), size=n_recent))]
        if n_replay:
            parts.append(replay.select(self.rng.integers(0, len(replay), size=n_replay)))  # type: ignore[union-attr]
        return concat_windows(parts)

    def train_steps(self, recent: Windows, replay: Windows | None, steps: int | None = None) -> float:
        """``steps`` AdamW steps on mixed minibatches; returns the mean loss."""
        steps = self.cfg.steps if steps is None else steps
        if len(recent) == 0 or steps <= 0:
            return float("nan")
        self.model.train()
        total = 0.0
        with torch.random.fork_rng(devices=self._devices):
            self._set_rng_state(self._torch_rng)
            for _ in range(steps):
                t = _tensors(self._batch(recent, replay), self.cfg.device)
                if not bool((t["targets"] > 0).any()):
                    continue
                loss = batch_loss(self.model, t, 0.0, False, negatives=self.cfg.negatives)
                self.opt.zero_grad(set_to_none=True)
                loss.backward()
                for group in self.opt.param_groups:
                    group["lr"] = self._rate()
                self.opt.step()
                self.steps_taken += 1
                total += float(loss.detach())
            self._torch_rng = self._rng_state()
        self.model.eval()
        return total / steps

    def guarded_update(self, recent: Windows, replay: Windows | None,
                       validate: Callable[[FeedbackTransformer], float | np.ndarray]) -> UpdateResult:
        """Train, validate, and roll back if the metric fell by more than ``tolerance``.

        ``validate`` returns the metric, or its value per held-out event; with per-event values and
        ``significance`` > 0 a drop also has to be significant to block the update (a small
        held-out set moves by more than the tolerance from noise alone)."""
        before_v = np.atleast_1d(np.asarray(validate(self.model), dtype=np.float64))
        weights = copy.deepcopy(self.model.state_dict())
        opt_state = copy.deepcopy(self.opt.state_dict())
        steps_taken = self.steps_taken
        loss = self.train_steps(recent, replay)
        after_v = np.atleast_1d(np.asarray(validate(self.model), dtype=np.float64))
        before, after = float(before_v.mean()), float(after_v.mean())
        accepted = not (after < before * (1.0 - self.cfg.tolerance))
        if not accepted and self.cfg.significance > 0 and len(before_v) == len(after_v) > 1:
            accepted = not significant_drop(after_v - before_v, self.cfg.significance)
        if not accepted:
            self.model.load_state_dict(weights)
            self.opt.load_state_dict(opt_state)
            self.steps_taken = steps_taken
        return UpdateResult(accepted, before, after, loss, self.cfg.steps, len(recent), len(replay) if replay is not None else 0)


def significant_drop(diff: np.ndarray, z: float) -> bool:
    """Whether paired differences (after - before, one per held-out event) fall significantly:
    mean below ``-z`` standard errors."""
    mean = float(diff.mean())
    se = float(diff.std(ddof=1)) / np.sqrt(len(diff))
    return mean < 0 and (se == 0.0 or mean / se < -z)


@torch.no_grad()
def bias_step(model: FeedbackTransformer, scores: torch.Tensor, targets: torch.Tensor, lr: float) -> None:
    """One SGD step on ``model``'s output bias for events it scored before they happened.

    ``scores``: (B, N) the model's scores of every item for each event's prefix (items the user
    already had may be ``-inf``: the softmax is then over the items that could come next);
    ``targets``: (B,) 0-based item of each event. The gradient of the summed cross-entropy with
    respect to the bias is ``sum_b softmax(scores_b) - onehot(target_b)``: the bias of items that
    occur rises, that of items the model expected but did not see falls. ``lr`` is per event.
    """
    bias = model.out_bias
    if bias is None or lr <= 0 or len(targets) == 0:
        return
    grad = torch.softmax(scores.float(), dim=1).sum(0)  # (N,)
    grad.index_add_(0, targets.to(grad.device), torch.full((len(targets),), -1.0, device=grad.device))
    bias.sub_(lr * grad.to(bias.dtype))


@torch.no_grad()
def init_new_items(model: FeedbackTransformer, new_items: np.ndarray, known_items: np.ndarray, text: np.ndarray, k: int = 5) -> int:
    """Set the ID embeddings of ``new_items`` (1-based) from their text neighbours among ``known_items``.

    ``text`` is (N+1, D_t), L2-normalised rows (zero rows: no text, left as they are). Returns how
    many items were initialised.
    """
    new_items = np.asarray(new_items, dtype=np.int64)
    known_items = np.asarray(known_items, dtype=np.int64)
    if len(new_items) == 0 or len(known_items) == 0:
        return 0
    t_new = text[new_items]  # (M, D_t)
    t_known = text[known_items]  # (K, D_t)
    has_text = np.linalg.norm(t_new, axis=1) > 0
    if not has_text.any():
        return 0
    sims = t_new[has_text] @ t_known.T  # (M', K)
    k = min(k, len(known_items))
    nearest = np.argpartition(-sims, k - 1, axis=1)[:, :k]  # (M', k)
    emb = model.item_emb.weight  # (N+1, D)
    rows = torch.from_numpy(known_items[nearest]).to(emb.device)  # (M', k)
    emb[torch.from_numpy(new_items[has_text]).to(emb.device)] = emb[rows].mean(1)
    return int(has_text.sum())
