"""End-to-end offline evaluation: split -> train -> evaluate -> baselines -> report.

:func:`evaluate_log` runs the protocol of :mod:`liverec.evaluation.protocol` on an
:class:`InteractionLog` and returns the report document (see :mod:`liverec.evaluation.report`).
:data:`DEFAULT_RECIPE` is the configuration the reported ML-1M figures come from.
"""

from __future__ import annotations

import time
from dataclasses import fields
from pathlib import Path
from typing import Any, Callable

import numpy as np

from liverec.evaluation.baselines import baseline_scorers, run_baselines
from liverec.evaluation.rating import evaluate_rating, has_ratings
from liverec.evaluation.sasrec import run_sasrec, train_sasrec
from liverec.evaluation.selection import select_and_train
from liverec.evaluation.future import baseline_batches, evaluate_future
from liverec.evaluation.protocol import N_FUTURE, PROTOCOL, FutureSplit, InteractionLog, Split, future_split, leave_one_out
from liverec.evaluation.report import PUBLISHED_REFERENCES, machine, now_iso
from liverec.model.distributed import Launch, train_parallel
from liverec.model.features import TYPE_IDS
from liverec.model.text import MINILM_DIM, HashingEncoder, MiniLMEncoder, TextEncoder, text_matrix
from liverec.model.train import TrainConfig, TrainResult, ValidationSet, evaluate_windows, score_windows
from liverec.model.transformer import ModelConfig

#: The recipe behind the reported figures (chosen on the validation position only).
DEFAULT_RECIPE: dict[str, Any] = {
    "d_model": 64, "n_blocks": 2, "n_heads": 1, "ffn_mult": 4, "dropout": 0.2, "use_request_gap": True,
    "batch_size": 32, "lr": 2e-3, "schedule": "cosine", "warmup_steps": 100, "epochs": 50,
    "stride": 50, "eval_every": 2, "patience": 5, "bf16": False, "text": True,
    "time_budget_s": 2580.0,  # the 45-minute CPU target: the cosine decay ends inside it on a slow machine
    # skips, dislikes and blocks give the loss items not to recommend (data without them, as
    # MovieLens, trains exactly as without); low ratings count only where a run asks (low_rating)
    "negatives": {"weight": 1.0, "neighbours": 10, "neighbour_weight": 0.5, "horizon": 5},
    # evaluation settings (not model or optimiser fields):
    "select": True, "select_share": 0.1, "select_trial_max_s": 120.0,  # per-dataset selection (evaluation/selection.py): budget share per trial, capped
    "select_valid_users": 2000, "valid_max_users": 10000,  # validation users (a seeded sample where there are more): trials, other runs
    "n_future": N_FUTURE, "future_share": 0.25,  # set metrics: future size; budget share of the models trained for it
}

#: Recipe keys that configure the evaluation rather than the model or the optimiser.
EVAL_KEYS = frozenset({"text", "select", "select_share", "select_trial_max_s", "select_valid_users", "valid_max_users",
                       "n_future", "future_share"})

MODEL_FEATURES = [
    "Causal pre-LN Transformer over the user's event sequence (max 200), item vectors tied between input and output.",
    "Input per event: item vector + event-type, rating-value (half-star buckets) and log2 time-gap embeddings + position from the newest event.",
    "Request time: each position also embeds the log2 gap to the next request (the next event in training; the held-out event's time offline, the clock when serving), as HSTU's public-dataset setup does.",
    "Item vector = ID embedding + learned projection of the item's all-MiniLM-L6-v2 text vector (title + genres); text-only items are scorable.",
    "Learned repeat term: items already in the sequence get a learned per-type + per-value logit offset (learned strongly negative on ML-1M).",
    "Full-softmax cross-entropy over all items at every target position (chunked: logits, softmax and gradients per 512 rows in cache).",
    "Negative feedback (skip, dislike, block) adds a not-to-recommend term -log(1 - p) on the item and, weaker, its 10 nearest items, at the state before it and the 5 states after it.",
    "Training windows over the whole training history (a window ends every 50 events, each target counted once), batch 32, AdamW with warmup + cosine decay.",
    "Model selection (best epoch, early stopping) on the validation position only.",
]


def split_overrides(overrides: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any], bool]:
    """Split a flat recipe dict into ModelConfig fields, TrainConfig fields and the text flag."""
    m = {f.name for f in fields(ModelConfig)}
    t = {f.name for f in fields(TrainConfig)}
    unknown = set(overrides) - m - t - EVAL_KEYS
    if unknown:
        raise ValueError(f"unknown recipe keys {sorted(unknown)}; known: {sorted(m | t | EVAL_KEYS)}")
    return ({k: v for k, v in overrides.items() if k in m}, {k: v for k, v in overrides.items() if k in t},
            bool(overrides.get("text", False)))


