"""Training loop: next-event full-softmax cross-entropy with early stopping on validation.

:func:`train` takes numpy sequences (see :mod:`liverec.model.data`), trains a
:class:`~liverec.model.transformer.FeedbackTransformer` and keeps the weights of the epoch with the
best validation NDCG@10 (full ranking over all items, seen items included: the headline metric).
All randomness (initialisation, dropout, batch order) comes from ``TrainConfig.seed``.

Inside a ``torch.distributed`` process group (see :mod:`liverec.model.distributed`) every rank
runs the same loop over the same global batches and computes the gradient of its share of each
one; DDP sums the shares, so a step is the step of one process on the whole batch. Rank 0 alone
validates and decides when to stop; the others follow its decision.
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
import math
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Callable

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

from liverec.evaluation.metrics import RankingAccumulator
from liverec.model.data import Sequences, Windows, input_windows, training_windows
from liverec.model.losses import full_softmax_ce
from liverec.model.negatives import NegativeFeedback
from liverec.model.transformer import FeedbackTransformer, ModelConfig


@dataclass
class TrainConfig:
    """Optimisation settings (stored in the artifact manifest)."""

    epochs: int = 200
    batch_size: int = 128
    lr: float = 1e-3
    weight_decay: float = 0.0
    warmup_steps: int = 100
    schedule: str = "constant"  # "constant" or "cosine" (over ``epochs``)
    min_lr_ratio: float = 0.05
    label_smoothing: float = 0.0
    patience: int = 10  # validation checks without improvement before stopping
    eval_every: int = 1  # epochs between validation checks
    time_budget_s: float | None = None  # stop (keeping the best weights) before exceeding this (None or 0: no budget)
    stride: int | None = None  # extra windows over long histories (None: newest window only)
    bf16: bool = False  # bf16 logits matmuls (AMX / AVX512-bf16 on CPU, tensor cores on GPU)
    seed: int = 0
    device: str = "cpu"
    threads: int | None = None
    # negative feedback as a training signal (liverec.model.negatives; None: off); a recipe gives a dict
    negatives: NegativeFeedback | None = None

    def __post_init__(self) -> None:
        if isinstance(self.negatives, dict):
            self.negatives = NegativeFeedback(**self.negatives)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class ValidationSet:
    """Inputs (left-padded windows) and 1-based target items for model selection."""

    windows: Windows
    targets: np.ndarray  # (U,) int64, 1-based item index


@dataclass
class TrainResult:
    model: FeedbackTransformer
    best_epoch: int
    best_metrics: dict[str, float]
    history: list[dict[str, float]] = field(default_factory=list)
    train_seconds: float = 0.0
    epochs_run: int = 0


def _tensors(w: Windows, device: str) -> dict[str, torch.Tensor]:
    cols = np.nonzero((w.types > 0).any(0))[0]
    start = int(cols[0]) if len(cols) else w.items.shape[1] - 1  # trim all-padding columns
    return {
        k: torch.from_numpy(np.ascontiguousarray(getattr(w, k)[:, start:])).to(device)
        for k in ("items", "types", "values", "gaps", "text_ids", "targets", "next_gaps", "next_negative", "next_negative_type")
        if getattr(w, k) is not None
    }


def _event_text(t: dict[str, torch.Tensor], table: torch.Tensor | None) -> torch.Tensor | None:
    """(B, T, text_dim) event text vectors (zeros where none) or None."""
    if table is None:
        return None
    ids = t["text_ids"]
    if not bool((ids >= 0).any()):
        return None
    return table[ids.clamp(min=-1)]  # row -1 of the table is the all-zero row


def batch_loss(
    model: FeedbackTransformer,
    t: dict[str, torch.Tensor],
    label_smoothing: float,
    bf16: bool,
    event_text_table: torch.Tensor | None = None,
    negatives: NegativeFeedback | None = None,
) -> torch.Tensor:
    """Mean next-event cross-entropy of one batch of training windows (plus the not-to-recommend
    term of ``negatives``)."""
    items, stored_types, values = t["items"], t["types"], t["values"]
    types = stored_types
    if negatives is not None and model.training:
        types = negatives.read_low_ratings_as_dislikes(stored_types, values)  # (B, T) what the model reads
    e = model.item_vectors()  # (N+1, D)
    h = model.encode(items, types, values, t["gaps"], _event_text(t, event_text_table), e,
                     next_gaps=t.get("next_gaps"))  # (B, T, D)
    tmask = t["targets"] > 0  # (B, T)
    avoid_idx = avoid_w = None
    if negatives is not None and negatives.weight > 0:
        unit = torch.nn.functional.normalize(e.detach(), dim=1)  # (N+1, D)
        avoid_idx, avoid_w = negatives.avoid(items, stored_types, values, unit, t.get("next_negative"),
                                             t.get("next_negative_type"))  # (B, T, K)
        tmask = tmask | (avoid_w > 0).any(-1)  # rows with a target or an item not to recommend
    hm = h[tmask]  # (M, D)
    tgt = t["targets"][tmask] - 1  # (M,) -1: no target
    if avoid_idx is not None and avoid_w is not None:
        avoid_idx, avoid_w = avoid_idx[tmask], avoid_w[tmask]  # (M, K)
    b, tt = items.shape
    if model.cfg.repeat_term:
        nxt = model.latest_occurrence_mask(items)  # (B, T): prefix item s is active for s <= t < nxt[s]
        q = torch.arange(tt, device=items.device)
        active = (q[None, None, :] <= q[None, :, None]) & (q[None, :, None] < nxt[:, None, :])  # (B, Tq, Ts)
        active &= (items > 0)[:, None, :]
        src = model.repeat_values(types, values)[:, None, :] * active  # (B, Tq, Ts)
        rep_src = src[tmask]  # (M, T)
        rep_idx = (items - 1).clamp(min=0)[:, None, :].expand(b, tt, tt)[tmask]  # (M, T)
    else:
        rep_src = torch.zeros(hm.shape[0], 1, device=hm.device)
        rep_idx = torch.zeros(hm.shape[0], 1, dtype=torch.int64, device=hm.device)
    return full_softmax_ce(hm, e[1:], model.bias(), rep_idx, rep_src, tgt, label_smoothing, bf16,
                           avoid_idx=avoid_idx, avoid_w=avoid_w)


@torch.no_grad()
def score_windows(
    model: FeedbackTransformer,
    windows: Windows,
    batch_size: int = 256,
    device: str = "cpu",
    event_text_table: torch.Tensor | None = None,
) -> Any:
    """Yield (row slice, (B, N) scores) for consecutive batches of windows (eval mode)."""
    model.eval()
    for s in range(0, len(windows), batch_size):
        sl = slice(s, min(s + batch_size, len(windows)))
        t = _tensors(windows.select(np.arange(sl.start, sl.stop)), device)
        scores = model.score_last(t["items"], t["types"], t["values"], t["gaps"], _event_text(t, event_text_table),
                                  t.get("next_gaps"))
        yield sl, scores


def evaluate_windows(
    model: FeedbackTransformer,
    windows: Windows,
    targets: np.ndarray,
    filter_seen: bool = False,
    batch_size: int = 256,
    device: str = "cpu",
    event_text_table: torch.Tensor | None = None,
    seen: np.ndarray | None = None,
) -> dict[str, float]:
    """Full-ranking metrics of 1-based ``targets`` after each window.

    ``filter_seen`` removes the user's seen items from the ranking: those of ``seen`` ((U, L)
    1-based, 0 = padding: the whole history) when given, else the items in the window.
    """
    acc = RankingAccumulator(model.cfg.n_items)
    for sl, scores in score_windows(model, windows, batch_size, device, event_text_table):
        if filter_seen:
            rows = seen[sl] if seen is not None else windows.items[sl]
            scores = mask_seen(scores, torch.from_numpy(rows.astype(np.int64)).to(scores.device))
        acc.add(scores, torch.from_numpy(targets[sl] - 1).to(scores.device))
    return acc.summary()


def mask_seen(scores: torch.Tensor, seen_items: torch.Tensor) -> torch.Tensor:
    """Set the scores of items in ``seen_items`` (B, T) 1-based (0 = none) to -inf."""
    idx = (seen_items - 1).clamp(min=0)
    fill = torch.where(seen_items > 0, float("-inf"), 0.0).to(scores.dtype)
    return scores.scatter_add(1, idx, fill)


def _lr_factor(step: int, total: int, cfg: TrainConfig, elapsed: float = 0.0) -> float:
    """Warmup (``warmup_steps``, or 5% of a cosine run's time budget if that comes first), then
    constant or cosine decay. With a time budget the cosine runs on whichever is
    further along, steps or time, so a slow machine still finishes its decay inside the budget
    (runs are then only as deterministic as the machine's speed; without a budget they are exact)."""
    warm = min(1.0, (step + 1) / max(cfg.warmup_steps, 1))
    if cfg.schedule == "cosine" and cfg.time_budget_s:
        # a short budget: the warmup also ends once 5% of the budget is spent
        warm = max(warm, min(1.0, elapsed / (0.05 * cfg.time_budget_s)))
    if cfg.schedule == "cosine" and total > 0:
        prog = min(1.0, step / total)
        if cfg.time_budget_s:
            prog = max(prog, min(1.0, elapsed / cfg.time_budget_s))
        return warm * (cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * prog)))
    return warm


