"""The service serves the promoted Transformer: `liverec train` -> promote -> recommendations
that follow an event sent a moment before, through the model; promotion swaps while serving."""

from __future__ import annotations

import torch

from liverec.config import Settings
from liverec.model.registry import ModelRegistry
from liverec.model.service_data import train_from_service
from liverec.model.serving import PromotedModels
from liverec.runtime.compose import build_service
from liverec.runtime.models import ModelServer
from liverec.service import Service

torch.set_num_threads(1)

RECIPE = {"d_model": 16, "n_blocks": 1, "epochs": 3, "batch_size": 16, "stride": None, "max_len": 20,
          "text": False, "eval_every": 1}


def _events(n_users: int = 30, n_items: int = 15) -> list[dict]:
    out = []
    for u in range(n_users):
        for k in range(8):
            out.append({"event_id": f"u{u}-{k}", "user_id": f"u{u}", "item_id": f"i{(u + k) % n_items}",
                        "type": "rating", "value": 1 + (u + k) % 5, "timestamp": 1_000_000 + 60 * k})
    return out


def test_promoted_model_serves_and_reflects_new_events(tmp_path) -> None:
    settings = Settings(data_dir=tmp_path / "data")
    svc = build_service(settings)
    svc.start()
    svc.ingest("shop", _events())
    svc.close()

    v1 = train_from_service(settings.data_dir, "shop", RECIPE, seed=0, progress=False)
    reg = ModelRegistry.for_data_dir(settings.data_dir, "shop")
    reg.promote(v1)
    assert reg.list()[0]["metrics"]["HR@10"] >= 0.0

    svc = build_service(settings)
    svc.start()
    try:
        assert isinstance(svc.pipeline.scorer, PromotedModels)
        before = svc.recommend("shop", "u1", n=5, include_consumed=True)
        assert before["scorer"] == "transformer" and before["items"]
        model_before = svc.pipeline.scorer.score("shop", svc.state.get("shop", "u1"), 5)
        svc.ingest("shop", [{"event_id": "late", "user_id": "u1", "item_id": "i12", "type": "rating",
                             "value": 5, "timestamp": 1_000_600}])
        model_after = svc.pipeline.scorer.score("shop", svc.state.get("shop", "u1"), 5)
        # every item's model score moved, not only the one just rated
        others = [k for k, i in enumerate(model_after.item_ids) if i != "i12"]
        assert abs(model_after.scores[others] - model_before.scores[others]).max() > 1e-5

        # a newly promoted version is picked up while serving
        v2 = train_from_service(settings.data_dir, "shop", {**RECIPE, "epochs": 1}, seed=1, progress=False)
        reg.promote(v2)
        svc.component(ModelServer).check()
        assert svc.pipeline.scorer.by_app["shop"].version == v2
        assert svc.recommend("shop", "u1", n=5)["scorer"] == "transformer"
    finally:
        svc.close()


def test_an_apps_first_model_promoted_while_serving_is_picked_up(tmp_path) -> None:
    """A tenant with no model at start (nothing under models/) gets its first trained version
    served without a restart: the trainer is another process."""
    import time

    settings = Settings(data_dir=tmp_path / "data")
    svc = build_service(settings)
    svc.start()
    try:
        svc.ingest("news", _events())
        assert svc.recommend("news", "u1", n=5)["scorer"] != "transformer"
        version = train_from_service(settings.data_dir, "news", RECIPE, seed=0, progress=False)
        ModelRegistry.for_data_dir(settings.data_dir, "news").promote(version)
        deadline = time.monotonic() + 30
        while svc.recommend("news", "u1", n=5)["scorer"] != "transformer" and time.monotonic() < deadline:
            time.sleep(0.1)
        assert svc.recommend("news", "u1", n=5)["scorer"] == "transformer"
        assert svc.pipeline.scorer.by_app["news"].version == version
    finally:
        svc.close()
