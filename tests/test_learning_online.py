"""Online learner: publishes a version, serving swaps cleanly, the guard rail blocks bad updates,
new items start from their text neighbours."""

from __future__ import annotations

import threading

import numpy as np
import pytest
import torch

from liverec.config import Settings
from liverec.events import Event
from liverec.learning import FineTuneConfig, LearnerConfig, Learners
from liverec.model.registry import ModelRegistry
from liverec.model.scorer import TransformerScorer
from liverec.model.data import Sequences
from liverec.model.train import TrainConfig, train
from liverec.model.transformer import FeedbackTransformer, ModelConfig
from liverec.runtime.compose import build_service
from liverec.runtime.models import ModelServer
from liverec.service import Service
from liverec.store.base import Item

N_ITEMS = 30


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def attach(service: Service, app: str, cfg: LearnerConfig, start: bool = False):
    """Serve ``app``'s promoted model now and add an online learner over it."""
    service.component(ModelServer).load(app)
    return service.component(Learners).add(app, cfg, start=start)


@pytest.fixture
def service(tmp_path):
    svc = build_service(Settings(data_dir=tmp_path / "data"))
    svc.start()
    svc.store.catalog.upsert([Item("default", f"m{k}", f"Movie {k}", "", (f"g{k % 3}",)) for k in range(N_ITEMS + 1)])
    for k in range(N_ITEMS + 1):
        svc.catalog.put(Item("default", f"m{k}", f"Movie {k}", "", (f"g{k % 3}",)))
    # a model that has learned the stream's pattern (next item = current + 1), so a harmful
    # update has something to lose
    seqs = Sequences.from_lists([[(u + k) % N_ITEMS + 1 for k in range(10)] for u in range(N_ITEMS)])
    model = train(ModelConfig(n_items=N_ITEMS, max_len=16, d_model=16, n_blocks=1, dropout=0.0),
                  TrainConfig(epochs=40, batch_size=16, lr=1e-2, warmup_steps=1, seed=0), seqs, progress=False).model
    reg = ModelRegistry.for_data_dir(svc.settings.data_dir, "default")
    reg.promote(reg.register(model, [f"m{k}" for k in range(N_ITEMS)], {"note": "initial"}))
    yield svc
    svc.close()


def _stream(svc: Service, users: int, start_ts: float, extra_item: str | None = None) -> None:
    events = []
    for u in range(users):
        for k in range(8):
            item = f"m{(u + k) % N_ITEMS}"
            events.append(Event("default", f"e{start_ts}-{u}-{k}", f"u{u}", "view", start_ts + 10 * u + k, item))
        if extra_item is not None and u == 0:
            events.append(Event("default", f"x{start_ts}", "u0", "view", start_ts + 9, extra_item))
    svc.ingest_events(events)


def test_update_publishes_a_version_and_serving_swaps(service):
    cfg = LearnerConfig(min_events=10, replay_users=8, finetune=FineTuneConfig(steps=5, batch_size=8, lr=1e-3, tolerance=1.0))
    learner = attach(service, "default", cfg, start=False)
    router = service.pipeline.scorer
    first = router.by_app["default"]
    assert isinstance(first, TransformerScorer) and first.version == "v000001"
    assert learner.step() is None  # nothing learned yet
    _stream(service, users=12, start_ts=1000.0)
    errors: list[Exception] = []
    stop = threading.Event()

    def hammer() -> None:  # requests in flight while the version swaps
        while not stop.is_set():
            try:
                body = service.recommend("default", "u1", 5)
                assert len(body["items"]) == 5
            except Exception as exc:  # noqa: BLE001 - collected and asserted below
                errors.append(exc)

    t = threading.Thread(target=hammer)
    t.start()
    try:
        out = learner.step()
    finally:
        stop.set()
        t.join()
    assert errors == []
    assert out is not None and out["accepted"] and out["version"] == "v000002"
    served = router.by_app["default"]
    assert isinstance(served, TransformerScorer) and served is not first and served.version == "v000002"
    reg = ModelRegistry.for_data_dir(service.settings.data_dir, "default")
    assert reg.versions() == ["v000001", "v000002"] and reg.promoted() == "v000002"
    assert reg.rollback() == "v000001"  # the last good version stays available
    assert out["staleness_s"] < 60
    # the weights changed, the old served object was left untouched
    assert not torch.equal(served.model.item_emb.weight, first.model.item_emb.weight)
    assert service.recommend("default", "u1", 5)["scorer"] == "transformer"


