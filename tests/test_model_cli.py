"""`liverec models list | promote | rollback` and `liverec evaluate events` from the command line."""

from __future__ import annotations

import json

import torch
from typer.testing import CliRunner

from liverec.cli import app
from liverec.model.registry import ModelRegistry
from liverec.model.transformer import FeedbackTransformer, ModelConfig

torch.set_num_threads(1)
runner = CliRunner()


def test_models_list_promote_rollback(tmp_path) -> None:
    reg = ModelRegistry.for_data_dir(tmp_path, "default")
    model = FeedbackTransformer(ModelConfig(n_items=3, d_model=8, n_blocks=1, max_len=5))
    v1 = reg.register(model, ["a", "b", "c"], {"validation": {"NDCG@10": 0.25, "HR@10": 0.5}})
    v2 = reg.register(model, ["a", "b", "c"], {"validation": {"NDCG@10": 0.3, "HR@10": 0.6}})
    assert runner.invoke(app, ["models", "promote", v1, "--data-dir", str(tmp_path)]).exit_code == 0
    assert runner.invoke(app, ["models", "promote", v2, "--data-dir", str(tmp_path)]).exit_code == 0
    out = runner.invoke(app, ["models", "list", "--data-dir", str(tmp_path), "--json"])
    rows = json.loads(out.stdout)
    assert [r["version"] for r in rows if r["promoted"]] == [v2]
    assert rows[0]["metrics"]["NDCG@10"] == 0.25
    res = runner.invoke(app, ["models", "rollback", "--data-dir", str(tmp_path)])
    assert res.exit_code == 0 and reg.promoted() == v1
    assert runner.invoke(app, ["models", "promote", "v999999", "--data-dir", str(tmp_path)]).exit_code == 2


def test_evaluate_events_writes_report(tmp_path) -> None:
    lines = ["user_id,item_id,timestamp,type,value"]
    for u in range(40):
        for k in range(8):
            lines.append(f"u{u},i{(u + k) % 12},{100 + k},rating,{1 + k % 5}")
    (tmp_path / "ev.csv").write_text("\n".join(lines) + "\n")
    (tmp_path / "items.csv").write_text("item_id,title\n" + "".join(f"i{k},Item {k}\n" for k in range(12)))
    recipe = json.dumps({"d_model": 8, "n_blocks": 1, "stride": None, "max_len": 10, "batch_size": 16})
    res = runner.invoke(app, ["evaluate", "events", str(tmp_path / "ev.csv"), "--out", str(tmp_path / "r.json"),
                              "--epochs", "1", "--recipe", recipe, "--no-text", "--threads", "1"])
    assert res.exit_code == 0, res.output
    report = json.loads((tmp_path / "r.json").read_text())
    assert {"protocol", "train_seconds", "variants", "baselines"} <= set(report)
    assert {"all_items", "seen_filtered"} == set(report["variants"])
    assert {"popular", "cooccurrence", "implicit_als", "sasrec"} == set(report["baselines"])
    assert {"P@10", "R@10", "F1@10"} <= set(report["set_metrics"]) and report["set_metrics"]["users"] == 40
    assert {"RMSE", "MAE"} <= set(report["rating"])
    assert (tmp_path / "r.md").exists()
