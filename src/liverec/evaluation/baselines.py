"""Baselines evaluated under the same protocol as the Transformer.

Each baseline is fitted on every user's events before their test position (training events plus
the validation event: the same information the Transformer reads at test time) and produces a
score for every catalog item, so the ranking is over all items like the model's.

* ``popular``: number of interactions per item;
* ``cooccurrence``: the service's :class:`~liverec.recommend.cooccurrence.CooccurrenceScorer`,
  rebuilt from the events and asked for each user's scores from their folded online state; items
  outside its candidate set are ranked below its candidates, by popularity;
* ``implicit_als``: :class:`implicit.cpu.als.AlternatingLeastSquares` on the binary user x item
  matrix, scores = user factors . item factors.
"""

from __future__ import annotations

import time
from typing import Callable, Iterator

import numpy as np
import torch

from liverec.evaluation.metrics import RankingAccumulator
from liverec.evaluation.protocol import InteractionLog, Split
from liverec.model.data import Sequences
from liverec.model.features import EVENT_TYPES, is_target_type
from liverec.model.train import mask_seen

ScoreFn = Callable[[np.ndarray], np.ndarray]  # user rows (B,) -> (B, N) scores


def _positive_pairs(prefix: Sequences) -> tuple[np.ndarray, np.ndarray]:
    """(user row, 0-based item column) of every positive item event in ``prefix``."""
    users = np.repeat(np.arange(prefix.n_users), prefix.lengths())
    ok = is_target_type(prefix.types) & (prefix.items > 0)
    return users[ok], prefix.items[ok].astype(np.int64) - 1


def evaluate_scores(
    score_fn: ScoreFn, split: Split, n_items: int, batch_size: int = 512
) -> dict[str, dict[str, float]]:
    """Both variants (all items / seen filtered) of a baseline's (B, N) user scores."""
    accs = {"all_items": RankingAccumulator(n_items), "seen_filtered": RankingAccumulator(n_items)}
    users = split.eval_users
    seen_all = split.seen_items()
    for s in range(0, len(users), batch_size):
        rows = np.arange(s, min(s + batch_size, len(users)))
        scores = torch.from_numpy(np.array(score_fn(users[rows]), dtype=np.float32))  # a writable copy
        targets = torch.from_numpy(split.test_targets[rows] - 1)
        accs["all_items"].add(scores, targets)
        seen = torch.from_numpy(seen_all[rows].astype(np.int64))  # the whole history before the test position
        accs["seen_filtered"].add(mask_seen(scores, seen), targets)
    return {k: a.summary() for k, a in accs.items()}


def popular_scores(split: Split, n_items: int) -> ScoreFn:
    """Interaction counts per item (the same for every user)."""
    _, cols = _positive_pairs(split.test_prefix)
    counts = np.bincount(cols, minlength=n_items).astype(np.float32)
    return lambda users: np.broadcast_to(counts, (len(users), n_items))


def als_scores(split: Split, n_items: int, factors: int = 64, iterations: int = 15,
               regularization: float = 0.05, alpha: float = 1.0, seed: int = 0) -> ScoreFn:
    """implicit ALS on the binary user x item matrix of the events before the test position."""
    import scipy.sparse as sp
    from implicit.cpu.als import AlternatingLeastSquares

    rows, cols = _positive_pairs(split.test_prefix)
    mat = sp.csr_matrix((np.ones(len(rows), dtype=np.float32), (rows, cols)),
                        shape=(split.test_prefix.n_users, n_items))
    mat.data[:] = 1.0  # duplicates (repeat interactions) count once
    from threadpoolctl import threadpool_limits

    with threadpool_limits(1, "blas"):  # implicit's own loop is the parallel part
        model = AlternatingLeastSquares(factors=factors, iterations=iterations, regularization=regularization,
                                        alpha=alpha, random_state=seed, num_threads=1)
        model.fit(mat, show_progress=False)
    uf = np.asarray(model.user_factors, dtype=np.float32)
    itf = np.asarray(model.item_factors, dtype=np.float32)
    return lambda users: uf[users] @ itf.T