@pytest.mark.parametrize("significance", [0.0, 1.64])
def test_guard_rail_blocks_a_harmful_update(service, significance):
    # lr 5.0 wrecks the model; zero tolerance: the update must not be served (a real drop is
    # significant on 12 held-out events too)
    cfg = LearnerConfig(min_events=10, replay_users=8, finetune=FineTuneConfig(steps=10, batch_size=8, lr=5.0, tolerance=0.0,
                                                                               significance=significance))
    learner = attach(service, "default", cfg, start=False)
    before = service.pipeline.scorer.by_app["default"]
    _stream(service, users=12, start_ts=1000.0)
    out = learner.step()
    assert out is not None and out["val_before"] > 0.3  # the served model knew the pattern
    assert not out["accepted"] and out["val_after"] < out["val_before"]
    assert service.pipeline.scorer.by_app["default"] is before
    reg = ModelRegistry.for_data_dir(service.settings.data_dir, "default")
    assert reg.versions() == ["v000001"] and reg.promoted() == "v000001"
    # the rejected update's events are not forgotten: the next update tries them again
    again = learner.step()
    assert again is not None and again["users"] == out["users"] and not again["accepted"]


def test_new_item_gets_a_row_from_its_text_neighbours(service):
    cfg = LearnerConfig(min_events=10, replay_users=4, finetune=FineTuneConfig(steps=0, tolerance=1.0))
    learner = attach(service, "default", cfg, start=False)
    old = service.pipeline.scorer.by_app["default"]
    _stream(service, users=6, start_ts=1000.0, extra_item=f"m{N_ITEMS}")  # m30 is not in the vocabulary
    out = learner.step()
    assert out["new_items"] == 1 and out["accepted"]
    served = service.pipeline.scorer.by_app["default"]
    assert served.index[f"m{N_ITEMS}"] == N_ITEMS + 1
    new_row = served.model.item_emb.weight[N_ITEMS + 1]
    assert torch.linalg.norm(new_row) > 0
    # equal to the mean of some known rows (text neighbours), not a random initialisation
    known = old.model.item_emb.weight[1:].detach()
    sims = torch.nn.functional.cosine_similarity(known, new_row[None].detach(), dim=1)
    assert float(sims.max()) > 0.3
    assert np.isfinite(served.score("default", service.state.get("default", "u0"), 5).scores).all()


def _bias_update(service, **cfg) -> tuple[dict, torch.Tensor, TransformerScorer, TransformerScorer]:
    """One learner step with bias steps only (no fine-tuning) after every user turned to m2 and m5:
    each user views m1 (no prefix: nothing to learn from), m2 and m5 (learned), then an item of its
    own (its newest event: validates). Returns (step result, bias delta, old scorer, new scorer)."""
    learner = attach(service, "default", LearnerConfig(min_events=10, replay_users=4, bias_lr=0.5,
                                                       finetune=FineTuneConfig(steps=0, tolerance=1.0), **cfg), start=False)
    old = service.pipeline.scorer.by_app["default"]
    service.ingest_events([Event("default", f"p{u}-{k}", f"u{u}", "view", 5000.0 + 10 * u + k, item)
                           for u in range(12) for k, item in enumerate(["m1", "m2", "m5", f"m{10 + u}"])])
    out = learner.step()
    served = service.pipeline.scorer.by_app["default"]
    return out, (served.model.out_bias - old.model.out_bias).detach(), old, served


def test_output_bias_learns_from_each_new_event(service):
    out, delta, old, served = _bias_update(service)
    assert out["accepted"] and out["bias_events"] == 12 * 2
    rising = {served.item_ids[int(k)] for k in torch.topk(delta, 2).indices}
    assert rising == {"m2", "m5"} and float(delta.min()) < 0
    assert torch.equal(served.model.item_emb.weight, old.model.item_emb.weight)  # nothing else moved
    assert abs(float(delta.sum())) < 1e-4  # softmax mass out, targets in: the step sums to zero


