from __future__ import annotations

import os
from pathlib import Path

import httpx
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


class InProcess(httpx.BaseTransport):
    """An httpx transport that hands each request to a TestClient: the liverec client speaking
    to the app in this process (TestClient is built on another HTTP library than httpx)."""

    def __init__(self, test_client: TestClient):
        self.test_client = test_client

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        r = self.test_client.request(request.method, str(request.url), headers=list(request.headers.multi_items()),
                                     content=request.read())
        # the body comes back decoded: drop what described its encoding on the wire
        headers = [(k, v) for k, v in r.headers.multi_items() if k.lower() not in ("content-encoding", "content-length")]
        return httpx.Response(r.status_code, headers=headers, content=r.content)


@pytest.fixture
def api(client):
    """A liverec Client speaking to the ``client`` fixture's app."""
    from liverec.client import Client

    with Client("http://testserver", transport=InProcess(client)) as c:
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


@pytest.fixture(params=["sqlite", "postgresql"])
def store_url(request):
    """A store URL on each backend: None for the embedded SQLite default of the data dir, or a
    fresh PostgreSQL schema (dropped afterwards; skipped where the server is not reachable)."""
    if request.param == "sqlite":
        yield None
        return
    from .test_store_contract import PG_URL, _postgres_available

    reason = _postgres_available()
    if reason:
        pytest.skip(reason)
    import uuid

    from liverec.store import open_store

    url = f"{PG_URL}?schema=t_{uuid.uuid4().hex[:12]}"
    yield url
    store = open_store(url)
    store.drop()
    store.close()
