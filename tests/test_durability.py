"""A crash mid-write loses nothing that was acknowledged (SIGKILL while appending)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

from liverec.store import open_store

WRITER = r"""
import sys
from liverec.events import Event
from liverec.store import open_store
store = open_store(sys.argv[1])
k = 0
while True:
    batch = [Event("default", f"e{k}-{j}", f"u{j % 7}", "view", float(k), item_id=f"i{j}") for j in range(50)]
    store.events.append(batch)
    print(k, flush=True)  # the acknowledgement
    k += 1
"""


def test_sigkill_mid_write_keeps_every_acknowledged_batch(tmp_path):
    url = f"sqlite:///{tmp_path}/db.sqlite"
    proc = subprocess.Popen([sys.executable, "-c", WRITER, url], stdout=subprocess.PIPE, text=True)
    acked = []
    deadline = time.time() + 30
    while len(acked) < 40 and time.time() < deadline:
        acked.append(int(proc.stdout.readline()))
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert len(acked) >= 40
    store = open_store(url)
    ids = {e.event_id for _, e in store.events.scan()}
    for k in acked:
        assert all(f"e{k}-{j}" in ids for j in range(50)), f"acknowledged batch {k} lost"
    # no partial batch either: every batch is all or nothing
    batches = {}
    for i in ids:
        k = i.split("-")[0]
        batches[k] = batches.get(k, 0) + 1
    assert set(batches.values()) == {50}
