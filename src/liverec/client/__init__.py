"""A Python client of liverec's HTTP API (``docs/api.md``), blocking and asyncio.

It needs httpx and the standard library only (not the server, not torch)::

    from liverec.client import Client

    with Client("http://127.0.0.1:8000", app="shop", api_key="...") as client:
        client.upsert_items([Item("i1", title="Heat", categories=["Crime"])])
        client.track("u1", "view", "i1")
        client.block("u1", scope="category", target="Horror")
        for rec in client.recommend("u1", n=10, diversity=0.3).items:
            print(rec.item_id, rec.score, rec.because)

Every call it retries is idempotent: events get an ``event_id`` before their first attempt (the
server stores an id once per app), so a batch sent again after a lost answer is counted as
duplicates. :class:`EventBatcher` buffers ``track`` calls and sends them in batches.
"""

from __future__ import annotations

from ._core import APP_HEADER, Retry
from .aio import AsyncClient, AsyncEventBatcher
from .errors import (
    APIError,
    BadRequest,
    FieldError,
    Forbidden,
    InvalidRequest,
    LiverecError,
    NetworkError,
    NotFound,
    PayloadTooLarge,
    RateLimited,
    ServerError,
    Unauthorized,
)
from .models import (
    AppSummary,
    DeleteReceipt,
    Event,
    Health,
    HistoryEntry,
    IngestResult,
    Item,
    Recommendation,
    Recommendations,
    SimilarItem,
    SimilarItems,
    Stats,
    Totals,
    User,
    UserExport,
    Users,
    UserSummary,
)
from .sync import Client, EventBatcher

__all__ = [
    "APP_HEADER", "APIError", "AppSummary", "AsyncClient", "AsyncEventBatcher", "BadRequest", "Client", "DeleteReceipt",
    "Event", "EventBatcher", "FieldError", "Forbidden", "Health", "HistoryEntry", "IngestResult", "InvalidRequest",
    "Item", "LiverecError", "NetworkError", "NotFound", "PayloadTooLarge", "RateLimited", "Recommendation",
    "Recommendations", "Retry", "ServerError", "SimilarItem", "SimilarItems", "Stats", "Totals", "Unauthorized", "User",
    "UserExport", "UserSummary", "Users",
]
