from __future__ import annotations

import os
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from liverec.api.app import create_app  # noqa: E402
from liverec.config import Settings  # noqa: E402

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return Settings(data_dir=tmp_path / "data")


@pytest.fixture
def client(settings: Settings):
    with TestClient(create_app(settings)) as c:
        yield c


@pytest.fixture
def one_torch_thread():
    """Tiny models: one thread is fastest (and avoids oversubscribing a shared machine)."""
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def shared_data(name: str) -> Path:
    path = SHARED / name
    if not path.exists():
        pytest.skip(f"dataset {path} is not present on this machine")
    return path
