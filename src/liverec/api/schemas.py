"""Response models and documented request bodies (validation itself lives in events/catalog)."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field


class EventIn(BaseModel):
    event_id: str | None = Field(None, description="Client id for idempotency; generated if absent")
    user_id: str
    item_id: str | None = Field(None, description="Absent for search and scoped feedback")
    type: str = Field(description="impression, view, click, add_to_cart, purchase, rating, like, favorite, share, skip, dislike, block, unblock, search, review, tag, undo")
    timestamp: float | str | None = Field(None, description="Epoch seconds or ISO-8601; default now")
    value: float | None = Field(None, description="Rating value")
    text: str | None = Field(None, description="Search query, review or tag text")
    scope: str | None = Field("item", description="item | category | any item attribute (creator, ...)")
    target: str | None = Field(None, description="The scoped value (e.g. a category), or the event_id an undo reverts")
    context: dict[str, Any] | None = None


class EventBatchIn(BaseModel):
    events: list[EventIn]


class IngestResponse(BaseModel):
    accepted: int
    duplicates: int


class ItemIn(BaseModel):
    item_id: str
    title: str = ""
    text: str = ""
    categories: list[str] = []
    attributes: dict[str, Any] = {}


class ItemBatchIn(BaseModel):
    items: list[ItemIn]


def _body(*models: type[BaseModel]) -> dict[str, Any]:
    schemas = [m.model_json_schema(ref_template="#/components/schemas/{model}") for m in models]
    return {"requestBody": {"required": True, "content": {"application/json": {"schema": {"anyOf": schemas} if len(schemas) > 1 else schemas[0]}}}}


EVENTS_BODY = _body(EventIn, EventBatchIn)
ITEMS_BODY = _body(ItemBatchIn)
ITEM_BODY = _body(ItemIn)
