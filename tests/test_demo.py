"""`liverec demo`: the first start generates the data, trains and promotes a Transformer, and the
service built afterwards serves it with the online learner on; later starts reuse the model."""

from __future__ import annotations

import os

import pytest
from fastapi.testclient import TestClient
from typer.testing import CliRunner

from liverec import cli, demo
from liverec.api.app import create_app
from liverec.config import Settings
from liverec.demo import DemoConfig, enable_demo_learner, prepare_demo
from liverec.model.registry import ModelRegistry

LEARNER_ENV = ("LIVEREC_LEARNER", "LIVEREC_LEARNER_INTERVAL")

# A few seconds of training instead of the demo's minute: a small catalog, a tiny model, no text
# encoder to load.
TINY_DATA = DemoConfig(items=120, users=40)
TINY_RECIPE = {"d_model": 16, "n_blocks": 1, "max_len": 20, "batch_size": 64, "epochs": 2, "eval_every": 1,
               "warmup_steps": 5, "text": False, "time_budget_s": 20.0}


@pytest.fixture
def clean_learner_env():
    """No learner variables from the caller's shell, and none of a test's left for the next one."""
    saved = {name: os.environ.pop(name) for name in LEARNER_ENV if name in os.environ}
    yield
    for name in LEARNER_ENV:
        os.environ.pop(name, None)
    os.environ.update(saved)


@pytest.mark.usefixtures("one_torch_thread", "clean_learner_env")
def test_first_start_serves_the_transformer_and_later_starts_reuse_it(tmp_path):
    assert enable_demo_learner(TINY_DATA.app) == {"LIVEREC_LEARNER": "default", "LIVEREC_LEARNER_INTERVAL": "10"}
    settings = Settings(data_dir=tmp_path / "demo")
    lines: list[str] = []

    setup = prepare_demo(settings, TINY_DATA, TINY_RECIPE, say=lines.append, progress=False)

    assert setup.trained and setup.generated is not None and setup.generated["events"] > 0
    registry = ModelRegistry.for_data_dir(settings.data_dir, TINY_DATA.app)
    assert registry.promoted() == setup.version
    assert setup.manifest["train_config"]["time_budget_s"] == 20.0  # the demo's budget reached training
    assert any(setup.version in line and "promoted" in line for line in lines)

    with TestClient(create_app(settings)) as client:
        assert client.get("/v1/health").json()["scorer"] == "transformer"
        recs = client.get("/v1/users/user-0001/recommendations", params={"n": 5}).json()
        assert recs["scorer"] == "transformer" and len(recs["items"]) == 5
        stats = client.get("/v1/stats").json()
        assert stats["model"]["scorer"] == "transformer"
        learner = stats["learner"]
        assert learner is not None and learner["app"] == "default"
        assert learner["version"] == setup.version and learner["interval_s"] == 10.0

    again = prepare_demo(settings, TINY_DATA, TINY_RECIPE, progress=False)
    assert not again.trained and again.generated is None and again.version == setup.version
    assert registry.versions() == [setup.version]


@pytest.mark.usefixtures("clean_learner_env")
def test_demo_command_turns_the_learner_on_before_building_settings(tmp_path, monkeypatch):
    seen: dict = {}

    def fake_prepare(settings, cfg, recipe, say=None, progress=True):
        seen["learner_env"] = {name: os.environ.get(name) for name in LEARNER_ENV}
        seen["settings"], seen["cfg"], seen["recipe"] = settings, cfg, recipe
        return demo.DemoSetup(cfg.app, None, "v000001", False, {})

    monkeypatch.setattr(demo, "prepare_demo", fake_prepare)
    monkeypatch.setattr(cli, "_serve", lambda settings, *args, **kwargs: seen.setdefault("served", settings))
    result = CliRunner().invoke(cli.app, ["demo", "--data-dir", str(tmp_path / "d"), "--port", "8765",
                                          "--items", "50", "--users", "10", "--train-budget", "30"])

    assert result.exit_code == 0, result.output
    assert seen["learner_env"] == {"LIVEREC_LEARNER": "default", "LIVEREC_LEARNER_INTERVAL": "10"}
    assert seen["served"] is seen["settings"] and seen["settings"].port == 8765
    assert (seen["cfg"].items, seen["cfg"].users, seen["recipe"]) == (50, 10, {"time_budget_s": 30.0})
    assert "http://127.0.0.1:8765/" in result.stdout


@pytest.mark.usefixtures("clean_learner_env")
def test_the_environment_can_keep_the_demo_learner_off():
    os.environ["LIVEREC_LEARNER"] = ""
    assert enable_demo_learner("default")["LIVEREC_LEARNER"] == ""


def test_liverec_demo_command_ends_with_the_transformer_serving(tmp_path):
    """The main job as a newcomer runs it (small): `liverec demo` trains at first start, promotes,
    and its health answers with the Transformer as the scorer."""
    import signal
    import subprocess
    import sys
    import time

    from liverec.client import Client, LiverecError, Retry

    from .test_e2e_serve import free_port

    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "liverec.cli", "demo", "--data-dir", str(tmp_path / "demo"), "--port", str(port),
         "--items", "150", "--users", "40", "--train-budget", "10"],
        env={**os.environ, "HF_HUB_OFFLINE": "1"}, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    client = Client(f"http://127.0.0.1:{port}", retry=Retry(attempts=1))
    try:
        deadline = time.time() + 240
        health = None
        while time.time() < deadline and proc.poll() is None:
            try:
                health = client.health()
                if health.scorer == "transformer":
                    break
            except LiverecError:
                pass
            time.sleep(0.5)
        assert proc.poll() is None, proc.stdout.read().decode()[-2000:]
        assert health is not None and health.scorer == "transformer", health
        recs = client.recommend("user-0001")
        assert recs.scorer == "transformer" and recs.items
    finally:
        client.close()
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