def _batches(windows: Windows, batch_size: int, rng: np.random.Generator) -> list[np.ndarray]:
    """Shuffled batches of similar length (less padding): shuffle, sort chunks of 32 batches
    by length, cut into batches, shuffle the batch order."""
    n = len(windows)
    order = rng.permutation(n)
    lengths = (windows.types > 0).sum(1)
    chunk = batch_size * 32
    batches: list[np.ndarray] = []
    for s in range(0, n, chunk):
        part = order[s:s + chunk]
        part = part[np.argsort(-lengths[part], kind="stable")]
        batches.extend(part[i:i + batch_size] for i in range(0, len(part), batch_size))
    rng.shuffle(batches)  # type: ignore[arg-type]
    return batches


class _Ranks:
    """This process's place in the ``torch.distributed`` group, and the points where ranks agree
    (one rank, and every agreement a no-op, when no group is set up)."""

    def __init__(self, device: str) -> None:
        self.on = dist.is_available() and dist.is_initialized()
        self.rank = dist.get_rank() if self.on else 0
        self.world = dist.get_world_size() if self.on else 1
        self.device = device  # NCCL reduces tensors on the GPU, gloo on the CPU

    @property
    def main(self) -> bool:
        return self.rank == 0

    def share(self, idx: np.ndarray) -> np.ndarray:
        """This rank's rows of a global batch (strided: the batch is sorted by length, so every
        rank gets rows of similar length)."""
        return idx[self.rank::self.world]

    def total(self, values: list[float]) -> list[float]:
        """Element-wise sum over ranks."""
        if self.world == 1:
            return values
        t = torch.tensor(values, dtype=torch.float64, device=self.device)
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
        return t.tolist()

    def main_number(self, value: float) -> float:
        """Rank 0's ``value`` on every rank (one small tensor: cheap enough for every step)."""
        if self.world == 1:
            return value
        t = torch.tensor([value], dtype=torch.float64, device=self.device)
        dist.broadcast(t, src=0)
        return float(t.item())

    def from_main(self, value: Any) -> Any:
        """Rank 0's ``value`` (any picklable object) on every rank."""
        if self.world == 1:
            return value
        box = [value]
        dist.broadcast_object_list(box, src=0, device=torch.device(self.device))
        return box[0]

    def check_same(self, fingerprint: str) -> None:
        """Fail on every rank unless all ranks train on the same windows with the same settings."""
        if self.world == 1:
            return
        seen: list[Any] = [None] * self.world
        dist.all_gather_object(seen, fingerprint)
        if len(set(seen)) > 1:
            raise ValueError(f"ranks disagree on the training data or settings (fingerprints by rank: {seen}); "
                             "every node must read the same log and the same recipe")

    def copy_main_weights(self, model: nn.Module) -> None:
        if self.world > 1:
            for p in model.parameters():
                dist.broadcast(p.data, src=0)


