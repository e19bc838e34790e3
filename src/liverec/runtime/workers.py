"""API worker processes: ``liverec serve --workers N``.

N uvicorn worker processes share one listening socket (the kernel spreads connections over
them); each builds its own service from the same settings, folds the shared log (or loads the
newest snapshot and folds the tail) and keeps its folds current by following the log, so any
worker answers for any user with read-your-writes (see :mod:`liverec.runtime.follower`). The
parent process supervises them: a worker that dies is replaced, and the new one catches up from
the log before it reports ready.

Readiness: see :mod:`liverec.runtime.readiness`.
"""

from __future__ import annotations

import os

from ..config import Settings
from .readiness import SETTINGS_ENV



def worker_app():  # uvicorn calls this in each worker process (factory=True)
    """The FastAPI app of one worker, built from the settings the parent handed down."""
    from ..api.app import create_app

    settings = Settings.model_validate_json(os.environ[SETTINGS_ENV])
    share_cores(settings.workers)
    return create_app(settings, progress=False)


def share_cores(workers: int) -> None:
    """Give each worker's PyTorch its share of the cores: N workers each running intra-op
    threads over every core oversubscribe the machine (one batched forward runs at a time per
    worker, see :mod:`liverec.batching`)."""
    import torch

    torch.set_num_threads(max(1, (os.cpu_count() or 1) // max(workers, 1)))


def serve(settings: Settings, workers: int = 1, progress: bool = True) -> None:
    """Serve the API: in this process (``workers == 1``) or as ``workers`` worker processes."""
    import uvicorn

    if workers <= 1:
        from ..api.app import create_app

        uvicorn.run(create_app(settings, progress=progress), host=settings.host, port=settings.port,
                    log_level="warning", access_log=False)
        return
    # The supervising parent imports none of the service (torch, the API): the workers it spawns
    # import it themselves, so importing it here would only delay them.
    os.environ[SETTINGS_ENV] = settings.model_copy(update={"workers": workers}).model_dump_json()
    uvicorn.run("liverec.runtime.workers:worker_app", factory=True, workers=workers, host=settings.host,
                port=settings.port, log_level="warning", access_log=False, timeout_worker_healthcheck=30)
