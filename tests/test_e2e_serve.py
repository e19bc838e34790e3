"""End to end: `liverec serve` as a real subprocess, spoken to over HTTP with liverec.client;
restart keeps state."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx

from liverec.client import Client, Item, LiverecError, Retry


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
    with Client(f"http://127.0.0.1:{port}", timeout=1, retry=Retry(attempts=1)) as client:
        while time.time() < deadline:
            if proc.poll() is not None:
                raise RuntimeError(proc.stdout.read().decode())
            try:
                client.health()
                return proc
            except LiverecError:
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
    client = Client(url)
    try:
        assert client.upsert_items([Item(f"m{k}", title=f"M{k}", categories=["A" if k < 3 else "B"]) for k in range(6)]) == 6
        events = [{"user_id": f"u{u}", "item_id": f"m{k}", "type": "view", "timestamp": 100 * u + k}
                  for u in range(4) for k in range(6)]
        sent = client.send_events(events)
        assert (sent.accepted, sent.duplicates) == (24, 0)
        client.track("me", "view", "m0")
        assert client.recommend("me", n=3).item_ids[0] == "m1"
        client.block("me", "m1")
        after = client.recommend("me", explore=False).item_ids
        assert "m1" not in after and "m0" not in after
        assert "liverec_events_accepted" in httpx.get(f"{url}/metrics").text
        # the same batch sent again (as after a lost answer): the ids the client gave make it duplicates
        again = client.send_events([{**e, "event_id": i} for e, i in zip(events, sent.event_ids)])
        assert (again.accepted, again.duplicates) == (0, 24)
    except BaseException:
        client.close()
        stop(proc)
        raise

    # restart on the same data dir: everything acknowledged is still there (the client's
    # pooled connection died with the server: its next call retries on a new one)
    proc.kill()  # no graceful shutdown: acknowledged writes must already be on disk
    proc.wait()
    proc = start_server(data_dir, port)
    try:
        assert client.recommend("me", explore=False).item_ids == after
        assert client.user("me").blocked == {"item": ["m1"]}
    finally:
        client.close()
        stop(proc)