def test_output_bias_step_samples_a_bounded_number_of_events(service):
    out, delta, old, _ = _bias_update(service, bias_events=8)
    assert out["bias_events"] == 24  # all new events count; 8 of them were scored
    assert float(delta.abs().max()) > 0 and abs(float(delta.sum())) < 1e-3
    assert float(delta[[old.index["m2"] - 1, old.index["m5"] - 1]].sum()) > 0


def test_learn_command_tails_the_log_and_publishes(tmp_path):
    from typer.testing import CliRunner

    from liverec.cli import app
    from liverec.evaluation.replay import save_model
    from liverec.store import open_store

    data = tmp_path / "data"
    store = open_store(Settings(data_dir=data).store_url_resolved())
    store.catalog.upsert([Item("default", f"m{k}", f"Movie {k}", "", (f"g{k % 3}",)) for k in range(N_ITEMS)])
    store.events.append([Event("default", f"e{u}-{k}", f"u{u}", "view", 1000.0 + 10 * u + k, f"m{(u + k) % N_ITEMS}")
                         for u in range(10) for k in range(8)])
    store.close()
    torch.manual_seed(0)
    model = FeedbackTransformer(ModelConfig(n_items=N_ITEMS, max_len=16, d_model=16, n_blocks=1, dropout=0.0))
    save_model(model, tmp_path / "init.safetensors", {"item_ids": [f"m{k}" for k in range(N_ITEMS)]})
    result = CliRunner().invoke(app, ["learn", "--data-dir", str(data), "--init", str(tmp_path / "init.safetensors"),
                                      "--once", "--min-events", "20", "--steps", "3"])
    assert result.exit_code == 0, result.output
    assert ModelRegistry.for_data_dir(data, "default").versions() == ["v000001", "v000002"]
    assert '"accepted": true' in result.output



def test_guard_rail_asks_a_small_held_out_set_for_a_significant_drop():
    from liverec.learning.finetune import FineTuner, significant_drop

    rng = np.random.default_rng(0)
    before = rng.random(60)
    noise = before + np.where(np.arange(60) % 2 == 0, 0.3, -0.3) - 0.06  # ~12% lower on average, within the noise
    assert noise.mean() < 0.95 * before.mean()
    assert not significant_drop(noise - before, 1.64)
    assert significant_drop((before - 0.3) - before, 1.64)  # every event worse: significant
    assert not significant_drop(np.zeros(5), 1.64)

    model = FeedbackTransformer(ModelConfig(n_items=5, max_len=4, d_model=8, n_blocks=1))
    from liverec.model.data import Windows  # an update with no training data: only the guard acts

    empty = Windows(*(np.zeros((0, 4), dtype=np.int64) for _ in range(len(Windows.__dataclass_fields__))))
    values = iter([before, noise, before, noise])
    plain = FineTuner(model, FineTuneConfig(steps=0, tolerance=0.05)).guarded_update(empty, None, lambda m: next(values))
    careful = FineTuner(model, FineTuneConfig(steps=0, tolerance=0.05, significance=1.64)).guarded_update(empty, None, lambda m: next(values))
    assert not plain.accepted and careful.accepted  # the same ~10% drop: noise for the significance test


def test_learning_rate_warms_up_over_the_learners_first_steps():
    """The rate rises linearly over ``warmup_steps`` kept steps; a rejected update's steps are undone."""
    from liverec.learning.finetune import FineTuner
    from liverec.model.data import Windows
    from liverec.model.features import type_id

    items = np.array([[1, 2, 3, 4], [2, 3, 4, 5]], dtype=np.int64)
    zeros = np.zeros_like(items)
    targets = np.concatenate([items[:, 1:], np.array([[5], [1]])], axis=1)
    recent = Windows(items, np.full_like(items, type_id("click")), zeros, zeros, np.full_like(items, -1), targets)
    model = FeedbackTransformer(ModelConfig(n_items=5, max_len=4, d_model=8, n_blocks=1))
    tuner = FineTuner(model, FineTuneConfig(steps=2, batch_size=2, lr=1e-2, warmup_steps=8, replay_ratio=0.0))
    rates = [tuner._rate()]
    tuner.train_steps(recent, None)
    rates.append(tuner._rate())
    assert rates == pytest.approx([1e-2 / 8, 3e-2 / 8]) and tuner.steps_taken == 2
    assert tuner.opt.param_groups[0]["lr"] == pytest.approx(2e-2 / 8)  # the rate the second step used
    tuner.guarded_update(recent, None, lambda m: 1.0 if tuner.steps_taken == 2 else 0.0)  # drops to 0: rejected
    assert tuner.steps_taken == 2
    tuner.train_steps(recent, None, steps=10)
    assert tuner._rate() == pytest.approx(1e-2)  # past the warm-up: the full rate
    assert FineTuner(model, FineTuneConfig(lr=1e-2))._rate() == pytest.approx(1e-2)


