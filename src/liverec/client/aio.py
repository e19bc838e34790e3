"""The asyncio client and its event batcher: the blocking ones' calls, awaited."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterable, Mapping
from typing import Any, TypeVar

import httpx

from . import _core as c
from . import models as m
from .errors import APIError, LiverecError, NetworkError
from .sync import _error

T = TypeVar("T")


class AsyncClient(c.Configured):
    """:class:`Client` for asyncio: the same methods and arguments, awaited.

    Usage::

        async with AsyncClient("http://127.0.0.1:8000", app="shop") as client:
            await client.track("u1", "view", "i1")
            top = (await client.recommend("u1", n=10)).item_ids
    """

    def __init__(self, base_url: str = c.DEFAULT_URL, *, api_key: str | None = None, app: str | None = None,
                 timeout: float = 10.0, retry: c.Retry | None = None, headers: Mapping[str, str] | None = None,
                 transport: httpx.AsyncBaseTransport | None = None) -> None:
        self._http = httpx.AsyncClient(base_url=base_url, timeout=timeout, transport=transport)
        self._owner = True
        self._configure(api_key, app, retry or c.Retry(), headers)

    def with_app(self, app: str) -> AsyncClient:
        """The same client speaking for ``app`` (sharing this one's connections)."""
        return self._sharing(app)

    # ---- events ---------------------------------------------------------------------------------

    async def send_events(self, events: Iterable[m.Event | Mapping[str, Any]]) -> m.IngestResult:
        return await self._send(c.send_events(events))

    async def send_event(self, event: m.Event | Mapping[str, Any]) -> m.IngestResult:
        return await self._send(c.send_events([event]))

    async def track(self, user_id: m.Id, type: str, item_id: m.Id | None = None, **fields: Any) -> m.IngestResult:
        return await self.send_event(m.Event(user_id, type, item_id, **fields))

    async def like(self, user_id: m.Id, item_id: m.Id, **fields: Any) -> m.IngestResult:
        return await self.track(user_id, "like", item_id, **fields)

    async def dislike(self, user_id: m.Id, item_id: m.Id | None = None, *, scope: str | None = None,
                      target: m.Id | None = None, **fields: Any) -> m.IngestResult:
        return await self.send_event(c.feedback(user_id, "dislike", item_id, scope, target, fields))

    async def block(self, user_id: m.Id, item_id: m.Id | None = None, *, scope: str | None = None,
                    target: m.Id | None = None, **fields: Any) -> m.IngestResult:
        return await self.send_event(c.feedback(user_id, "block", item_id, scope, target, fields))

    async def undo(self, user_id: m.Id, event_id: m.Id, **fields: Any) -> m.IngestResult:
        return await self.track(user_id, "undo", target=event_id, **fields)

    def batcher(self, max_events: int = 500, max_interval: float = 1.0) -> AsyncEventBatcher:
        return AsyncEventBatcher(self, max_events, max_interval)

    # ---- items ----------------------------------------------------------------------------------

    async def upsert_item(self, item: m.Item | Mapping[str, Any]) -> int:
        return await self._send(c.upsert_item(item))

    async def upsert_items(self, items: Iterable[m.Item | Mapping[str, Any]]) -> int:
        return await self._send(c.upsert_items(items))

    async def item(self, item_id: m.Id) -> m.Item:
        return await self._send(c.get_item(item_id))

    async def similar(self, item_id: m.Id, n: int | None = None) -> m.SimilarItems:
        return await self._send(c.similar(item_id, n))

    # ---- users ----------------------------------------------------------------------------------

    async def recommend(self, user_id: m.Id, n: int | None = None, *, exclude: Iterable[m.Id] | m.Id = (),
                        categories: Iterable[str] | str = (), include_consumed: bool | None = None,
                        diversity: float | None = None, explore: bool | None = None) -> m.Recommendations:
        return await self._send(c.recommend(user_id, n, exclude, categories, include_consumed, diversity, explore))

    async def user(self, user_id: m.Id) -> m.User:
        return await self._send(c.get_user(user_id))

    async def delete_user(self, user_id: m.Id) -> m.DeleteReceipt:
        return await self._send(c.delete_user(user_id))

    async def export_user(self, user_id: m.Id) -> m.UserExport:
        return await self._send(c.export_user(user_id))

    async def users(self, limit: int | None = None, prefix: str | None = None) -> m.Users:
        return await self._send(c.list_users(limit, prefix))

    # ---- operations -----------------------------------------------------------------------------

    async def apps(self) -> list[m.AppSummary]:
        return await self._send(c.apps())

    async def health(self) -> m.Health:
        return await self._send(c.health())

    # ---- experiments ----------------------------------------------------------------------------

    async def experiments(self) -> list[m.Experiment]:
        """The app's live experiments, newest first, with their variants' metrics."""
        return await self._send(c.experiments())

    async def experiment(self, experiment_id: str) -> m.Experiment:
        """One experiment with its metrics and verdict (:class:`NotFound` for an id the app lacks)."""
        return await self._send(c.experiment(experiment_id))

    async def create_experiment(self, name: str, variants: Iterable[Mapping[str, Any]], *, kind: str = "split",
                          traffic: float | None = None, window_s: float | None = None,
                          confidence: float | None = None) -> m.Experiment:
        """Start an experiment (admin scope). ``variants``: dicts with ``name``, optional
        ``share``, ``model_version`` and ``ranking`` (RankingConfig fields to override), the
        first the control; ``kind``: ``split`` or ``interleave``."""
        return await self._send(c.create_experiment(name, variants, kind, traffic, window_s, confidence))

    async def stop_experiment(self, experiment_id: str) -> m.Experiment:
        """Stop it (admin scope): users get the app's own configuration again."""
        return await self._send(c.stop_experiment(experiment_id))

    async def stats(self) -> m.Stats:
        return await self._send(c.stats())

    async def wait_ready(self, timeout: float = 60.0, workers: int | None = None, interval: float = 0.2) -> m.Health:
        deadline = time.monotonic() + timeout
        last: Any = None
        while True:
            try:
                health = await self._send(c.health(), c.NO_RETRY)
                if health.ok and (workers is None or health.workers >= workers):
                    return health
                last = health
            except (NetworkError, APIError) as exc:
                last = exc
            if time.monotonic() >= deadline:
                raise TimeoutError(f"not ready after {timeout} s: {last}")
            await asyncio.sleep(interval)

    # ---- plumbing -------------------------------------------------------------------------------

    async def _send(self, call: c.Call[T], retry: c.Retry | None = None) -> T:
        retry = retry or self.retry
        if not call.idempotent:
            retry = c.NO_RETRY
        attempt = 0
        while True:
            attempt += 1
            try:
                response = await self._http.request(call.method, call.path, params=call.params, json=call.json,
                                                    headers=self._headers)
            except httpx.TransportError as exc:
                wait = retry.wait(attempt, None)
                if wait is None:
                    raise NetworkError(f"{call.method} {call.path}: {type(exc).__name__}: {exc}") from exc
                await asyncio.sleep(wait)
                continue
            if response.is_success:
                return call.read(response.json())
            error = _error(call, response)
            wait = retry.wait(attempt, error.retry_after) if response.status_code in retry.statuses else None
            if wait is None:
                raise error
            await asyncio.sleep(wait)

    async def aclose(self) -> None:
        if self._owner:
            await self._http.aclose()

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()


class AsyncEventBatcher:
    """:class:`EventBatcher` for asyncio: ``await track(...)`` buffers an event (and sends the
    buffer when it holds ``max_events``), a task sends what has waited ``max_interval`` seconds,
    ``await flush()`` returns once the server acknowledged everything tracked before it, and
    ``async with`` / :meth:`aclose` flushes at the end."""

    def __init__(self, client: AsyncClient, max_events: int = 500, max_interval: float = 1.0) -> None:
        c.check_batching(max_events, max_interval)
        self.client = client
        self.max_events = max_events
        self.max_interval = max_interval
        self.last_error: LiverecError | None = None
        self.acknowledged = 0
        self._pending = c.Pending()
        self._sending = asyncio.Lock()
        self._wake = asyncio.Event()
        self._closed = False
        self._timer: asyncio.Task[None] | None = None

    async def track(self, user_id: m.Id, type: str, item_id: m.Id | None = None, **fields: Any) -> str:
        return await self.add(m.Event(user_id, type, item_id, **fields))

    async def add(self, event: m.Event | Mapping[str, Any]) -> str:
        if self._closed:
            raise RuntimeError("the batcher is closed")
        event_id = self._pending.add(event)
        if self._timer is None:
            self._timer = asyncio.get_running_loop().create_task(self._run(), name="liverec-batcher")
        self._wake.set()
        if len(self._pending) >= self.max_events:
            await self.flush()
        return event_id

    async def flush(self) -> m.IngestResult:
        async with self._sending:
            events, since = self._pending.take()
            result = m.IngestResult(0, 0)
            sent = 0
            try:
                for batch in c.chunks(events, self.max_events):
                    result += await self.client.send_events(batch)
                    sent += len(batch)
                    self.acknowledged += len(batch)
            except BaseException:
                # cancelled mid-request too: the batch may have been committed; sent again with
                # the same ids it is counted as duplicates
                self._pending.put_back(events[sent:], since)
                raise
            return result

    @property
    def pending(self) -> list[dict[str, Any]]:
        return [dict(e) for e in self._pending.events]

    async def _run(self) -> None:
        while not self._closed:
            due = self._pending.due_in(self.max_interval)
            if due is None or due > 0:
                self._wake.clear()
                try:
                    await asyncio.wait_for(self._wake.wait(), due)
                except asyncio.TimeoutError:
                    pass
                continue
            try:
                await self.flush()
                self.last_error = None
            except LiverecError as exc:
                self.last_error = exc
                await asyncio.sleep(self.max_interval)

    async def aclose(self) -> m.IngestResult:
        self._closed = True
        if self._timer is not None:
            self._wake.set()
            # let a flush in flight finish (not cancelled: it is acknowledged or put back)
            async with self._sending:
                self._timer.cancel()
            await asyncio.gather(self._timer, return_exceptions=True)
        return await self.flush()

    async def __aenter__(self) -> AsyncEventBatcher:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()
