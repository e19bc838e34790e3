"""Set metrics on a multi-item future, the rating view, the plain SASRec baseline, per-dataset
recipe selection and compressed event files."""

from __future__ import annotations

import gzip

import numpy as np
import torch

from liverec.evaluation.metrics import set_metrics
from liverec.evaluation.protocol import build_log, future_split, leave_one_out, load_events_csv
from liverec.evaluation.rating import evaluate_rating
from liverec.evaluation.sasrec import positives_only, run_sasrec
from liverec.evaluation.selection import select_and_train
from liverec.model.features import TYPE_IDS
from liverec.model.synthetic import sequential_log
from liverec.model.train import TrainConfig, TrainResult, ValidationSet, train
from liverec.model.transformer import ModelConfig

torch.set_num_threads(1)


def _items(log, seq_items):
    return [log.item_ids[i - 1] for i in seq_items]


def test_future_split_holds_out_the_last_n_targets_by_time() -> None:
    # u1: 8 events in shuffled file order; u2 has 6 targets (< N + 2): training only
    t = [8, 1, 7, 2, 6, 3, 5, 4]
    users = ["u1"] * 8 + ["u2"] * 6
    items = [f"i{k}" for k in t] + [f"j{k}" for k in range(6)]
    log = build_log("t", np.array(users, dtype=object), np.array(items, dtype=object),
                    np.array(t + list(range(6)), dtype=float))
    fs = future_split(log, n_future=5)
    assert fs.eval_users.tolist() == [0]
    assert _items(log, fs.future[0]) == ["i4", "i5", "i6", "i7", "i8"]
    assert _items(log, fs.valid_targets) == ["i3"]
    w = fs.test_windows.items[0]
    assert _items(log, w[w > 0]) == ["i1", "i2", "i3"]  # the request comes before the future set
    assert fs.train.n_events == 2 + 6  # u1 before the validation event + all of u2
    assert sorted(_items(log, fs.seen_items()[0][fs.seen_items()[0] > 0])) == ["i1", "i2", "i3"]


def test_set_metrics_count_distinct_future_items() -> None:
    top = np.arange(10)[None].repeat(2, 0)  # columns 0..9 = items 1..10
    future = np.array([[1, 2, 2, 11, 12], [20, 21, 22, 23, 24]])
    m = set_metrics(top, future)
    # user 0: hits {1, 2} of 4 distinct future items -> P 0.2, R 0.5, F1 2/7; user 1: no hit
    assert np.isclose(m["P@10"], 0.1) and np.isclose(m["R@10"], 0.25)
    assert np.isclose(m["F1@10"], (2 * 0.2 * 0.5 / 0.7) / 2)


def _sequence_rated_log(n_users: int = 200, seed: int = 0):
    """Ratings set by the sequence: 5 when the item is in the previous item's cluster, else 1
    (each 50%), so neither a global mean nor per-user/per-item biases can predict them."""
    rng = np.random.default_rng(seed)
    users, items, ts, values = [], [], [], []
    for u in range(n_users):
        prev = int(rng.integers(0, 30))
        for k in range(int(rng.integers(10, 20))):
            same = k > 0 and rng.random() < 0.5
            cluster = prev // 10 if same else int(rng.choice([c for c in range(3) if k == 0 or c != prev // 10]))
            item = cluster * 10 + int(rng.integers(0, 10))
            users.append(f"u{u}")
            items.append(f"i{item}")
            ts.append(1000.0 + 60 * k)
            values.append(5.0 if same else 1.0)
            prev = item
    return build_log("rated", np.array(users, dtype=object), np.array(items, dtype=object), np.array(ts),
                     values=np.array(values))


def test_rating_head_reads_the_sequence_and_beats_mean_and_mf() -> None:
    log = _sequence_rated_log()
    split = leave_one_out(log, max_len=20)
    cfg = ModelConfig(n_items=log.n_items, max_len=20, d_model=32, n_blocks=1, dropout=0.0)
    res = train(cfg, TrainConfig(epochs=15, batch_size=32, lr=3e-3, warmup_steps=10, seed=0), split.train,
                ValidationSet(split.valid_windows, split.valid_targets), progress=False)
    out = evaluate_rating(res.model, log, split, seed=0)
    base = out["baselines"]
    assert out["ratings"] == len(split.eval_users)
    assert base["global_mean"]["RMSE"] > 1.6  # ratings of 1 and 5 in equal shares
    assert out["RMSE"] < 0.6 * base["global_mean"]["RMSE"]
    assert out["RMSE"] < base["svd"]["RMSE"] and out["RMSE"] < base["bias"]["RMSE"]


def test_plain_sasrec_reads_positive_item_ids_only() -> None:
    log = sequential_log(n_users=80, n_items=20, seed=1)
    split = leave_one_out(log, max_len=20)
    res = run_sasrec(split, log.n_items, {"d_model": 16, "n_blocks": 1, "max_len": 20},
                     TrainConfig(epochs=30, batch_size=16, lr=5e-3, warmup_steps=5, seed=0))
    cfg = res["model_config"]
    assert not (cfg["use_types"] or cfg["use_values"] or cfg["use_gaps"] or cfg["text_dim"] or cfg["repeat_term"])
    assert res["all_items"]["HR@10"] > 0.9  # the +1 walk is learnable from ids alone
    seqs = build_log("t", np.array(["u"] * 3, dtype=object), np.array(["a", "b", "c"], dtype=object),
                     np.arange(3.0), types=np.array(["view", "dislike", "view"])).seqs
    assert positives_only(seqs).types.tolist() == [TYPE_IDS["view"]] * 2


