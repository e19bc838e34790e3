"""The rating view: predict the value of a held-out rating from the Transformer's sequence state.

A small regressor reads the trained Transformer's frozen state before an event (``h``, what the
model knows about the user at that point, including the values of earlier ratings) and the
rated item's vector ``e``:

    r_hat = mean + b[item] + MLP([h, e, h * e])

It is trained with squared error on the rating values of the training positions (each user's
newest ``max_len`` training events), stopped early on the validation ratings, and reports RMSE
and MAE on the test ratings (the leave-one-out test event of every evaluated user whose event
has a value). In the same run, on the same test ratings:

* ``global_mean``: the mean training rating;
* ``bias`` (user + item biases, ``surprise.BaselineOnly``, ALS-fitted);
* ``svd`` (matrix factorisation, ``surprise.SVD``: biases + 100 factors, SGD).

The baselines are fitted on every rating before the test position (training + validation).
"""

from __future__ import annotations

import time
from typing import Any, Callable

import numpy as np
import torch
from torch import nn

from liverec.evaluation.protocol import InteractionLog, Split
from liverec.model.data import Sequences, Windows, training_windows
from liverec.model.features import is_target_type
from liverec.model.transformer import FeedbackTransformer


def has_ratings(split: Split) -> bool:
    """Whether the log carries rating values at its held-out test positions."""
    return split.test_values is not None and bool(np.isfinite(split.test_values).any())


def _training_positions(seqs: Sequences, max_len: int) -> tuple[Windows, np.ndarray]:
    """Each user's newest training window and, per window position, the flat event index of its
    target (-1: no target)."""
    windows = training_windows(seqs, max_len, None)
    # the same windows over event numbers: targets become event index + 1
    numbered = Sequences(seqs.offsets, np.arange(1, seqs.n_events + 1, dtype=np.int64), seqs.types,
                         seqs.values, seqs.timestamps, seqs.text_ids)
    event = training_windows(numbered, max_len, None).targets - 1  # (W, T)
    ok = event >= 0
    ev = np.where(ok, event, 0)
    ok &= (seqs.items[ev] > 0) & is_target_type(seqs.types[ev]) & np.isfinite(seqs.values[ev])
    return windows, np.where(ok, event, -1)


@torch.no_grad()
def _states(model: FeedbackTransformer, windows: Windows, positions: np.ndarray | None,
            event_text_table: torch.Tensor | None, batch_size: int = 256) -> np.ndarray:
    """(M, D) frozen states: at every position where ``positions >= 0`` (row-major), or the last
    position of each window when ``positions`` is None."""
    from liverec.model.train import _event_text, _tensors

    model.eval()
    e = model.item_vectors()
    out: list[np.ndarray] = []
    for s in range(0, len(windows), batch_size):
        rows = np.arange(s, min(s + batch_size, len(windows)))
        t = _tensors(windows.select(rows), "cpu")
        cut = windows.items.shape[1] - t["items"].shape[1]  # _tensors trims all-padding columns
        if positions is None:
            h = model.encode(t["items"], t["types"], t["values"], t["gaps"], _event_text(t, event_text_table), e,
                             last_only=True, next_gaps=t.get("next_gaps"))[:, -1]  # (B, D)
        else:
            keep = torch.from_numpy(positions[rows][:, cut:] >= 0)
            if not bool(keep.any()):
                continue
            h = model.encode(t["items"], t["types"], t["values"], t["gaps"], _event_text(t, event_text_table), e,
                             next_gaps=t.get("next_gaps"))[keep]  # (M_b, D)
        out.append(h.numpy())
    return np.concatenate(out) if out else np.zeros((0, model.cfg.d_model), np.float32)


