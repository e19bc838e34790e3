"""End to end: `liverec serve` as a real subprocess, spoken to over HTTP; restart keeps state."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(data_dir: Path, port: int) -> subprocess.Popen:
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "liverec.cli", "serve", "--data-dir", str(data_dir), "--port", str(port)],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
    )
    deadline = time.time() + 60
    while time.time() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(proc.stdout.read().decode())
        try:
            if httpx.get(f"http://127.0.0.1:{port}/v1/health", timeout=1).status_code == 200:
                return proc
        except httpx.HTTPError:
            time.sleep(0.2)
    proc.kill()
    raise TimeoutError("server did not become healthy")


def stop(proc: subprocess.Popen) -> None:
    proc.terminate()
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        proc.kill()


def test_serve_over_http_and_restart(tmp_path):
    data_dir, port = tmp_path, free_port()
    url = f"http://127.0.0.1:{port}"
    proc = start_server(data_dir, port)
    try:
        items = {"items": [{"item_id": f"m{k}", "title": f"M{k}", "categories": ["A" if k < 3 else "B"]} for k in range(6)]}
        assert httpx.post(f"{url}/v1/items", json=items).status_code == 200
        events = [{"user_id": f"u{u}", "item_id": f"m{k}", "type": "view", "timestamp": 100 * u + k}
                  for u in range(4) for k in range(6)]
        assert httpx.post(f"{url}/v1/events", json={"events": events}).json() == {"accepted": 24, "duplicates": 0}
        httpx.post(f"{url}/v1/events", json={"user_id": "me", "item_id": "m0", "type": "view"})
        recs = httpx.get(f"{url}/v1/users/me/recommendations", params={"n": 3}).json()["items"]
        assert recs[0]["item_id"] == "m1"
        httpx.post(f"{url}/v1/events", json={"user_id": "me", "item_id": "m1", "type": "block"})
        after = [r["item_id"] for r in httpx.get(f"{url}/v1/users/me/recommendations", params={"explore": "false"}).json()["items"]]
        assert "m1" not in after and "m0" not in after
        assert "liverec_events_accepted" in httpx.get(f"{url}/metrics").text
    except BaseException:
        stop(proc)
        raise

    # restart on the same data dir: everything acknowledged is still there
    proc.kill()  # no graceful shutdown: acknowledged writes must already be on disk
    proc.wait()
    proc = start_server(data_dir, port)
    try:
        again = [r["item_id"] for r in httpx.get(f"{url}/v1/users/me/recommendations", params={"explore": "false"}).json()["items"]]
        assert again == after
        assert httpx.get(f"{url}/v1/users/me").json()["blocked"] == {"item": ["m1"]}
    finally:
        stop(proc)