def _job_fingerprint(windows: Windows, model_cfg: ModelConfig, train_cfg: TrainConfig) -> str:
    h = hashlib.sha256()
    for a in (windows.items, windows.types, windows.values, windows.targets):
        h.update(np.ascontiguousarray(a).tobytes())
    cfg = {k: v for k, v in train_cfg.to_dict().items() if k not in ("threads", "device")}
    h.update(json.dumps([model_cfg.to_dict(), cfg], sort_keys=True, default=str).encode())
    return h.hexdigest()[:16]


class _ShareLoss(nn.Module):
    """A rank's share of a global batch's loss, as the module DDP wraps (DDP syncs gradients of
    what runs through its ``forward``).

    The loss of a batch is a mean over its M target positions; a rank with m of them returns its
    mean times ``m * world / M``, so the average DDP takes over ranks is the mean over the whole
    batch. A rank with no target in its share returns a zero that touches every parameter.
    """

    def __init__(self, model: FeedbackTransformer, label_smoothing: float, bf16: bool,
                 event_text_table: torch.Tensor | None, negatives: NegativeFeedback | None = None) -> None:
        super().__init__()
        self.model = model
        self.label_smoothing, self.bf16 = label_smoothing, bf16
        self.event_text_table = event_text_table  # a plain attribute: DDP neither syncs nor owns it
        self.negatives = negatives

    def forward(self, t: dict[str, torch.Tensor] | None, scale: float) -> torch.Tensor:  # type: ignore[override]
        if t is None:
            return sum(p.sum() for p in self.model.parameters()) * 0.0  # type: ignore[return-value]
        return batch_loss(self.model, t, self.label_smoothing, self.bf16, self.event_text_table, self.negatives) * scale