class RatingHead(nn.Module):
    """mean + item bias + MLP([h, e, h * e]) over frozen states ``h`` and item vectors ``e``."""

    def __init__(self, item_vectors: torch.Tensor, mean: float, hidden: int = 64, dropout: float = 0.1) -> None:
        super().__init__()
        d = item_vectors.shape[1]
        self.register_buffer("e", item_vectors)  # (N+1, D) frozen
        self.mean = mean
        self.item_bias = nn.Embedding(item_vectors.shape[0], 1)
        nn.init.zeros_(self.item_bias.weight)
        self.mlp = nn.Sequential(nn.LayerNorm(3 * d), nn.Linear(3 * d, hidden), nn.GELU(), nn.Dropout(dropout),
                                 nn.Linear(hidden, 1))

    def forward(self, h: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        """h (B, D), items (B,) 1-based -> (B,) predicted ratings."""
        e = self.e[items]  # (B, D)
        x = torch.cat([h, e, h * e], dim=1)  # (B, 3D)
        return self.mean + self.item_bias(items).squeeze(1) + self.mlp(x).squeeze(1)


def _errors(pred: np.ndarray, truth: np.ndarray) -> dict[str, float]:
    d = np.asarray(pred, np.float64) - np.asarray(truth, np.float64)
    return {"RMSE": float(np.sqrt(np.mean(d * d))), "MAE": float(np.mean(np.abs(d))), "ratings": int(len(d))}


def fit_rating_head(
    model: FeedbackTransformer, split: Split, event_text_table: torch.Tensor | None = None,
    epochs: int = 50, patience: int = 5, lr: float = 3e-3, batch_size: int = 256, seed: int = 0,
    time_budget_s: float = 120.0,
) -> tuple[RatingHead, dict[str, Any]]:
    """Train the head on the training positions' ratings, early-stopped on the validation
    ratings; returns the head (its best validation epoch) and a summary."""
    torch.manual_seed(seed)
    t0 = time.perf_counter()
    windows, pos = _training_positions(split.train, model.cfg.max_len)
    h_train = torch.from_numpy(_states(model, windows, pos, event_text_table))  # (M, D)
    flat = pos[pos >= 0]  # row-major order matches the states
    items = torch.from_numpy(split.train.items[flat].astype(np.int64))
    y = torch.from_numpy(split.train.values[flat].astype(np.float32))
    vmask = np.isfinite(split.valid_values)
    h_val = torch.from_numpy(_states(model, split.valid_windows.select(np.nonzero(vmask)[0]), None, event_text_table))
    v_items = torch.from_numpy(split.valid_targets[vmask])
    v_y = split.valid_values[vmask]
    with torch.no_grad():
        item_vecs = model.item_vectors().detach().clone()
    head = RatingHead(item_vecs, float(y.mean()))
    opt = torch.optim.AdamW(head.parameters(), lr=lr, weight_decay=1e-4)
    gen = torch.Generator().manual_seed(seed)
    best, best_state, bad, epoch = float("inf"), None, 0, 0
    for epoch in range(1, epochs + 1):
        head.train()
        for idx in torch.randperm(len(y), generator=gen).split(batch_size):
            loss = nn.functional.mse_loss(head(h_train[idx], items[idx]), y[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        head.eval()
        with torch.no_grad():
            rmse = _errors(head(h_val, v_items).numpy(), v_y)["RMSE"] if len(v_y) else 0.0
        if rmse < best - 1e-5:
            best, bad = rmse, 0
            best_state = {k: v.clone() for k, v in head.state_dict().items()}
        else:
            bad += 1
        if bad >= patience or time.perf_counter() - t0 > time_budget_s:
            break
    if best_state is not None:
        head.load_state_dict(best_state)
    head.eval()
    return head, {"train_ratings": int(len(y)), "epochs_run": epoch, "validation_RMSE": best,
                  "seconds": round(time.perf_counter() - t0, 1)}


def _prior_ratings(log: InteractionLog, split: Split) -> Any:
    """Every rating before the test position as a (user, item, rating) frame."""
    import pandas as pd

    p = split.test_prefix
    users = np.repeat(np.arange(p.n_users), p.lengths())
    ok = (p.items > 0) & np.isfinite(p.values)
    return pd.DataFrame({"u": users[ok], "i": p.items[ok].astype(np.int64), "r": p.values[ok].astype(np.float64)})


def rating_baselines(log: InteractionLog, split: Split, seed: int = 0) -> dict[str, dict[str, float]]:
    """global mean, user+item bias and SVD (scikit-surprise) on the test ratings."""
    from surprise import SVD, BaselineOnly, Dataset, Reader

    df = _prior_ratings(log, split)
    mask = np.isfinite(split.test_values)
    users, items, truth = split.eval_users[mask], split.test_targets[mask], split.test_values[mask]
    out: dict[str, dict[str, float]] = {"global_mean": _errors(np.full(len(truth), df["r"].mean()), truth)}
    lo, hi = float(df["r"].min()), float(df["r"].max())
    trainset = Dataset.load_from_df(df[["u", "i", "r"]], Reader(rating_scale=(lo, hi))).build_full_trainset()
    for name, algo in (("bias", BaselineOnly(bsl_options={"method": "als"}, verbose=False)),
                       ("svd", SVD(random_state=seed))):
        t0 = time.perf_counter()
        algo.fit(trainset)
        pred = np.array([algo.predict(int(u), int(i)).est for u, i in zip(users, items)])
        out[name] = {**_errors(pred, truth), "seconds": round(time.perf_counter() - t0, 1)}
    return out


def evaluate_rating(model: FeedbackTransformer, log: InteractionLog, split: Split,
                    event_text_table: torch.Tensor | None = None, seed: int = 0, baselines: bool = True,
                    log_fn: Callable[[str], None] | None = None) -> dict[str, Any]:
    """``{"RMSE", "MAE", "ratings", "head": {...}, "baselines": {...}}`` on the test ratings."""
    say = log_fn or (lambda s: None)
    head, info = fit_rating_head(model, split, event_text_table, seed=seed)
    mask = np.isfinite(split.test_values)
    h = torch.from_numpy(_states(model, split.test_windows.select(np.nonzero(mask)[0]), None, event_text_table))
    with torch.no_grad():
        lo, hi = float(np.nanmin(split.train.values)), float(np.nanmax(split.train.values))
        pred = head(h, torch.from_numpy(split.test_targets[mask])).clamp(lo, hi).numpy()
    out: dict[str, Any] = {**_errors(pred, split.test_values[mask]), "head": info}
    say(f"rating head: RMSE={out['RMSE']:.4f} MAE={out['MAE']:.4f} ({info['seconds']}s)")
    if baselines:
        out["baselines"] = rating_baselines(log, split, seed)
        say("rating baselines: " + ", ".join(f"{k} RMSE={v['RMSE']:.4f}" for k, v in out["baselines"].items()))
    return out


__all__ = ["RatingHead", "evaluate_rating", "fit_rating_head", "has_ratings", "rating_baselines"]
