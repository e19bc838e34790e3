"""Data-parallel training on several processes (``torch.distributed``, DDP).

:func:`train_parallel` takes the arguments of :func:`liverec.model.train.train` and a
:class:`Launch` (how many processes here, how many machines), starts the ranks, and returns rank
0's :class:`~liverec.model.train.TrainResult` in the calling process: that process (on node 0)
is the one that evaluates, saves or registers the model, so it happens once. The data is prepared
once per machine, by the caller, and handed to the ranks.

The ranks are started with ``torch.multiprocessing`` (spawn): a fixed group needs no elastic
agent, a rank's exception reaches the caller with its traceback and stops the others, and a
spawned child inherits no OpenMP thread pool from the parent (a forked one would). The ranks
find each other through a :class:`Rendezvous`, a key-value store that node 0's calling process
hosts (on a port the OS picks, on one machine): the machines' callers meet there first, to agree
on what to train on.

Each rank gets ``max(1, cores // nproc)`` PyTorch threads, gloo on CPU, NCCL and GPU
``local_rank`` when the recipe's ``device`` is ``cuda``.

>>> Launch(nproc=2).world_size, Launch(nproc=2, nnodes=3, node_rank=1, master_addr="10.0.0.1", master_port=29500).first_rank
(2, 2)
"""

from __future__ import annotations

import dataclasses
import json
import os
import socket
import sys
import tempfile
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from safetensors.torch import load_file, save_file

from liverec.model.data import Sequences
from liverec.model.train import TrainConfig, TrainResult, ValidationSet, train
from liverec.model.transformer import FeedbackTransformer, ModelConfig

DEFAULT_MASTER_ADDR = "127.0.0.1"