def train(
    model_cfg: ModelConfig,
    train_cfg: TrainConfig,
    train_seqs: Sequences,
    valid: ValidationSet | None = None,
    item_text: np.ndarray | None = None,
    event_text: np.ndarray | None = None,
    progress: bool = True,
    log: Callable[[str], None] | None = None,
) -> TrainResult:
    """Train a model on ``train_seqs`` (every target-type event after the first is a target).

    ``valid`` (optional) drives early stopping and best-epoch selection by NDCG@10;
    ``item_text`` is an (N+1, text_dim) matrix of item text vectors (row 0 and text-less items
    zero); ``event_text`` a (K, text_dim) matrix indexed by ``Sequences.text_ids``.

    Called on every rank of a ``torch.distributed`` group (same arguments everywhere), it trains
    one model data-parallel: the global batch stays ``batch_size``, rank 0 validates, and every
    rank returns rank 0's chosen weights and history.
    """
    if train_cfg.threads:
        torch.set_num_threads(train_cfg.threads)
    device = train_cfg.device
    ranks = _Ranks(device)
    if not ranks.main:
        progress, log = False, None
    torch.manual_seed(train_cfg.seed)
    rng = np.random.default_rng(train_cfg.seed)  # the same batches, in the same order, on every rank
    windows = training_windows(train_seqs, model_cfg.max_len, train_cfg.stride)
    if len(windows) == 0:
        raise ValueError("no training windows: every user has fewer than 2 events")
    ranks.check_same(_job_fingerprint(windows, model_cfg, train_cfg))
    if model_cfg.use_request_gap and windows.next_gaps is not None:
        model_cfg = dataclasses.replace(model_cfg, request_gap_max=int(windows.next_gaps.max()))
    model = FeedbackTransformer(model_cfg).to(device)
    if item_text is not None and model_cfg.text_dim > 0:
        model.set_item_text(torch.from_numpy(np.asarray(item_text, dtype=np.float32)).to(device))
    ev_table = None
    if event_text is not None and model_cfg.text_dim > 0 and len(event_text):
        et = np.concatenate([np.asarray(event_text, np.float32), np.zeros((1, model_cfg.text_dim), np.float32)])
        ev_table = torch.from_numpy(et).to(device)
    net: nn.Module = _ShareLoss(model, train_cfg.label_smoothing, train_cfg.bf16, ev_table, train_cfg.negatives)
    if ranks.world > 1:
        from torch.nn.parallel import DistributedDataParallel

        # Construction broadcasts rank 0's parameters and buffers; the buffers (item text) never
        # change, so they are not re-sent every step. The event-text projection sits out the steps
        # whose share has no event text: DDP must look for parameters without a gradient.
        dev = torch.device(device)
        net = DistributedDataParallel(net, device_ids=[dev] if dev.type == "cuda" else None,
                                      forward_sync_buffers=False,
                                      find_unused_parameters=model.event_text_proj is not None)
        # Dropout: each rank's rows draw their own masks, as rows of one batch do in one process.
        torch.manual_seed(int(np.random.SeedSequence([train_cfg.seed, ranks.rank]).generate_state(1)[0]))
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        (decay if p.ndim >= 2 and "emb" not in name else no_decay).append(p)
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": train_cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=train_cfg.lr, betas=(0.9, 0.98),
    )
    steps_per_epoch = math.ceil(len(windows) / train_cfg.batch_size)
    total_steps = steps_per_epoch * train_cfg.epochs
    # The learning rate follows the clock only with a time budget and a cosine decay; then every
    # rank reads rank 0's clock, so all apply the same rate.
    clocked = bool(train_cfg.time_budget_s) and train_cfg.schedule == "cosine"
    has_target = windows.targets > 0  # (N, T)
    best_state: dict[str, torch.Tensor] | None = None
    best_score, best_epoch, best_metrics = -1.0, 0, {}
    history: list[dict[str, float]] = []
    bad_checks, step = 0, 0
    t0 = time.perf_counter()
    say = log or (lambda s: None)
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=train_cfg.epochs, desc="train", unit="epoch", dynamic_ncols=True)
    epoch = 0
    for epoch in range(1, train_cfg.epochs + 1):
        net.train()
        total, count = 0.0, 0
        cut = False  # the budget ran out inside this epoch (every rank reads rank 0's clock)
        for idx in _batches(windows, train_cfg.batch_size, rng):
            elapsed = time.perf_counter() - t0
            if clocked:
                elapsed = ranks.main_number(elapsed)
                if count and elapsed >= train_cfg.time_budget_s:  # type: ignore[operator]
                    cut = True
                    break
            for g in opt.param_groups:
                g["lr"] = train_cfg.lr * _lr_factor(step, total_steps, train_cfg, elapsed)
            if ranks.world == 1:
                loss = net(_tensors(windows.select(idx), device), 1.0)
            else:
                mine = ranks.share(idx)
                m_all, m_mine = int(has_target[idx].sum()), int(has_target[mine].sum())
                t = _tensors(windows.select(mine), device) if m_mine else None
                loss = net(t, m_mine * ranks.world / max(m_all, 1))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            step += 1
            total += float(loss.detach()) / ranks.world  # summed over ranks below: the batch's mean
            count += 1
        # Stop when the next epoch would not finish inside the time budget (epochs take similar
        # time); every rank stops when any rank would run out. A clocked run (cosine over the
        # budget) goes on instead: its rate is low by then, and the cut above ends it in time.
        elapsed = time.perf_counter() - t0
        budget = train_cfg.time_budget_s
        out_of_time = cut or (bool(budget) and (elapsed if clocked else elapsed * (epoch + 1) / epoch) >= budget)
        total, late = ranks.total([total, float(out_of_time)])
        out_of_time = late > 0
        rec: dict[str, float] = {"epoch": epoch, "loss": total / max(count, 1), "seconds": elapsed}
        stop = out_of_time
        if ranks.main and valid is not None and (epoch % train_cfg.eval_every == 0 or epoch == train_cfg.epochs or out_of_time):
            m = evaluate_windows(model, valid.windows, valid.targets, device=device, event_text_table=ev_table)
            rec.update({f"val_{k}": v for k, v in m.items() if k in ("NDCG@10", "HR@10")})
            if m["NDCG@10"] > best_score:
                best_score, best_epoch, best_metrics, bad_checks = m["NDCG@10"], epoch, m, 0
                best_state = copy.deepcopy(model.state_dict())
            else:
                bad_checks += 1
            stop = stop or bad_checks >= train_cfg.patience
        history.append(rec)
        msg = " ".join(f"{k}={v:.4f}" if isinstance(v, float) else f"{k}={v}" for k, v in rec.items())
        say(msg)
        if bar is not None:
            bar.update(1)
            bar.set_postfix({k: round(v, 4) for k, v in rec.items() if k != "epoch"})
        if valid is not None and ranks.world > 1:
            stop = bool(ranks.main_number(float(stop)))  # rank 0 validated: it decides for all
        if stop:
            if out_of_time:
                say(f"time budget reached at epoch {epoch}")
            else:
                say(f"early stop at epoch {epoch} (best {best_epoch}: NDCG@10={best_score:.4f})")
            break
    if bar is not None:
        bar.close()
    train_seconds = time.perf_counter() - t0
    if best_state is not None:
        model.load_state_dict(best_state)
    else:
        best_epoch = epoch
    if valid is not None and ranks.world > 1:
        # Rank 0 chose the epoch: every rank returns its weights and its record of the run.
        best_epoch, best_metrics, history = ranks.from_main((best_epoch, best_metrics, history))
        ranks.copy_main_weights(model)
    model.eval()
    return TrainResult(model, best_epoch, best_metrics, history, train_seconds, epoch)
