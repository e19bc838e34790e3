"""Prequential replay: recommend before each event, score the hit, then learn from it.

Protocol (ML-1M, ``liverec replay movielens PATH``):

1. All events in global time order (stable: ties keep file order within a user). The first
   ``train_frac`` (80%) are the **training period**, the rest the **replay window**.
2. A Transformer is trained on the training period (its last event per user is the validation
   target for early stopping).
3. For each window event (user ``u``, item ``i``), in time order: rank every item for ``u`` from
   ``u``'s events before this one (items ``u`` already had are excluded, as the service does),
   score HR@10 and NDCG@10 of ``i``; then the event becomes part of ``u``'s history.
4. Three recommenders see the same stream:
   (a) **online**: the Transformer, fine-tuned every ``cadence`` events on the recent users'
       sequences mixed with replayed training-period windows, new items initialised from their
       text, each update guarded (rolled back if the validation NDCG on the newest events drops
       by more than ``tolerance``; what an update did not learn from, its held-out events or all
       of a rejected update's, joins the next one); between updates its output bias takes one SGD step per event
       (``bias_lr``, :func:`~liverec.learning.finetune.bias_step`) after each chunk of ``chunk``
       events has been ranked (so an event is always ranked before it is learned from);
   (b) **frozen**: the same Transformer, never updated;
   (c) **rtrec**: PyPI ``rtrec`` SLIM, bulk-fitted on the training period, then fed the window
       with ``partial_fit`` every ``rtrec_batch`` events.
   A user's *state* (history) is always exact; only model weights follow a cadence.

Subsets (documented in the output): ``max_events`` keeps the first N window events,
``user_stride`` keeps the window events of every k-th user (all users' training data is kept).
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from ..learning.finetune import FineTuneConfig, FineTuner, bias_step, init_new_items
from ..model.data import Sequences, Windows, training_windows
from ..model.features import gap_bucket, gaps_from_timestamps, value_bucket
from ..model.negatives import NegativeFeedback
from ..model.train import TrainConfig, TrainResult, ValidationSet, train
from ..model.transformer import FeedbackTransformer, ModelConfig
from .protocol import InteractionLog, load_movielens
from .report import machine


@dataclass
class ReplayConfig:
    """Settings of one replay run (all stored in the output)."""

    train_frac: float = 0.8
    max_events: int | None = None  # first N window events (None: all)
    user_stride: int = 1  # window events of every k-th user
    # Defaults: the learner chosen on the validation replay (benchmarks/results/HISTORY.md, runs 4-7)
    cadence: int = 1000  # window events between online updates
    chunk: int = 512  # events scored per batch (and, online, per output-bias step)
    bias_lr: float = 0.03  # online: per-event SGD rate of the output bias between updates (0: off)
    # model trained on the training period
    d_model: int = 64
    n_blocks: int = 2
    max_len: int = 200
    dropout: float = 0.2
    epochs: int = 300  # early stopping (patience 4) ends training long before
    train_budget_s: float | None = 4000.0
    lr: float = 1e-3
    batch_size: int = 128
    # online updates
    finetune: FineTuneConfig = field(default_factory=lambda: FineTuneConfig(steps=60, lr=1e-3, replay_ratio=0.25))
    updates: bool = True  # online: fine-tuning updates every ``cadence`` events (False: the output bias alone learns)
    val_share: float = 0.1  # newest share of each cadence's events held out by the guard rail
    recent: str = "events"  # "events": one example per new event; "windows": the users' newest windows
    passes: float = 3.0  # with recent="events": passes over the new events per update (sets the steps)
    # Events an update did not learn from (the guard rail's held-out events; all of a rejected
    # update's events) join the next update, up to ``carry_max`` of the newest (0: dropped).
    carry_max: int = 10_000
    # rtrec
    rtrec: bool = True
    rtrec_batch: int = 1000
    rtrec_parallel: bool = False  # refit item columns in worker processes (many-core machines)
    seed: int = 0
    device: str = "cpu"
    # the not-to-recommend term in training the frozen model (the online updates: finetune.negatives)
    negatives: NegativeFeedback | None = None


@dataclass
class Stream:
    """The log in global time order, with per-event positions in their user's sequence."""

    log: InteractionLog
    order: np.ndarray  # (E,) flat event indices in time order
    user_of: np.ndarray  # (E,) user row of each flat event
    start_of: np.ndarray  # (E,) flat index of the user's first event
    cut: int  # events order[:cut] are the training period
    vb: np.ndarray  # (E,) value buckets
    gb: np.ndarray  # (E,) gap buckets


