"""API worker processes: ``liverec serve --workers N``.

N uvicorn worker processes share one listening socket (the kernel spreads connections over
them); each builds its own service from the same settings, folds the shared log (or loads the
newest snapshot and folds the tail) and keeps its folds current by following the log, so any
worker answers for any user with read-your-writes (see :mod:`liverec.runtime.follower`). The
parent process supervises them: a worker that dies is replaced, and the new one catches up from
the log before it reports ready.

Readiness: each worker writes ``<data_dir>/run/<server pid>/<pid>.json`` once it serves;
``/v1/health`` counts the live, ready workers of its own server, so a load balancer (or a test)
knows when every worker is up.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

from ..config import Settings

SETTINGS_ENV = "_LIVEREC_WORKER_SETTINGS"  # not LIVEREC_-prefixed: it is no setting of its own


class WorkerRegistry:
    """The ready workers of one server, as one small file per worker process."""

    def __init__(self, run_dir: Path, server_pid: int | None = None) -> None:
        self.dir = Path(run_dir) / str(server_pid or server_process())

    def ready(self, pid: int | None = None) -> None:
        pid = pid or os.getpid()
        self.dir.mkdir(parents=True, exist_ok=True)
        tmp = self.dir / f".{pid}.tmp"
        tmp.write_text(json.dumps({"pid": pid, "ready_at": time.time()}))
        os.replace(tmp, self.dir / f"{pid}.json")

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


def worker_app():  # uvicorn calls this in each worker process (factory=True)
    """The FastAPI app of one worker, built from the settings the parent handed down."""
    from ..api.app import create_app

    settings = Settings.model_validate_json(os.environ[SETTINGS_ENV])
    return create_app(settings, progress=False)


def serve(settings: Settings, workers: int = 1, progress: bool = True) -> None:
    """Serve the API: in this process (``workers == 1``) or as ``workers`` worker processes."""
    import uvicorn

    from ..api.app import create_app

    if workers <= 1:
        uvicorn.run(create_app(settings, progress=progress), host=settings.host, port=settings.port,
                    log_level="warning", access_log=False)
        return
    os.environ[SETTINGS_ENV] = settings.model_dump_json()
    uvicorn.run("liverec.runtime.workers:worker_app", factory=True, workers=workers, host=settings.host,
                port=settings.port, log_level="warning", access_log=False, timeout_worker_healthcheck=30)