def test_fine_tuning_draws_dropout_from_its_own_stream():
    """An update depends on the tuner's seed only: torch's global randomness is neither reseeded
    nor consumed by it, and other draws from it between updates change nothing."""
    from liverec.learning.finetune import FineTuner
    from liverec.model.data import Windows
    from liverec.model.features import type_id

    items = np.array([[1, 2, 3, 4], [2, 3, 4, 5]], dtype=np.int64)
    zeros = np.zeros_like(items)
    targets = np.concatenate([items[:, 1:], np.array([[5], [1]])], axis=1)
    recent = Windows(items, np.full_like(items, type_id("click")), zeros, zeros, np.full_like(items, -1), targets)

    def tuned(noise_between: bool) -> list[torch.Tensor]:
        torch.manual_seed(123)
        model = FeedbackTransformer(ModelConfig(n_items=5, max_len=4, d_model=8, n_blocks=1, dropout=0.5))
        tuner = FineTuner(model, FineTuneConfig(steps=3, batch_size=2, lr=1e-2, replay_ratio=0.0, seed=7))
        for _ in range(2):
            before = torch.get_rng_state()
            tuner.train_steps(recent, None)
            assert torch.equal(torch.get_rng_state(), before)  # global stream untouched
            if noise_between:
                torch.rand(100)  # someone else in the process draws
        return [p.detach().clone() for p in model.parameters()]

    quiet, noisy = tuned(False), tuned(True)
    assert all(torch.equal(a, b) for a, b in zip(quiet, noisy))
    torch.manual_seed(123)
    other = FeedbackTransformer(ModelConfig(n_items=5, max_len=4, d_model=8, n_blocks=1, dropout=0.5))
    FineTuner(other, FineTuneConfig(steps=3, batch_size=2, lr=1e-2, replay_ratio=0.0, seed=8)).train_steps(recent, None)
    assert not all(torch.equal(a, b) for a, b in zip(quiet, other.parameters()))  # the seed does matter


def test_the_next_update_goes_on_with_the_optimizer(service):
    """An update of the version this learner published continues its AdamW moments (grown by the
    new items' rows); an update of a version from elsewhere starts a fresh optimizer."""
    cfg = LearnerConfig(min_events=10, replay_users=8, finetune=FineTuneConfig(steps=5, batch_size=8, lr=1e-3, tolerance=1.0))
    learner = attach(service, "default", cfg, start=False)
    _stream(service, users=12, start_ts=1000.0)
    assert learner.step()["accepted"]
    first = learner._tuner
    k = [n for n, _ in first.model.named_parameters()].index("item_emb.weight")
    _stream(service, users=12, start_ts=2000.0, extra_item=f"m{N_ITEMS}")  # an item the model has no row for
    out = learner.step()
    assert out["accepted"] and out["new_items"] == 1
    second = learner._tuner
    assert second is not first and second.steps_taken == 10
    assert second.cfg.seed != first.cfg.seed  # each update draws its own batches
    moments = second.opt.state_dict()["state"][k]
    assert float(moments["step"]) == 10 and moments["exp_avg"].shape == second.model.item_emb.weight.shape
    assert moments["exp_avg"].shape[0] == first.model.item_emb.weight.shape[0] + 1
    learner._opt = ("v999999", *learner._opt[1:])  # as if the served version came from a retrain
    _stream(service, users=12, start_ts=3000.0)
    assert learner.step()["accepted"] and learner._tuner.steps_taken == 5