def make_stream(log: InteractionLog, train_frac: float) -> Stream:
    seqs = log.seqs
    e = seqs.n_events
    flat = np.arange(e)
    order = np.lexsort((flat, seqs.timestamps))
    user_of = np.repeat(np.arange(seqs.n_users), seqs.lengths())
    start_of = seqs.offsets[:-1][user_of]
    vb = value_bucket(seqs.values).astype(np.int64)
    gb = gap_bucket(gaps_from_timestamps(seqs.timestamps, seqs.offsets)).astype(np.int64)
    return Stream(log, order, user_of, start_of, int(round(train_frac * e)), vb, gb)


def prefix_windows(s: Stream, events: np.ndarray, max_len: int) -> Windows:
    """Left-padded input windows of the events *before* each flat event in ``events``: (B, T).

    The request time is the predicted event's own time, so the newest position's request gap is
    that event's gap bucket (and every earlier position's is its successor's gap)."""
    seqs = s.log.seqs
    ev = np.asarray(events, dtype=np.int64)
    idx = ev[:, None] - max_len + np.arange(max_len)[None, :]  # (B, T) flat indices
    valid = idx >= s.start_of[ev][:, None]
    safe = np.where(valid, idx, 0)
    z = np.zeros_like(safe)
    return Windows(
        np.where(valid, seqs.items[safe].astype(np.int64), z),
        np.where(valid, seqs.types[safe].astype(np.int64), z),
        np.where(valid, s.vb[safe], z),
        np.where(valid, s.gb[safe], z),
        np.full_like(safe, -1),
        z.copy(),
        np.where(valid, s.gb[np.minimum(safe + 1, len(s.gb) - 1)], z),
    )


def event_examples(s: Stream, events: np.ndarray, max_len: int) -> Windows:
    """One training example per event: the user's prefix as input, the event's item as the target
    after the last position (so each new event is learned from once, nothing older is re-taught)."""
    w = prefix_windows(s, events, max_len)
    targets = np.zeros_like(w.items)
    targets[:, -1] = s.log.seqs.items[np.asarray(events, dtype=np.int64)]
    return Windows(w.items, w.types, w.values, w.gaps, w.text_ids, targets, w.next_gaps)