def _events(log: InteractionLog, prefix: Sequences, app: str, user_rows: np.ndarray | None = None) -> Iterator:
    """``prefix`` as service events (``user_rows`` maps prefix rows to ``log.user_ids`` rows)."""
    from liverec.events import Event

    users = np.repeat(np.arange(prefix.n_users), prefix.lengths())
    if user_rows is not None:
        users = np.asarray(user_rows)[users]
    for k in range(prefix.n_events):
        item = int(prefix.items[k])
        t = int(prefix.types[k])
        v = float(prefix.values[k])
        yield Event(
            app=app, event_id=str(k), user_id=str(log.user_ids[users[k]]),
            type=EVENT_TYPES[t - 1] if 0 < t <= len(EVENT_TYPES) else "view",
            timestamp=float(prefix.timestamps[k]), item_id=str(log.item_ids[item - 1]) if item > 0 else None,
            value=v if np.isfinite(v) else None,
        )


def cooccurrence_scores(log: InteractionLog, split: Split) -> ScoreFn:
    """The service's co-occurrence scorer, rebuilt from the events before the test position."""
    from liverec.events import DEFAULT_TYPES
    from liverec.recommend.cooccurrence import CooccurrenceScorer
    from liverec.state import fold_user

    app = "eval"
    scorer = CooccurrenceScorer()
    prefix = split.test_prefix
    scorer.rebuild(_events(log, prefix, app))
    column = {str(item): j for j, item in enumerate(log.item_ids)}
    _, cols = _positive_pairs(prefix)
    pop = np.bincount(cols, minlength=log.n_items).astype(np.float64)
    below = -2.0 + pop / max(pop.max(), 1.0)  # non-candidates: below every candidate, by popularity

    def fn(users: np.ndarray) -> np.ndarray:
        out = np.empty((len(users), log.n_items), dtype=np.float32)
        for r, u in enumerate(users):
            s, e = int(prefix.offsets[u]), int(prefix.offsets[u + 1])
            sub = Sequences(np.array([0, e - s]), prefix.items[s:e], prefix.types[s:e], prefix.values[s:e],
                            prefix.timestamps[s:e], prefix.text_ids[s:e])
            state = fold_user(_events(log, sub, app, np.array([u])), DEFAULT_TYPES, 200)
            scored = scorer.score(app, state, 200)
            row = below.copy()
            if len(scored.item_ids):
                idx = np.fromiter((column[i] for i in scored.item_ids), np.int64, len(scored.item_ids))
                row[idx] = scored.scores
            out[r] = row
        return out

    return fn


def baseline_scorers(log: InteractionLog, split: Split, seed: int = 0) -> dict[str, Callable[[], ScoreFn]]:
    """Each baseline's constructor (fits on ``split.test_prefix`` when called)."""
    return {
        "popular": lambda: popular_scores(split, log.n_items),
        "cooccurrence": lambda: cooccurrence_scores(log, split),
        "implicit_als": lambda: als_scores(split, log.n_items, seed=seed),
    }


def run_baselines(log: InteractionLog, split: Split, seed: int = 0,
                  log_fn: Callable[[str], None] | None = None) -> dict[str, dict]:
    """The fitted baselines (popular, co-occurrence, implicit ALS), each with both variants and
    its fit+score time (the plain SASRec is trained by :mod:`liverec.evaluation.sasrec`)."""
    say = log_fn or (lambda s: None)
    out: dict[str, dict] = {}
    for name, make in baseline_scorers(log, split, seed).items():
        t0 = time.perf_counter()
        res = evaluate_scores(make(), split, log.n_items)
        res["seconds"] = round(time.perf_counter() - t0, 1)  # type: ignore[assignment]
        out[name] = res
        say(f"baseline {name}: NDCG@10={res['all_items']['NDCG@10']:.4f} HR@10={res['all_items']['HR@10']:.4f} ({res['seconds']}s)")
    return out
