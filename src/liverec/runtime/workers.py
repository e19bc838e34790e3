"""API worker processes: ``liverec serve --workers N``.

N worker processes serve one port. Each builds its own service from the same settings, folds the
shared log (or loads the newest snapshot and folds the tail) and keeps its folds current by
following the log, so any worker answers for any user with read-your-writes (see
:mod:`liverec.runtime.follower`).

Each worker listens on a socket of its own bound with ``SO_REUSEPORT``, so the kernel spreads
new connections evenly over the workers by hashing them. One socket shared by every worker (what
``uvicorn --workers`` does) lets whichever worker wakes first accept a burst of connections: under
32 keep-alive connections, runs alternated between ~300 req/s and ~150 req/s with one worker
idle (ML-1M, 2 workers, same code). The parent process supervises them: a worker that dies is
replaced, and the new one catches up from the log before it reports ready; a worker that dies
before it ever got ready stops the server (it would fail the same way again).

Readiness: see :mod:`liverec.runtime.readiness`.
"""

from __future__ import annotations

import multiprocessing
import os
import signal
import socket
import sys
import time
from pathlib import Path

from ..config import Settings
from .readiness import SETTINGS_ENV, WorkerRegistry


# Seconds an idle keep-alive connection stays open. uvicorn's 5 s default races clients that
# reuse a connection near it, and a worker whose loop was held up for a moment closed every
# connection whose timer ran out meanwhile, requests already sent on them included (78 failed
# requests in a 30-minute soak, in bursts); proxies and clients keep connections ~60 s.
KEEP_ALIVE_S = 65


def share_cores(workers: int) -> None:
    """Give each worker's PyTorch its share of the cores: N workers each running intra-op
    threads over every core oversubscribe the machine (one batched forward runs at a time per
    worker, see :mod:`liverec.batching`).

    NumPy's BLAS gets one thread in every serving process: its products here are small (one
    item vector against the catalog, a slate against a slate), and BLAS threads that spin for a
    core the request threads hold made a 10k x 64 product ~20x slower on 2 busy cores (5.9 ms
    against 0.29 ms), a seventh of a worker's time under the soak (py-spy)."""
    import torch
    from threadpoolctl import threadpool_limits

    torch.set_num_threads(max(1, (os.cpu_count() or 1) // max(workers, 1)))
    threadpool_limits(1, user_api="blas")


def listen(host: str, port: int) -> socket.socket:
    """A listening socket of this worker's own on ``host:port``, shared with its siblings."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind((host, port))
    sock.listen(2048)
    return sock


def run_worker(settings_json: str) -> None:
    """One worker process: its service, its socket, its uvicorn server (until SIGTERM)."""
    import uvicorn

    from ..api.app import create_app

    os.environ[SETTINGS_ENV] = settings_json  # tells readiness this process is a worker
    settings = Settings.model_validate_json(settings_json)
    share_cores(settings.workers)
    sock = listen(settings.host, settings.port)
    config = uvicorn.Config(create_app(settings, progress=False), log_level="warning", access_log=False,
                            timeout_keep_alive=KEEP_ALIVE_S)
    uvicorn.Server(config).run(sockets=[sock])


class Supervisor:
    """Starts the workers, replaces one that dies, stops them all on SIGTERM / SIGINT."""

    def __init__(self, settings: Settings, workers: int) -> None:
        self.settings_json = settings.model_copy(update={"workers": workers}).model_dump_json()
        self.workers = workers
        self.registry = WorkerRegistry(Path(settings.data_dir) / "run", server_pid=os.getpid())
        self._context = multiprocessing.get_context("spawn")  # a fresh interpreter: no forked threads
        self._stop = False

    def _spawn(self, index: int) -> multiprocessing.process.BaseProcess:
        """Worker ``index`` (a replacement takes the index of the worker it replaces)."""
        settings = Settings.model_validate_json(self.settings_json).model_copy(update={"worker_index": index})
        process = self._context.Process(target=run_worker, args=(settings.model_dump_json(),), name="liverec-worker")
        process.start()
        return process

    def run(self) -> int:
        """Supervise until asked to stop; the exit status (1: a worker could not start)."""
        settings = Settings.model_validate_json(self.settings_json)
        # SO_REUSEPORT would let the workers join another server already on this port, and
        # split its traffic with it: make sure the port is free first.
        probe = socket.socket(socket.AF_INET6 if ":" in settings.host else socket.AF_INET, socket.SOCK_STREAM)
        try:
            probe.bind((settings.host, settings.port))
        except OSError as exc:
            print(f"liverec: cannot serve on {settings.host}:{settings.port}: {exc}", file=sys.stderr)
            return 1
        finally:
            probe.close()
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda *_: setattr(self, "_stop", True))
        # glibc gives each thread that allocates an arena of its own, up to 8 per core, each holding
        # on to what was freed in it: two per worker, unless the environment says otherwise.
        os.environ.setdefault("MALLOC_ARENA_MAX", "2")
        processes = [self._spawn(k) for k in range(self.workers)]
        ever_ready: set[int] = set()
        status = 0
        while not self._stop:
            time.sleep(0.2)
            ever_ready.update(self.registry.live())
            for k, process in enumerate(processes):
                if process.is_alive():
                    continue
                if process.pid not in ever_ready:
                    print(f"liverec: worker {process.pid} exited with {process.exitcode} before it was ready; stopping",
                          file=sys.stderr)
                    self._stop, status = True, 1
                    break
                processes[k] = self._spawn(k)  # catches up from the log, then reports ready
        for process in processes:
            if process.is_alive():
                process.terminate()  # SIGTERM: uvicorn finishes the requests in flight
        deadline = time.monotonic() + 15
        for process in processes:
            process.join(max(0.1, deadline - time.monotonic()))
            if process.is_alive():
                process.kill()
                process.join()
        return status


def serve(settings: Settings, workers: int = 1, progress: bool = True) -> None:
    """Serve the API: in this process (``workers == 1``) or as ``workers`` worker processes."""
    if workers <= 1:
        import uvicorn

        from ..api.app import create_app

        share_cores(1)

        uvicorn.run(create_app(settings, progress=progress), host=settings.host, port=settings.port,
                    log_level="warning", access_log=False, timeout_keep_alive=KEEP_ALIVE_S)
        return
    # The supervising parent imports none of the service (torch, the API): the workers it spawns
    # import it themselves, so importing it here would only delay them.
    status = Supervisor(settings, workers).run()
    if status:
        raise SystemExit(status)
