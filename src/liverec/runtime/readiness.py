"""Which worker processes of a server are ready: one small file per worker.

Each worker writes ``<data_dir>/run/<server pid>/<pid>.json`` once it serves and removes it when
it stops; ``/v1/health`` counts the live files of its own server (a killed worker's file is
skipped and removed), so a load balancer or a test knows when every worker is up.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

SETTINGS_ENV = "_LIVEREC_WORKER_SETTINGS"  # not LIVEREC_-prefixed: it is no setting of its own


class WorkerRegistry:
    """The ready workers of one server, as one small file per worker process."""

    def __init__(self, run_dir: Path, server_pid: int | None = None) -> None:
        self.dir = Path(run_dir) / str(server_pid or server_process())

    def ready(self, pid: int | None = None, warm: bool = False) -> None:
        """Mark the worker ready (it serves); ``warm``: its background start-up work is done too."""
        pid = pid or os.getpid()
        self.dir.mkdir(parents=True, exist_ok=True)
        tmp = self.dir / f".{pid}.tmp"
        tmp.write_text(json.dumps({"pid": pid, "ready_at": time.time(), "warm": warm}))
        os.replace(tmp, self.dir / f"{pid}.json")

    def warm(self) -> int:
        """How many of the live workers have finished their background start-up work."""
        count = 0
        for pid in self.live():
            try:
                count += bool(json.loads((self.dir / f"{pid}.json").read_text()).get("warm"))
            except (OSError, ValueError):
                continue
        return count

    def gone(self, pid: int | None = None) -> None:
        (self.dir / f"{pid or os.getpid()}.json").unlink(missing_ok=True)

    def live(self) -> list[int]:
        """Pids of ready workers still running (a killed worker's file is skipped and removed)."""
        out = []
        for path in self.dir.glob("*.json") if self.dir.exists() else []:
            try:
                pid = int(path.stem)
                os.kill(pid, 0)
            except (ValueError, ProcessLookupError):
                path.unlink(missing_ok=True)
                continue
            except PermissionError:
                pass  # alive, another user's
            out.append(pid)
        return sorted(out)


def server_process() -> int:
    """The pid that names this server: the supervising parent of a worker, else this process."""
    return os.getppid() if SETTINGS_ENV in os.environ else os.getpid()