@dataclass(frozen=True)
class Launch:
    """Where the ranks of one training run are: ``nproc`` processes on each of ``nnodes`` machines.

    One machine: leave the rest (node 0 is this machine, and a free port is picked). Several: run
    the same command on every machine with its ``node_rank`` and the address and port of node 0,
    which every rank reaches. ``threads`` is PyTorch threads per rank (None: cores of this machine
    // nproc).
    """

    nproc: int = 1
    nnodes: int = 1
    node_rank: int = 0
    master_addr: str | None = None
    master_port: int | None = None
    threads: int | None = None
    timeout_s: float = 1800.0  # how long a rank waits for the others (start-up, a collective)

    def __post_init__(self) -> None:
        if self.nproc < 1:
            raise ValueError(f"nproc={self.nproc}: expected at least 1 process")
        if self.nnodes < 1:
            raise ValueError(f"nnodes={self.nnodes}: expected at least 1 machine")
        if not 0 <= self.node_rank < self.nnodes:
            raise ValueError(f"node_rank={self.node_rank}: expected 0 <= node_rank < nnodes={self.nnodes}")
        if self.nnodes > 1 and (self.master_port is None or self.master_addr is None):
            raise ValueError(f"nnodes={self.nnodes}: every machine needs master_addr (node 0's address, got "
                             f"{self.master_addr!r}) and master_port (got {self.master_port})")
        if self.master_port is not None and not 0 < self.master_port < 65536:
            raise ValueError(f"master_port={self.master_port}: expected 1..65535")
        if self.threads is not None and self.threads < 1:
            raise ValueError(f"threads={self.threads}: expected at least 1")

    @property
    def world_size(self) -> int:
        return self.nproc * self.nnodes

    @property
    def first_rank(self) -> int:
        """Global rank of this machine's first process."""
        return self.node_rank * self.nproc

    @property
    def parallel(self) -> bool:
        return self.world_size > 1

    @property
    def addr(self) -> str:
        return self.master_addr or DEFAULT_MASTER_ADDR

    def rank_threads(self) -> int:
        return self.threads or max(1, _cores() // self.nproc)


@dataclass(frozen=True)
class RankInfo:
    """What a rank's function is told about itself (the process group is set up already)."""

    rank: int
    local_rank: int
    world_size: int
    device: str  # "cpu" or "cuda:<local GPU>"


def _cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def free_port(host: str = DEFAULT_MASTER_ADDR) -> int:
    """A TCP port free on ``host`` now (tests that stand in for several machines on one)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


class Rendezvous:
    """The meeting point of one run: a ``TCPStore`` served by node 0's calling process at
    ``master_addr:master_port`` (one machine: a port the OS picks, so none is taken by surprise),
    to which the other machines' callers and then every rank connect. It lives as long as this
    object; node 0's caller outlives its ranks, so the store outlives every use of it.
    """

    def __init__(self, launch: Launch) -> None:
        self.launch = launch
        self.store = dist.TCPStore(launch.addr, launch.master_port or 0, is_master=launch.node_rank == 0,
                                   wait_for_workers=False, timeout=timedelta(seconds=launch.timeout_s))
        self.port = int(self.store.port)

    def agree(self, key: str, value: str) -> str:
        """Node 0's ``value`` for ``key`` on every machine (the others wait for it)."""
        if self.launch.node_rank == 0:
            self.store.set(f"liverec/{key}", value)
            return value
        return self.store.get(f"liverec/{key}").decode()


def spawn(fn: Callable[..., None], launch: Launch, *args: Any, device: str = "cpu",
          rendezvous: Rendezvous | None = None) -> None:
    """Run ``fn(info: RankInfo, *args)`` on this machine's ``launch.nproc`` ranks, each inside the
    process group, and wait for all of them. ``fn`` and ``args`` must be picklable (``fn`` a
    module-level function). Raises when any rank fails."""
    rdv = rendezvous or Rendezvous(launch)
    mp.start_processes(_rank_entry, args=(fn, launch, rdv.port, device, args), nprocs=launch.nproc, join=True,
                       start_method="spawn")


def _rank_entry(local_rank: int, fn: Callable[..., None], launch: Launch, port: int, device: str,
                args: tuple[Any, ...]) -> None:
    torch.set_num_threads(launch.rank_threads())
    if device.startswith("cuda"):
        gpu = local_rank % torch.cuda.device_count()
        torch.cuda.set_device(gpu)
        device, backend = f"cuda:{gpu}", "nccl"
    else:
        device, backend = "cpu", "gloo"
    rank = launch.first_rank + local_rank
    timeout = timedelta(seconds=launch.timeout_s)
    store = dist.TCPStore(launch.addr, port, is_master=False, timeout=timeout)
    dist.init_process_group(backend, store=store, rank=rank, world_size=launch.world_size, timeout=timeout)
    try:
        fn(RankInfo(rank, local_rank, launch.world_size, device), *args)
        dist.barrier()  # no rank leaves while another still needs the group
    finally:
        dist.destroy_process_group()
    _leave()


def _leave() -> None:
    """A rank whose work is done and written ends here, without the interpreter's teardown: at
    teardown C++ objects of gloo and c10d can be destroyed while one of their threads is still
    joinable, and ``std::terminate`` aborts the process ("terminate called without an active
    exception", SIGABRT), which turns a finished run into a failed one (seen in a full test run,
    rare: 37 runs of the same test in a row did not show it)."""
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


def train_parallel(
    launch: Launch,
    model_cfg: ModelConfig,
    train_cfg: TrainConfig,
    train_seqs: Sequences,
    valid: ValidationSet | None = None,
    item_text: np.ndarray | None = None,
    event_text: np.ndarray | None = None,
    progress: bool = True,
    log: Callable[[str], None] | None = None,
    rendezvous: Rendezvous | None = None,
) -> TrainResult | None:
    """:func:`~liverec.model.train.train` on ``launch.world_size`` ranks; rank 0's result here on
    node 0, None on the other machines. One process (``nproc=1, nnodes=1``) trains in this process.

    With several ranks, rank 0 writes its progress and ``log`` lines to stderr itself (a callable
    does not cross into a spawned process; ``log`` only says whether to write them). Pass the
    ``rendezvous`` the machines used to agree on their data, if they did.
    """
    if not launch.parallel:
        return train(model_cfg, train_cfg, train_seqs, valid, item_text, event_text, progress, log)
    with tempfile.TemporaryDirectory(prefix="liverec-train-") as tmp:
        spawn(_train_rank, launch, model_cfg, train_cfg, train_seqs, valid, item_text, event_text, progress,
              log is not None, tmp, device=train_cfg.device, rendezvous=rendezvous)
        if launch.node_rank != 0:
            return None
        return _read_result(Path(tmp))


def _stderr_line(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def _train_rank(info: RankInfo, model_cfg: ModelConfig, train_cfg: TrainConfig, train_seqs: Sequences,
                valid: ValidationSet | None, item_text: np.ndarray | None, event_text: np.ndarray | None,
                progress: bool, log: bool, out_dir: str) -> None:
    cfg = dataclasses.replace(train_cfg, device=info.device, threads=torch.get_num_threads())
    main = info.rank == 0
    res = train(model_cfg, cfg, train_seqs, valid, item_text, event_text, progress=progress and main,
                log=_stderr_line if log and main else None)
    if main:
        _write_result(Path(out_dir), res)


def _write_result(out: Path, res: TrainResult) -> None:
    """Rank 0's result as files (safetensors + JSON: no pickle, and no pipe that could fill up
    while the caller waits for the ranks to finish)."""
    save_file({k: v.detach().contiguous().cpu() for k, v in res.model.state_dict().items()},
              str(out / "model.safetensors"))
    (out / "result.json").write_text(json.dumps({
        "model_config": res.model.cfg.to_dict(), "best_epoch": res.best_epoch, "best_metrics": res.best_metrics,
        "history": res.history, "train_seconds": res.train_seconds, "epochs_run": res.epochs_run,
    }, default=float))


def _read_result(out: Path) -> TrainResult:
    doc = json.loads((out / "result.json").read_text())
    model = FeedbackTransformer(ModelConfig.from_dict(doc["model_config"]))
    model.load_state_dict(load_file(str(out / "model.safetensors")))
    model.eval()
    return TrainResult(model, doc["best_epoch"], doc["best_metrics"], doc["history"], doc["train_seconds"],
                       doc["epochs_run"])
