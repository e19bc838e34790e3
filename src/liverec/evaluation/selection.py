"""Per-dataset recipe selection on the validation position, inside the training time budget.

A small fixed grid over capacity and regularisation (:data:`CANDIDATES`, the same for every
dataset: no per-dataset tuning) is tried with short runs, each ``select_share`` of the time budget
and at most ``max_trial_s`` (120 s: on ML-1M's 45-minute budget the three trials take 6 minutes
and leave the final run more than the 50 epochs it needs, so its cosine decay follows the step
count as before). Each trial's cosine decay completes inside its own budget, so short runs are
comparable. The candidate with the best validation NDCG@10 (a later one must beat the best so far
by :data:`MIN_GAIN`) is then trained from scratch on the rest of the budget. The test position is
never read.

Trials may validate on fewer users than the final run (``select_valid_users`` in the recipe: a
seeded sample; a check over tens of thousands of users would cost more than a short trial).
Without a time budget (tests) a trial runs ``ceil(select_share * epochs)`` epochs instead.
"""

from __future__ import annotations

import math
import time
from typing import Any, Callable

from liverec.model.train import TrainResult

#: Overrides tried on top of the recipe: as it is; stronger regularisation; more capacity + regularisation.
CANDIDATES: tuple[dict[str, Any], ...] = (
    {},
    {"dropout": 0.5, "weight_decay": 0.1},
    {"d_model": 128, "dropout": 0.5, "weight_decay": 0.1},
)

#: A later (costlier) candidate replaces the best so far only when its validation NDCG@10 is
#: higher by more than this share: short trials are noisy, and ties keep the cheaper recipe.
MIN_GAIN = 0.02

TrainFn = Callable[[dict[str, Any], bool], TrainResult]  # (recipe, is a trial) -> trained result (validation inside)


def _trial_recipe(recipe: dict[str, Any], share: float, max_s: float | None) -> dict[str, Any]:
    budget = recipe.get("time_budget_s")
    if budget:
        return {**recipe, "time_budget_s": min(float(budget) * share, max_s or float("inf"))}
    return {**recipe, "epochs": max(1, math.ceil(share * int(recipe.get("epochs", 1))))}


def select_and_train(recipe: dict[str, Any], train_fn: TrainFn, share: float = 0.1, max_trial_s: float | None = 120.0,
                     candidates: tuple[dict[str, Any], ...] = CANDIDATES,
                     log_fn: Callable[[str], None] | None = None) -> tuple[dict[str, Any], TrainResult, dict[str, Any]]:
    """Try every candidate briefly, train the best one on the remaining budget.

    Returns (the chosen recipe, its trained result, a summary for the report: each trial's
    overrides, validation NDCG@10/HR@10 and seconds, and the time spent in all).
    """
    say = log_fn or (lambda s: None)
    t0 = time.perf_counter()
    trials: list[dict[str, Any]] = []
    best_i, best_score = 0, -1.0
    for i, over in enumerate(candidates):
        res = train_fn(_trial_recipe({**recipe, **over}, share, max_trial_s), True)
        score = float(res.best_metrics.get("NDCG@10", 0.0))
        trials.append({"overrides": over, "val_NDCG@10": score, "val_HR@10": float(res.best_metrics.get("HR@10", 0.0)),
                       "seconds": round(res.train_seconds, 1), "epochs_run": res.epochs_run})
        say(f"selection trial {i} {over or '(recipe)'}: val NDCG@10={score:.4f} ({res.train_seconds:.0f}s)")
        if score > best_score * (1.0 + MIN_GAIN) or i == 0:
            best_i, best_score = i, score
    chosen = {**recipe, **candidates[best_i]}
    spent = time.perf_counter() - t0
    final_recipe = dict(chosen)
    if recipe.get("time_budget_s"):
        final_recipe["time_budget_s"] = max(float(recipe["time_budget_s"]) - spent, 1.0)
    res = train_fn(final_recipe, False)
    final_score = float(res.best_metrics.get("NDCG@10", 0.0))
    summary = {"candidates": trials, "chosen": best_i, "chosen_overrides": candidates[best_i],
               "final_val_NDCG@10": final_score, "share": share,
               "seconds": round(time.perf_counter() - t0, 1)}
    say(f"selected candidate {best_i} {candidates[best_i] or '(recipe)'}; final val NDCG@10={final_score:.4f}")
    return chosen, res, summary


__all__ = ["CANDIDATES", "select_and_train"]
