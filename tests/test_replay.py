"""Prequential replay on a tiny MovieLens-format log: protocol, online updates, rtrec, outputs."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from liverec.evaluation.replay import ReplayConfig, load_model, make_stream, prefix_windows, rank_events, run_replay, save_model
from liverec.evaluation.protocol import load_movielens
from liverec.learning.finetune import FineTuneConfig, bias_step
from liverec.model.transformer import FeedbackTransformer, ModelConfig


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def write_ml(root: Path, users: int = 50, items: int = 60, per_user: int = 24, seed: int = 0) -> Path:
    """Users walk through items in order (i, i+1, ...) from a random start: learnable sequences."""
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    genres = ["Action", "Comedy", "Drama"]
    (root / "movies.dat").write_text("".join(f"{i}::Movie {i} (2000)::{genres[i % 3]}\n" for i in range(1, items + 1)), encoding="latin-1")
    lines = []
    for u in range(1, users + 1):
        start = int(rng.integers(1, items + 1))
        t0 = 1_000_000 + int(rng.integers(0, 50_000))
        for k in range(per_user):
            item = (start + k - 1) % items + 1
            lines.append(f"{u}::{item}::{int(rng.integers(1, 6))}::{t0 + 1000 * k}\n")
    (root / "ratings.dat").write_text("".join(lines))
    return root


def test_prefix_windows_hold_only_earlier_events(tmp_path):
    log = load_movielens(write_ml(tmp_path / "ml", users=5, per_user=6))
    s = make_stream(log, 0.8)
    e = int(log.seqs.offsets[2]) + 3  # user 2's fourth event
    w = prefix_windows(s, np.array([e]), max_len=5)
    assert w.items[0].tolist() == [0, 0] + log.seqs.items[e - 3:e].tolist()
    assert (w.types[0, :2] == 0).all() and (w.types[0, 2:] > 0).all()


def test_rank_excludes_earlier_items(tmp_path):
    log = load_movielens(write_ml(tmp_path / "ml", users=3, items=10, per_user=5))
    s = make_stream(log, 0.5)
    model = FeedbackTransformer(ModelConfig(n_items=log.n_items, max_len=8, d_model=8, n_blocks=1, dropout=0.0))
    events = s.order[s.cut:]
    ranks = rank_events(model, s, events, max_len=8, device="cpu")
    # an item's rank can never exceed the number of items the user has not had yet
    for e, r in zip(events.tolist(), ranks.tolist()):
        seen = len(set(log.seqs.items[s.start_of[e]:e].tolist()))
        assert 0 <= r <= log.n_items - 1 - seen


def test_replay_end_to_end(tmp_path):
    root = write_ml(tmp_path / "ml")
    cfg = ReplayConfig(cadence=60, d_model=16, n_blocks=1, max_len=20, epochs=25, train_budget_s=20, batch_size=32,
                       lr=3e-3, finetune=FineTuneConfig(steps=5, batch_size=16, lr=1e-3), rtrec=True, rtrec_batch=30)
    out = tmp_path / "out"
    summary = run_replay(root, cfg, out, log=lambda m: None, save_to=out / "m.safetensors")
    n_window = 50 * 24 - int(round(0.8 * 50 * 24))
    assert summary["events"] == n_window
    for name in ("online", "frozen", "rtrec"):
        assert set(summary[name]) >= {"NDCG@10", "HR@10"} and summary[name]["events"] == n_window
        assert 0.0 <= summary[name]["NDCG@10"] <= summary[name]["HR@10"] <= 1.0
    assert summary["events_per_second"] > 0
    assert len(summary["updates"]) == -(-n_window // 60)
    assert all({"accepted", "val_before", "val_after"} <= set(u) for u in summary["updates"])
    # the sequences are learnable: the trained model beats chance (HR@10 of random = 10/60)
    assert summary["frozen"]["HR@10"] > 0.3
    assert (out / "replay.png").stat().st_size > 1000
    json.dumps(summary)  # serialisable
    # the saved model reloads to the same scores
    m = load_model(out / "m.safetensors")
    again = run_replay(root, ReplayConfig(**{**cfg.__dict__, "rtrec": False, "cadence": 10_000}), None, log=lambda m: None,
                       model_path=out / "m.safetensors")
    assert again["frozen"] == pytest.approx(summary["frozen"])
    assert m.cfg.d_model == 16


def test_events_an_update_did_not_learn_join_the_next(tmp_path):
    """Held-out events, and all events of a rejected update, are learned by the next update."""
    root = write_ml(tmp_path / "ml", users=30, per_user=20)
    # tolerance -1: an update is kept only if it doubles the validation NDCG, so most are rejected
    cfg = ReplayConfig(cadence=20, d_model=8, n_blocks=1, max_len=10, epochs=2, train_budget_s=10, batch_size=32, rtrec=False,
                       finetune=FineTuneConfig(steps=2, batch_size=8, lr=1e-3, tolerance=-1.0), carry_max=50)
    ups = run_replay(root, cfg, None, log=lambda m: None)["updates"]
    assert ups[0]["carried"] == 0
    n_val = 2  # 10% of 20
    assert any(not u["accepted"] for u in ups) and any(u["carried"] > n_val for u in ups)
    for prev, u in zip(ups, ups[1:]):
        learned = prev["carried"] + 20 - n_val
        assert u["carried"] == (n_val if prev["accepted"] else min(learned + n_val, 50))
    dropped = run_replay(root, ReplayConfig(**{**cfg.__dict__, "carry_max": 0}), None, log=lambda m: None)["updates"]
    assert all(u["carried"] == 0 for u in dropped)


def test_significance_lets_noise_level_drops_through(tmp_path):
    """With a significance level the guard blocks only drops the held-out events show clearly."""
    root = write_ml(tmp_path / "ml", users=30, per_user=20)
    # tolerance -1 alone rejects every update that does not double the validation NDCG
    cfg = ReplayConfig(cadence=40, d_model=8, n_blocks=1, max_len=10, epochs=2, train_budget_s=10, batch_size=32, rtrec=False,
                       finetune=FineTuneConfig(steps=2, batch_size=8, lr=1e-3, tolerance=-1.0))
    plain = run_replay(root, cfg, None, log=lambda m: None)["updates"]
    assert any(not u["accepted"] for u in plain)
    # z = 50: no paired drop over 4 held-out events is that significant
    lenient = ReplayConfig(**{**cfg.__dict__, "finetune": FineTuneConfig(**{**cfg.finetune.__dict__, "significance": 50.0})})
    assert all(u["accepted"] for u in run_replay(root, lenient, None, log=lambda m: None)["updates"])


def test_save_load_roundtrip(tmp_path):
    model = FeedbackTransformer(ModelConfig(n_items=7, max_len=4, d_model=8, n_blocks=1))
    save_model(model, tmp_path / "x.safetensors", {"note": "t"})
    back = load_model(tmp_path / "x.safetensors")
    for k, v in model.state_dict().items():
        assert torch.equal(v, back.state_dict()[k])


def test_bias_step_is_one_sgd_step_on_the_cross_entropy():
    torch.manual_seed(0)
    model = FeedbackTransformer(ModelConfig(n_items=9, max_len=4, d_model=8, n_blocks=1, dropout=0.0)).eval()
    items = torch.tensor([[0, 1, 2, 3], [4, 5, 6, 7]])
    types = torch.ones_like(items)
    types[items == 0] = 0
    zeros = torch.zeros_like(items)
    targets = torch.tensor([4, 0])  # 0-based
    scores = model.score_last(items, types, zeros, zeros)
    loss = torch.nn.functional.cross_entropy(scores, targets, reduction="sum")
    (grad,) = torch.autograd.grad(loss, model.out_bias)
    before = model.out_bias.detach().clone()
    bias_step(model, scores.detach(), targets, lr=0.1)
    assert torch.allclose(model.out_bias.detach(), before - 0.1 * grad, atol=1e-6)
    bias_step(model, scores.detach(), targets, lr=0.0)  # a rate of 0 changes nothing
    assert torch.allclose(model.out_bias.detach(), before - 0.1 * grad, atol=1e-6)


def test_online_bias_follows_what_the_stream_brings(tmp_path):
    """Every user's first window event turns to the same item: ranked with bias steps, it climbs
    to the top; each chunk is ranked before it is learned from, so the first chunk is unchanged."""
    log = load_movielens(write_ml(tmp_path / "ml", users=60, items=30, per_user=10))
    s = make_stream(log, 0.5)
    seqs = log.seqs
    first: dict[int, int] = {}
    for e in s.order[s.cut:].tolist():
        u = int(s.user_of[e])
        if u not in first and 7 not in seqs.items[s.start_of[e]:e + 1].tolist():
            first[u] = e
    window = np.array(sorted(first.values(), key=lambda e: list(s.order).index(e)), dtype=np.int64)
    assert len(window) >= 24
    seqs.items[window] = 7
    torch.manual_seed(0)
    model = FeedbackTransformer(ModelConfig(n_items=log.n_items, max_len=8, d_model=8, n_blocks=1, dropout=0.0))
    frozen = rank_events(model, s, window, max_len=8, device="cpu", chunk=8)
    online = rank_events(model, s, window, max_len=8, device="cpu", chunk=8, bias_lr=0.1)
    assert (online[:8] == frozen[:8]).all()
    assert np.median(online[-8:]) == 0 and np.median(frozen[-8:]) > 3


def test_replay_command_writes_the_summary_the_protocol_names(tmp_path):
    """`liverec replay movielens PATH --out replay.json`: online, frozen and rtrec side by side, with
    the defaults (the validation-chosen learner) but a short training."""
    from typer.testing import CliRunner

    from liverec.cli import app
    from liverec.evaluation.replay import ReplayConfig as Defaults

    assert (Defaults.cadence, Defaults.passes, Defaults.bias_lr) == (1000, 3.0, 0.03)
    root = write_ml(tmp_path / "ml", users=30, per_user=20)
    out = tmp_path / "out" / "replay.json"
    res = CliRunner().invoke(app, ["replay", "movielens", str(root), "--out", str(out), "--epochs", "2", "--train-budget", "20"])
    assert res.exit_code == 0, res.output
    summary = json.loads(out.read_text())
    for name in ("online", "frozen", "rtrec"):
        assert 0.0 <= summary[name]["NDCG@10"] <= summary[name]["HR@10"] <= 1.0
    assert summary["events"] == 30 * 20 - int(round(0.8 * 30 * 20)) and summary["events_per_second"] > 0
    assert summary["config"]["passes"] == 3.0 and summary["config"]["finetune"]["replay_ratio"] == 0.25
    assert out.with_suffix(".png").stat().st_size > 1000
    bad = CliRunner().invoke(app, ["replay", "movielens", str(root), "--train-frac", "1.5"])
    assert bad.exit_code != 0 and "--train-frac 1.5" in bad.output


def test_replay_command_defaults_are_the_config_defaults():
    """The CLI spells the replay's defaults out for --help; they must be ReplayConfig's."""
    import inspect

    from liverec.cli_realtime import replay_movielens

    cfg = ReplayConfig()
    opts = {name: p.default.default for name, p in inspect.signature(replay_movielens).parameters.items()}
    same = {"cadence": cfg.cadence, "passes": cfg.passes, "bias_lr": cfg.bias_lr, "carry_max": cfg.carry_max,
            "epochs": cfg.epochs, "train_budget": cfg.train_budget_s, "train_frac": cfg.train_frac, "recent": cfg.recent,
            "lr": cfg.finetune.lr, "replay_ratio": cfg.finetune.replay_ratio, "steps": cfg.finetune.steps,
            "significance": cfg.finetune.significance, "warmup_steps": cfg.finetune.warmup_steps, "seed": cfg.seed}
    assert {k: opts[k] for k in same} == same