def subset_sequences(s: Stream, keep: np.ndarray, users: np.ndarray | None = None) -> Sequences:
    """Sequences of the flat events where ``keep`` (E,) is True, for ``users`` (default all)."""
    seqs = s.log.seqs
    if users is not None:
        sel = np.zeros(seqs.n_users, dtype=bool)
        sel[users] = True
        keep = keep & sel[s.user_of]
    lengths = np.bincount(s.user_of[keep], minlength=seqs.n_users)
    if users is not None:
        lengths = lengths[np.asarray(users)]
    offsets = np.zeros(len(lengths) + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    return Sequences(offsets, seqs.items[keep], seqs.types[keep], seqs.values[keep], seqs.timestamps[keep], seqs.text_ids[keep])


@torch.no_grad()
def rank_events(model: FeedbackTransformer, s: Stream, events: np.ndarray, max_len: int, device: str, chunk: int = 512,
                bias_lr: float = 0.0) -> np.ndarray:
    """(B,) 0-based rank of each event's item among all items, the user's earlier items excluded.

    ``bias_lr > 0``: after each chunk is ranked, the model's output bias learns from it
    (:func:`~liverec.learning.finetune.bias_step`), so later chunks are ranked by the updated bias."""
    seqs = s.log.seqs
    model.eval()
    out = np.empty(len(events), dtype=np.int64)
    for a in range(0, len(events), chunk):
        ev = np.asarray(events[a:a + chunk], dtype=np.int64)
        w = prefix_windows(s, ev, max_len)
        t = {k: torch.from_numpy(getattr(w, k)).to(device) for k in ("items", "types", "values", "gaps", "next_gaps")}
        scores = model.score_last(t["items"], t["types"], t["values"], t["gaps"], next_gaps=t.get("next_gaps"))  # (B, N)
        # exclude every earlier item of the user (not only those inside the window)
        rows, cols = [], []
        for r, e in enumerate(ev.tolist()):
            st = int(s.start_of[e])
            prev = seqs.items[st:e]
            prev = prev[prev > 0]
            rows.append(np.full(len(prev), r))
            cols.append(prev.astype(np.int64) - 1)
        if rows:
            rr = torch.from_numpy(np.concatenate(rows)).to(device)
            cc = torch.from_numpy(np.concatenate(cols)).to(device)
            scores[rr, cc] = float("-inf")
        tgt = torch.from_numpy(seqs.items[ev].astype(np.int64) - 1).to(device)
        target_score = scores.gather(1, tgt[:, None])  # (B, 1)
        out[a:a + len(ev)] = (scores > target_score).sum(1).cpu().numpy()
        if bias_lr > 0:
            bias_step(model, scores, tgt, bias_lr)
    return out


def ndcg_per_event(ranks: np.ndarray, k: int = 10) -> np.ndarray:
    """NDCG@k of each event from the 0-based rank of its item (one relevant item per event)."""
    r = np.asarray(ranks, dtype=np.float64)
    return np.where(r < k, 1.0 / np.log2(r + 2.0), 0.0)


def metrics_from_ranks(ranks: np.ndarray, k: int = 10) -> dict[str, float]:
    r = np.asarray(ranks, dtype=np.float64)
    if len(r) == 0:
        return {f"NDCG@{k}": float("nan"), f"HR@{k}": float("nan"), "events": 0}
    return {f"NDCG@{k}": float(np.mean(ndcg_per_event(r, k))), f"HR@{k}": float(np.mean(r < k)), "events": int(len(r))}


def save_model(model: FeedbackTransformer, path: Path, meta: dict[str, Any] | None = None) -> None:
    """Weights as safetensors, the architecture (and ``meta``) in the file's metadata."""
    from safetensors.torch import save_file

    path.parent.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    save_file(tensors, str(path), metadata={"model_config": json.dumps(model.cfg.to_dict()), "meta": json.dumps(meta or {})})


def load_model(path: Path, device: str = "cpu") -> FeedbackTransformer:
    """The model :func:`save_model` wrote."""
    from safetensors import safe_open
    from safetensors.torch import load_file

    with safe_open(str(path), framework="pt") as f:
        cfg = ModelConfig.from_dict(json.loads(f.metadata()["model_config"]))
    model = FeedbackTransformer(cfg)
    model.load_state_dict(load_file(str(path)))
    return model.to(device).eval()


def train_frozen(s: Stream, cfg: ReplayConfig, log: Callable[[str], None]) -> TrainResult:
    """Train on the training period; each user's last training event validates (early stopping)."""
    keep = np.zeros(s.log.seqs.n_events, dtype=bool)
    keep[s.order[: s.cut]] = True
    train_all = subset_sequences(s, keep)
    last = {}
    for e in s.order[: s.cut]:
        last[int(s.user_of[e])] = int(e)
    users = np.array(sorted(u for u, e in last.items() if e - int(s.start_of[e]) >= 2), dtype=np.int64)
    val_events = np.array([last[u] for u in users], dtype=np.int64)
    keep_train = keep.copy()
    keep_train[val_events] = False
    train_seqs = subset_sequences(s, keep_train)
    valid = ValidationSet(prefix_windows(s, val_events, cfg.max_len), s.log.seqs.items[val_events].astype(np.int64))
    mc = ModelConfig(n_items=s.log.n_items, max_len=cfg.max_len, d_model=cfg.d_model, n_blocks=cfg.n_blocks, dropout=cfg.dropout)
    tc = TrainConfig(epochs=cfg.epochs, batch_size=cfg.batch_size, lr=cfg.lr, patience=4, time_budget_s=cfg.train_budget_s,
                     stride=cfg.max_len, seed=cfg.seed, device=cfg.device, negatives=cfg.negatives)
    log(f"training on {train_seqs.n_events} events ({len(users)} validation users)")
    res = train(mc, tc, train_seqs, valid, progress=False, log=log)
    log(f"trained: best epoch {res.best_epoch}, val {res.best_metrics.get('NDCG@10', float('nan')):.4f}, {res.train_seconds:.0f}s")
    del train_all
    return res


class RtrecBaseline:
    """rtrec SLIM fed the same stream (bulk fit, then partial fits every ``batch`` events)."""

    def __init__(self, seed: int, parallel: bool = False) -> None:
        from rtrec.models import SLIM
        from rtrec.recommender import Recommender

        self.rec = Recommender(SLIM(random_state=seed))
        self.parallel = parallel

    def fit(self, users: np.ndarray, items: np.ndarray, ts: np.ndarray, ratings: np.ndarray) -> None:
        import contextlib
        import io
        import pandas as pd

        df = pd.DataFrame({"user": users, "item": items, "tstamp": ts, "rating": ratings})
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            self.rec.bulk_fit(df, parallel=self.parallel)

    def partial_fit(self, rows: list[tuple[int, int, float, float]]) -> None:
        import contextlib
        import io

        # add the interactions, then refit the touched item columns (in parallel where allowed)
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            model = self.rec.get_model()
            model.add_interactions(rows, record_interactions=True)
            model._fit_recorded(parallel=self.parallel, progress_bar=False)

    def ranks(self, users: list[int], targets: list[int], k: int = 10) -> np.ndarray:
        """Rank of each target in the user's top-k (k when absent: counts as a miss)."""
        lists = self.rec.recommend_batch(users, top_k=k, filter_interacted=True)
        out = np.full(len(users), k, dtype=np.int64)
        for r, (lst, t) in enumerate(zip(lists, targets)):
            if t in lst:
                out[r] = lst.index(t)
        return out


def run_replay(
    path: str | Path,
    cfg: ReplayConfig,
    out_dir: Path | None = None,
    log: Callable[[str], None] = print,
    model_path: Path | None = None,
    save_to: Path | None = None,
) -> dict[str, Any]:
    """Run the recommenders over the replay window and return the summary.

    ``model_path``: start from a model trained on the same training period (safetensors written
    by :func:`save_model`) instead of training one; ``save_to``: write the trained model there.
    """
    torch.manual_seed(cfg.seed)
    t_load = time.perf_counter()
    mlog = load_movielens(path)
    s = make_stream(mlog, cfg.train_frac)
    seqs = mlog.seqs
    window = s.order[s.cut:]
    if cfg.user_stride > 1:
        window = window[s.user_of[window] % cfg.user_stride == 0]
    if cfg.max_events is not None:
        window = window[: cfg.max_events]
    log(f"{seqs.n_events} events, training period {s.cut}, replaying {len(window)} events")
    if model_path is not None:
        frozen = load_model(model_path, cfg.device)
        if frozen.cfg.n_items != mlog.n_items:
            raise ValueError(f"{model_path}: model has {frozen.cfg.n_items} items, the data {mlog.n_items}")
        log(f"loaded the training-period model from {model_path}")
    else:
        frozen = train_frozen(s, cfg, log).model.to(cfg.device)
        if save_to is not None:
            save_model(frozen, save_to, {"train_frac": cfg.train_frac, "source": s.log.source_fingerprint,
                                         "item_ids": [str(i) for i in mlog.item_ids]})
    online = FeedbackTransformer(frozen.cfg).to(cfg.device)
    online.load_state_dict(frozen.state_dict())
    tuner = FineTuner(online, replace(cfg.finetune, device=cfg.device, seed=cfg.seed))
    # Replay data for the online learner: training-period windows of every user.
    keep_train = np.zeros(seqs.n_events, dtype=bool)
    keep_train[s.order[: s.cut]] = True
    replay_windows = training_windows(subset_sequences(s, keep_train), cfg.max_len)
    # Items first seen in the window get a text-based start (hashed title + genres).
    from ..model.text import HashingEncoder

    text = np.zeros((mlog.n_items + 1, 64), dtype=np.float32)
    text[1:] = HashingEncoder(64).encode(mlog.item_texts)
    trained_items = np.zeros(mlog.n_items + 1, dtype=bool)
    trained_items[seqs.items[s.order[: s.cut]]] = True
    trained_items[0] = False
    rt = None
    if cfg.rtrec:
        rt = RtrecBaseline(cfg.seed, parallel=cfg.rtrec_parallel)
        tr = s.order[: s.cut]
        t0 = time.perf_counter()
        rt.fit(s.user_of[tr], seqs.items[tr].astype(np.int64), seqs.timestamps[tr], np.nan_to_num(seqs.values[tr], nan=1.0))
        log(f"rtrec bulk fit {time.perf_counter() - t0:.0f}s")
    ranks = {"online": np.empty(len(window), np.int64), "frozen": np.empty(len(window), np.int64)}
    if rt is not None:
        ranks["rtrec"] = np.empty(len(window), np.int64)
    seconds = {k: 0.0 for k in ranks}
    updates: list[dict[str, Any]] = []
    rt_pending: list[tuple[int, int, float, float]] = []
    global_pos = {int(e): p for p, e in enumerate(s.order[s.cut:].tolist())}  # window event -> position in time
    pending = np.empty(0, dtype=np.int64)  # window events no update has learned from yet
    for a in range(0, len(window), cfg.cadence):
        block = window[a:a + cfg.cadence]
        t0 = time.perf_counter()
        ranks["online"][a:a + len(block)] = rank_events(online, s, block, cfg.max_len, cfg.device, cfg.chunk, cfg.bias_lr)
        seconds["online"] += time.perf_counter() - t0
        t0 = time.perf_counter()
        ranks["frozen"][a:a + len(block)] = rank_events(frozen, s, block, cfg.max_len, cfg.device, cfg.chunk)
        seconds["frozen"] += time.perf_counter() - t0
        if rt is not None:
            t0 = time.perf_counter()
            for b in range(0, len(block), cfg.rtrec_batch):
                sub = block[b:b + cfg.rtrec_batch]
                ranks["rtrec"][a + b:a + b + len(sub)] = rt.ranks(s.user_of[sub].tolist(), seqs.items[sub].astype(np.int64).tolist())
                rt.partial_fit([(int(s.user_of[e]), int(seqs.items[e]), float(seqs.timestamps[e]), float(np.nan_to_num(seqs.values[e], nan=1.0))) for e in sub])
            seconds["rtrec"] += time.perf_counter() - t0
        # ---- online update on everything up to the end of this block ----------------------------
        t0 = time.perf_counter()
        now_pos = s.cut + global_pos[int(block[-1])] + 1  # events order[:now_pos] have happened
        n_val = max(1, int(len(block) * cfg.val_share))
        val_events = block[-n_val:]
        happened = np.zeros(seqs.n_events, dtype=bool)
        happened[s.order[:now_pos]] = True
        happened[val_events] = False  # held out from this update's training
        learn_events = block[:-n_val] if len(block) > n_val else block
        carried = len(pending)
        learn_events = np.concatenate([pending, learn_events])
        if cfg.recent == "events":
            recent = event_examples(s, learn_events, cfg.max_len)
            share_new = 1.0 - cfg.finetune.replay_ratio
            tuner.cfg.steps = max(1, int(round(cfg.passes * len(learn_events) / max(cfg.finetune.batch_size * share_new, 1.0))))
        else:
            recent = training_windows(subset_sequences(s, happened, np.unique(s.user_of[learn_events])), cfg.max_len)
        new_items = np.flatnonzero(~trained_items & np.isin(np.arange(mlog.n_items + 1), seqs.items[block]))
        n_new = init_new_items(online, new_items, np.flatnonzero(trained_items), text) if len(new_items) else 0
        trained_items[new_items] = True

        def validate(model: FeedbackTransformer) -> np.ndarray:  # per held-out event (the guard may test the paired drop)
            return ndcg_per_event(rank_events(model, s, val_events, cfg.max_len, cfg.device, cfg.chunk))

        result = tuner.guarded_update(recent, replay_windows, validate) if len(recent) and cfg.updates else None
        unlearned = val_events if result is None or result.accepted else np.concatenate([learn_events, val_events])
        pending = unlearned[-cfg.carry_max:] if cfg.carry_max > 0 else pending
        seconds["online"] += time.perf_counter() - t0
        if result is not None:
            updates.append({"after_events": int(a + len(block)), "accepted": result.accepted, "val_before": round(result.before, 4),
                            "val_after": round(result.after, 4), "loss": round(result.loss, 4), "new_items": n_new,
                            "recent_windows": result.recent_windows, "carried": carried})
        done = a + len(block)
        msg = " ".join(f"{k}={metrics_from_ranks(v[:done])['NDCG@10']:.4f}" for k, v in ranks.items())
        log(f"{done}/{len(window)} events: NDCG@10 {msg}")
    summary: dict[str, Any] = {k: metrics_from_ranks(v) for k, v in ranks.items()}
    summary["events"] = int(len(window))
    summary["events_per_second"] = float(len(window) / max(seconds["online"], 1e-9))
    summary["events_per_second_by_method"] = {k: float(len(window) / max(v, 1e-9)) for k, v in seconds.items()}
    summary["online_vs_frozen"] = summary["online"]["NDCG@10"] / max(summary["frozen"]["NDCG@10"], 1e-12)
    summary["updates"] = updates
    summary["config"] = {**asdict(cfg), "finetune": asdict(tuner.cfg)}  # as run (device, steps)
    summary["subset"] = {"max_events": cfg.max_events, "user_stride": cfg.user_stride, "window_events_total": int(len(s.order) - s.cut)}
    summary["seconds_total"] = round(time.perf_counter() - t_load, 1)
    summary["machine"] = machine()  # events/s depend on it
    summary["over_time"] = _over_time(ranks, window_points=20)
    if out_dir is not None:
        _plot(summary["over_time"], out_dir / "replay.png")
        summary["plot"] = str(out_dir / "replay.png")
    return summary


def _over_time(ranks: dict[str, np.ndarray], window_points: int) -> dict[str, Any]:
    n = len(next(iter(ranks.values())))
    edges = np.linspace(0, n, window_points + 1).astype(int)
    out: dict[str, Any] = {"events": edges[1:].tolist()}
    for k, r in ranks.items():
        out[k] = [metrics_from_ranks(r[a:b])["NDCG@10"] if b > a else float("nan") for a, b in zip(edges[:-1], edges[1:])]
    return out


def _plot(over: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    for k, v in over.items():
        if k != "events":
            ax.plot(over["events"], v, marker="o", ms=3, label=k)
    ax.set_xlabel("replayed events")
    ax.set_ylabel("NDCG@10 (per segment)")
    ax.set_title("Prequential replay, ML-1M last 20% by time")
    ax.legend()
    ax.grid(alpha=0.3)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def write(summary: dict[str, Any], out: Path) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(summary, indent=2))