def evaluate_log(
    log: InteractionLog,
    recipe: dict[str, Any] | None = None,
    seed: int = 0,
    text_encoder: TextEncoder | None = None,
    text_cache: str | Path | None = None,
    baselines: bool = True,
    progress: bool = True,
    log_fn: Callable[[str], None] | None = None,
    command: str = "",
    launch: Launch | None = None,
) -> tuple[dict[str, Any], Any]:
    """Run the whole protocol; returns (report dict, trained model).

    ``launch`` (one machine) trains data-parallel on ``launch.nproc`` local processes (same global
    batch, same schedule; :mod:`liverec.model.distributed`); everything else runs here once.
    """
    say = log_fn or (lambda s: None)
    launch = launch or Launch()
    if launch.nnodes > 1:
        raise ValueError(f"nnodes={launch.nnodes}: the offline evaluation trains on one machine (nproc processes)")
    recipe = {**DEFAULT_RECIPE, **(recipe or {})}
    mo, to, use_text = split_overrides(recipe)
    split = leave_one_out(log, max_len=mo.get("max_len", 200))
    item_text = None
    text_dim = 0
    if use_text and any(log.item_texts):
        enc = text_encoder or MiniLMEncoder()
        t0 = time.perf_counter()
        item_text = text_matrix(log.item_texts, enc, text_cache)
        text_dim = enc.dim
        say(f"item text vectors: {int((np.abs(item_text).sum(1) > 0).sum())} items ({time.perf_counter() - t0:.1f}s, {enc.name})")
    event_text = None
    if text_dim and log.event_texts:
        enc = text_encoder or MiniLMEncoder()
        event_text = text_matrix(log.event_texts, enc, text_cache)[1:]
    say(f"split: {len(split.eval_users)} evaluated users, {split.train.n_events} training events")

    def train_on(sp: Split, rcp: dict[str, Any], max_valid: int | None = None) -> TrainResult:
        m, t, _ = split_overrides(rcp)
        cap = int(max_valid or recipe.get("valid_max_users") or len(sp.eval_users))
        rows = np.arange(len(sp.eval_users))
        if cap < len(rows):  # a fixed, seeded sample: every check (and every candidate) reads the same users
            rows = np.sort(np.random.default_rng(seed).choice(rows, cap, replace=False))
        r = train_parallel(launch, ModelConfig(n_items=log.n_items, text_dim=text_dim, **m), TrainConfig(seed=seed, **t),
                           sp.train, ValidationSet(sp.valid_windows.select(rows), sp.valid_targets[rows]),
                           item_text=item_text, event_text=event_text, progress=progress, log=say)
        assert r is not None  # one machine: this process is node 0
        return r

    t_train = time.perf_counter()
    selection = None
    if recipe.get("select"):
        trial_valid = recipe.get("select_valid_users")
        chosen, res, selection = select_and_train(
            recipe, lambda r, trial: train_on(split, r, trial_valid if trial else None),
                                                  share=float(recipe.get("select_share", 0.1)),
                                                  max_trial_s=recipe.get("select_trial_max_s"), log_fn=say)
    else:
        chosen, res = recipe, train_on(split, recipe)
    train_seconds = time.perf_counter() - t_train if selection else res.train_seconds
    mo, to, _ = split_overrides(chosen)
    mc = ModelConfig(n_items=log.n_items, text_dim=text_dim, **mo)
    tc = TrainConfig(seed=seed, **to)
    say(f"trained in {train_seconds:.0f}s, best epoch {res.best_epoch}")
    import torch

    ev_table = None
    if event_text is not None:
        ev_table = torch.from_numpy(np.concatenate([event_text, np.zeros((1, text_dim), np.float32)]))
    seen = split.seen_items()
    variants = {
        name: evaluate_windows(res.model, split.test_windows, split.test_targets, filter_seen=filt,
                               event_text_table=ev_table, seen=seen)
        for name, filt in (("all_items", False), ("seen_filtered", True))
    }
    say(f"test all_items NDCG@10={variants['all_items']['NDCG@10']:.4f} HR@10={variants['all_items']['HR@10']:.4f}")
    report: dict[str, Any] = {
        "protocol": PROTOCOL,
        "dataset": {"name": log.name, "users": log.seqs.n_users, "items": log.n_items, "events": log.seqs.n_events,
                    "evaluated_users": int(len(split.eval_users)), "fingerprint": log.source_fingerprint},
        "train_seconds": round(train_seconds, 3),
        "ranks": launch.world_size,
        "epochs_run": res.epochs_run,
        "best_epoch": res.best_epoch,
        "seed": seed,
        "recipe": recipe,
        "selection": selection,
        "model_config": mc.to_dict(),
        "train_config": tc.to_dict(),
        "validation": res.best_metrics,
        "variants": variants,
        "history": res.history,
        "model_features": MODEL_FEATURES,
        "references": PUBLISHED_REFERENCES,
        "machine": machine(),
        "date": now_iso(),
        "command": command,
    }
    if res.model.cfg.repeat_term:
        report["learned_repeat_offsets"] = {
            "rating": float(res.model.rep_type[TYPE_IDS["rating"]].detach()),
            "by_value": [round(float(x), 3) for x in res.model.rep_value.detach()],
        }
    sasrec_tc = TrainConfig(seed=seed, **split_overrides({**DEFAULT_RECIPE, **{k: v for k, v in recipe.items() if k in {
        "time_budget_s", "epochs"}}})[1])  # the default recipe's optimiser at the same budget
    arch = {**DEFAULT_RECIPE, **{k: v for k, v in recipe.items() if k in ("max_len", "select_valid_users")}}
    if baselines:
        report["baselines"] = run_baselines(log, split, seed=seed, log_fn=say)
        report["baselines"]["sasrec"] = run_sasrec(split, log.n_items, arch, sasrec_tc, log_fn=say,
                                                   max_valid=recipe.get("valid_max_users"), seed=seed)
        say(f"baseline sasrec: NDCG@10={report['baselines']['sasrec']['all_items']['NDCG@10']:.4f} "
            f"({report['baselines']['sasrec']['train_seconds']}s training)")
    n_future = int(recipe.get("n_future", N_FUTURE))
    if n_future > 0:
        fsplit = future_split(log, n_future, max_len=mc.max_len)
        if len(fsplit.eval_users):
            share = float(recipe.get("future_share", 0.25))
            report["set_metrics"] = _set_metrics(log, fsplit, chosen, share, lambda r: train_on(fsplit, r, recipe.get("select_valid_users")), ev_table,
                                                 arch, sasrec_tc, baselines, seed, say)
    if has_ratings(split):
        report["rating"] = evaluate_rating(res.model, log, split, ev_table, seed=seed, baselines=baselines, log_fn=say)
    return report, res.model


