"""The leave-one-out protocol: stable ordering, held-out positions, truncation, generic CSV, and
the end-to-end evaluation report."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from liverec.evaluation.offline import evaluate_log
from liverec.evaluation.protocol import build_log, leave_one_out, load_events_csv, load_movielens
from liverec.model.features import TYPE_IDS
from liverec.model.synthetic import sequential_log
from liverec.model.text import HashingEncoder

torch.set_num_threads(1)


def _items(log, seq_items):
    return [log.item_ids[i - 1] for i in seq_items]


def test_stable_sort_ties_keep_file_order_and_split_positions() -> None:
    # file order: u1 events at t=5 (a), t=1 (b), t=5 (c), t=3 (d), t=9 (e); ties a, c keep file order
    log = build_log("t", np.array(["u1"] * 5 + ["u2"] * 2, dtype=object),
                    np.array(["a", "b", "c", "d", "e", "a", "b"], dtype=object),
                    np.array([5, 1, 5, 3, 9, 1, 2], dtype=float), values=np.array([1, 2, 3, 4, 5, 1, 2.0]))
    u1 = 0
    s, e = log.seqs.offsets[u1], log.seqs.offsets[u1 + 1]
    assert _items(log, log.seqs.items[s:e]) == ["b", "d", "a", "c", "e"]
    split = leave_one_out(log)
    assert split.eval_users.tolist() == [0]  # u2 has 2 events: training data only
    assert log.item_ids[split.test_targets[0] - 1] == "e"
    assert log.item_ids[split.valid_targets[0] - 1] == "c"
    # validation input: everything before "c"; test input also includes "c"
    v = split.valid_windows.items[0]
    assert _items(log, v[v > 0]) == ["b", "d", "a"]
    t = split.test_windows.items[0]
    assert _items(log, t[t > 0]) == ["b", "d", "a", "c"]
    assert split.train.n_events == 3 + 2  # u1 before validation + all of u2


def test_inputs_truncated_to_max_len() -> None:
    n = 250
    log = build_log("t", np.array(["u"] * n, dtype=object), np.array([f"i{k}" for k in range(n)], dtype=object),
                    np.arange(n, dtype=float))
    split = leave_one_out(log, max_len=200)
    assert split.test_windows.items.shape == (1, 200)
    assert (split.test_windows.items[0] > 0).all()
    assert log.item_ids[split.test_windows.items[0, -1] - 1] == "i248"
    assert log.item_ids[split.test_windows.items[0, 0] - 1] == "i49"


def test_negative_events_are_not_held_out(tmp_path) -> None:
    p = tmp_path / "ev.csv"
    p.write_text("user_id,item_id,timestamp,type,value\n"
                 "u,a,1,view,\nu,b,2,view,\nu,c,3,like,\nu,d,4,dislike,\nu,,5,search,\n")
    log = load_events_csv(p)
    split = leave_one_out(log)
    assert log.item_ids[split.test_targets[0] - 1] == "c"  # the dislike after it is not a target
    assert log.item_ids[split.valid_targets[0] - 1] == "b"
    types = log.seqs.types.tolist()
    assert TYPE_IDS["dislike"] in types and TYPE_IDS["search"] in types


def test_generic_csv_errors_name_the_problem(tmp_path) -> None:
    p = tmp_path / "bad.csv"
    p.write_text("user,item_id,timestamp\nu,a,1\n")
    with pytest.raises(ValueError, match="user_id"):
        load_events_csv(p)
    p.write_text("user_id,item_id,timestamp,type\nu,a,1,teleport\n")
    with pytest.raises(ValueError, match="teleport"):
        load_events_csv(p)


def test_movielens_loader(tmp_path) -> None:
    (tmp_path / "ratings.dat").write_text("1::10::5::100\n1::20::3::50\n2::10::4::70\n1::30::4::50\n")
    (tmp_path / "movies.dat").write_bytes("10::Am\xe9lie (2001)::Comedy|Romance\n".encode("latin-1"))
    log = load_movielens(tmp_path)
    assert log.item_ids.tolist() == ["10", "20", "30"]
    s, e = log.seqs.offsets[0], log.seqs.offsets[1]
    assert _items(log, log.seqs.items[s:e]) == ["20", "30", "10"]  # tie at t=50 in file order
    assert log.item_texts[0] == "Amélie (2001). Comedy, Romance"
    assert log.seqs.values[s:e].tolist() == [3.0, 4.0, 5.0]


def test_evaluate_log_report_shape() -> None:
    log = sequential_log(n_users=60, n_items=20, seed=2)
    recipe = {"d_model": 16, "n_blocks": 1, "epochs": 2, "batch_size": 16, "stride": None, "max_len": 20,
              "time_budget_s": None}
    report, model = evaluate_log(log, recipe, seed=0, text_encoder=HashingEncoder(8), progress=False)
    json.dumps(report)  # serialisable
    for variant in ("all_items", "seen_filtered"):
        assert {"HR@10", "NDCG@10", "MRR", "coverage@10", "F1@10"} <= set(report["variants"][variant])
    assert set(report["baselines"]) == {"popular", "cooccurrence", "implicit_als", "sasrec"}
    assert {"P@10", "R@10", "F1@10", "n_future", "baselines"} <= set(report["set_metrics"])
    assert {"RMSE", "MAE", "baselines"} <= set(report["rating"])
    assert report["selection"]["chosen"] in (0, 1, 2)
    for res in report["baselines"].values():
        assert 0.0 <= res["all_items"]["HR@10"] <= 1.0
    assert report["train_seconds"] > 0 and report["protocol"]
    assert report["dataset"]["evaluated_users"] == 60


def test_seen_filter_covers_history_beyond_the_window() -> None:
    n = 30
    log = build_log("t", np.array(["u"] * n, dtype=object), np.array([f"i{k}" for k in range(n)], dtype=object),
                    np.arange(n, dtype=float))
    split = leave_one_out(log, max_len=5)
    seen = split.seen_items()
    assert sorted(seen[0][seen[0] > 0].tolist()) == sorted(log.seqs.items[:n - 1].tolist())
    assert (split.test_windows.items[0] > 0).sum() == 5