def test_selection_trains_the_best_candidate_on_the_rest_of_the_budget() -> None:
    seen: list[dict] = []

    def fake_train(recipe: dict, trial: bool) -> TrainResult:
        seen.append(recipe)
        assert trial == (len(seen) <= 3)
        score = {0.2: 0.1, 0.5: 0.3, 0.7: 0.2}[recipe["dropout"]]
        return TrainResult(model=None, best_epoch=1, best_metrics={"NDCG@10": score + 0.01 * len(seen)},  # type: ignore[arg-type]
                           train_seconds=1.0, epochs_run=1)

    cands = ({}, {"dropout": 0.5}, {"dropout": 0.7})
    chosen, res, summary = select_and_train({"dropout": 0.2, "time_budget_s": 100.0}, fake_train, share=0.1,
                                            candidates=cands)
    assert [r["time_budget_s"] for r in seen[:3]] == [10.0, 10.0, 10.0]
    assert chosen["dropout"] == 0.5 and summary["chosen"] == 1
    assert seen[3]["dropout"] == 0.5 and 90.0 < seen[3]["time_budget_s"] <= 100.0
    assert res is not None and summary["final_val_NDCG@10"] > 0.3
    seen.clear()
    select_and_train({"dropout": 0.2, "time_budget_s": 1000.0}, fake_train, share=0.1, max_trial_s=20.0, candidates=cands)
    assert [r["time_budget_s"] for r in seen[:3]] == [20.0, 20.0, 20.0]  # capped: the final run keeps the rest


def test_compressed_events_and_items_files_load_as_they_are(tmp_path) -> None:
    d = tmp_path / "genrec-shop"
    d.mkdir()
    with gzip.open(d / "interactions.csv.gz", "wt") as f:
        f.write("user_id,item_id,timestamp\n0,10,100\n0,11,50\n1,10,70\n")
    with gzip.open(d / "item_titles.csv.gz", "wt") as f:
        f.write("item_id,title\n10,Red ball\n11,\"Blue, big\"\n")
    log = load_events_csv(d / "interactions.csv.gz", d / "item_titles.csv.gz")
    assert log.name == "genrec-shop"
    assert log.item_texts == ["Red ball", "Blue, big"]
    s, e = log.seqs.offsets[0], log.seqs.offsets[1]
    assert _items(log, log.seqs.items[s:e]) == ["11", "10"]
    assert (log.seqs.types == TYPE_IDS["view"]).all()


def test_movielens_csv_columns_read_as_the_generic_format(tmp_path) -> None:
    (tmp_path / "ratings.csv").write_text("userId,movieId,rating,timestamp\n1,5,4.5,10\n1,7,2.0,5\n")
    (tmp_path / "movies.csv").write_text("movieId,title,genres\n5,Heat (1995),Action|Crime\n")
    log = load_events_csv(tmp_path / "ratings.csv", tmp_path / "movies.csv")
    assert log.item_ids.tolist() == ["5", "7"] and log.seqs.values.tolist() == [2.0, 4.5]
    assert (log.seqs.types == TYPE_IDS["rating"]).all()
    assert log.item_texts[0] == "Heat (1995) (Action, Crime)"


def test_a_short_budget_ends_the_warmup_at_five_percent_of_it() -> None:
    from liverec.model.train import _lr_factor

    short = TrainConfig(warmup_steps=100, schedule="cosine", time_budget_s=100.0)
    assert np.isclose(_lr_factor(4, 10_000, short, elapsed=0.0), 0.05)  # step 5 of 100
    assert _lr_factor(4, 10_000, short, elapsed=5.0) > 0.99  # 5% of the budget spent: warm
    long = TrainConfig(warmup_steps=100, schedule="cosine", time_budget_s=2580.0)
    assert np.isclose(_lr_factor(4, 10_000, long, elapsed=5.0), 0.05)  # the step count ends it first


def test_a_clocked_budget_is_used_to_the_end_and_cut_inside_an_epoch() -> None:
    log = sequential_log(n_users=400, n_items=30, min_len=30, max_len=40, seed=0)
    split = leave_one_out(log, max_len=40)
    cfg = ModelConfig(n_items=log.n_items, max_len=40, d_model=16, n_blocks=1)
    tc = TrainConfig(epochs=1000, batch_size=8, schedule="cosine", time_budget_s=1.0, eval_every=1000, seed=0)
    res = train(cfg, tc, split.train, ValidationSet(split.valid_windows, split.valid_targets), progress=False)
    assert 0.97 <= res.train_seconds < 1.0 + res.history[0]["seconds"]  # no epoch-sized gap left, no epoch-sized overrun


def test_validation_reads_a_seeded_sample_of_users_where_capped() -> None:
    from liverec.evaluation.offline import evaluate_log

    log = sequential_log(n_users=40, n_items=12, seed=3)
    recipe = {"d_model": 8, "n_blocks": 1, "epochs": 2, "batch_size": 16, "stride": None, "max_len": 12,
              "time_budget_s": None, "text": False, "n_future": 0, "valid_max_users": 10, "select_valid_users": 5}
    report, _ = evaluate_log(log, recipe, seed=0, baselines=False, progress=False)
    assert report["validation"]["users"] == 10.0 and report["variants"]["all_items"]["users"] == 40.0
    assert "set_metrics" not in report