def _short(rcp: dict[str, Any], share: float) -> dict[str, Any]:
    """``rcp`` with ``share`` of its time budget (or of its epochs without one)."""
    if rcp.get("time_budget_s"):
        return {**rcp, "time_budget_s": float(rcp["time_budget_s"]) * share}
    return {**rcp, "epochs": max(1, round(int(rcp.get("epochs", 1)) * share))}


def _set_metrics(log: InteractionLog, fsplit: FutureSplit, chosen: dict[str, Any], share: float,
                 train_fn: Callable[[dict[str, Any]], TrainResult], ev_table: Any, arch: dict[str, Any],
                 sasrec_tc: TrainConfig, baselines: bool, seed: int, say: Callable[[str], None]) -> dict[str, Any]:
    """P/R/F1@10 on the multi-item future: the Transformer (chosen recipe) and SASRec trained
    again on the future split with ``share`` of the budget, and the other baselines refitted."""
    import dataclasses

    res = train_fn(_short(chosen, share))
    model_sets = evaluate_future(score_windows(res.model, fsplit.test_windows, event_text_table=ev_table), fsplit)
    out: dict[str, Any] = {**{k: v for k, v in model_sets["all_items"].items() if k != "users"},
                           "n_future": fsplit.future.shape[1], "users": int(len(fsplit.eval_users)),
                           "seen_filtered": model_sets["seen_filtered"], "train_seconds": round(res.train_seconds, 1)}
    say(f"set metrics (last {out['n_future']} events, {out['users']} users): P@10={out['P@10']:.4f} "
        f"R@10={out['R@10']:.4f} F1@10={out['F1@10']:.4f}")
    if baselines:
        base: dict[str, Any] = {}
        for name, make in baseline_scorers(log, fsplit, seed).items():
            base[name] = evaluate_future(baseline_batches(make(), fsplit), fsplit)
        budget = sasrec_tc.time_budget_s * share if sasrec_tc.time_budget_s else None
        epochs = sasrec_tc.epochs if budget else max(1, round(sasrec_tc.epochs * share))
        _, batches = train_sasrec(fsplit, log.n_items, arch,
                                  dataclasses.replace(sasrec_tc, time_budget_s=budget, epochs=epochs),
                                  max_valid=arch.get("select_valid_users"), seed=seed)
        base["sasrec"] = evaluate_future(batches(), fsplit)
        out["baselines"] = base
        say("set metrics baselines: " + ", ".join(f"{k} F1@10={v['all_items']['F1@10']:.4f}" for k, v in base.items()))
    return out


__all__ = ["DEFAULT_RECIPE", "MODEL_FEATURES", "evaluate_log", "split_overrides", "HashingEncoder", "MINILM_DIM"]
