"""Micro-batching: concurrent requests' inputs go through one batched call.

Several request threads of one worker ask for scores at once: one forward pass over their
sequences costs little more than one over a single sequence, and one pass at a time keeps the
threads from competing for the same cores. Several threads append events at once: one
transaction (one fsync) commits them all (group commit). :class:`MicroBatcher` does this without a thread of
its own and without waiting for a batch to fill: the first caller that finds no batch running
runs one with everything queued so far (itself included); callers arriving meanwhile queue and
the next of them runs the next batch. An idle worker therefore adds no latency, and a busy one
batches as many requests as arrived during the previous pass.

A caller that should not block a thread while it waits (an async request handler: a request
thread held for a whole group commit is one recommendations cannot use) hands its input over
with :meth:`MicroBatcher.submit` and waits on the future; a runner thread of the batcher's own,
started on the first submit, runs batches whenever inputs wait and no caller runs one.

>>> calls = []
>>> double = MicroBatcher(lambda xs: (calls.append(len(xs)), [2 * x for x in xs])[1])
>>> double(21), calls
(42, [1])
"""

from __future__ import annotations

import threading
from concurrent.futures import Future
from typing import Callable, Generic, Sequence, TypeVar

X = TypeVar("X")
Y = TypeVar("Y")


class _Slot(Generic[X, Y]):
    __slots__ = ("x", "y", "error", "done", "future")

    def __init__(self, x: X, future: Future[Y] | None = None) -> None:
        self.x = x
        self.y: Y | None = None
        self.error: BaseException | None = None
        self.done = False
        self.future = future  # a submitted input's: resolved when its batch ran


class MicroBatcher(Generic[X, Y]):
    """Calls ``fn`` (a list of inputs -> a list of outputs, same order) on batches of concurrent
    callers' inputs, at most ``max_batch`` at a time."""

    def __init__(self, fn: Callable[[Sequence[X]], Sequence[Y]], max_batch: int = 64) -> None:
        self.fn = fn
        self.max_batch = max_batch
        self._cond = threading.Condition()
        self._queue: list[_Slot[X, Y]] = []
        self._busy = False
        self.batches = 0  # batched calls made (with ``items``: the mean batch size)
        self.items = 0
        self._runner: threading.Thread | None = None

    def submit(self, x: X) -> Future[Y]:
        """Queue ``x`` for the next batch without waiting for it: the future resolves (or fails)
        when its batch has run."""
        future: Future[Y] = Future()
        with self._cond:
            self._queue.append(_Slot(x, future))
            if self._runner is None:
                self._runner = threading.Thread(target=self._serve, name="liverec-batcher", daemon=True)
                self._runner.start()
            self._cond.notify_all()
        return future

    def _serve(self) -> None:
        """The runner thread: a batch of what waits whenever no caller runs one."""
        while True:
            with self._cond:
                while self._busy or not self._queue:
                    self._cond.wait()
                self._busy = True
                batch, self._queue = self._queue[: self.max_batch], self._queue[self.max_batch:]
            self._run(batch)

    def __call__(self, x: X) -> Y:
        slot: _Slot[X, Y] = _Slot(x)
        with self._cond:
            self._queue.append(slot)
            while self._busy and not slot.done:
                self._cond.wait()
            if not slot.done:  # no batch running and ours not served: run the next one
                self._busy = True
                batch = [slot] + [s for s in self._queue[: self.max_batch] if s is not slot][: self.max_batch - 1]
                taken = set(map(id, batch))
                self._queue = [s for s in self._queue if id(s) not in taken]
        if not slot.done:
            self._run(batch)
        if slot.error is not None:
            raise slot.error
        return slot.y  # type: ignore[return-value]

    def _run(self, batch: list[_Slot[X, Y]]) -> None:
        try:
            ys = self.fn([s.x for s in batch])
            if len(ys) != len(batch):
                raise RuntimeError(f"batched call returned {len(ys)} outputs for {len(batch)} inputs")
            for s, y in zip(batch, ys):
                s.y = y
        except BaseException as exc:  # every caller of the batch sees the failure
            for s in batch:
                s.error = exc
        finally:
            with self._cond:
                for s in batch:
                    s.done = True
                self._busy = False
                self.batches += 1
                self.items += len(batch)
                self._cond.notify_all()
            for s in batch:
                # a future its waiter cancelled (the client went away) is left as it is: the
                # batch ran all the same
                if s.future is not None and s.future.set_running_or_notify_cancel():
                    if s.error is not None:
                        s.future.set_exception(s.error)
                    else:
                        s.future.set_result(s.y)  # type: ignore[arg-type]
