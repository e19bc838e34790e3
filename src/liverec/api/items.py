"""Catalog endpoints: upsert items, similar items."""

from __future__ import annotations

from fastapi import APIRouter, Depends, HTTPException, Query, Request
from fastapi.concurrency import run_in_threadpool

from ..events import EventValidationError
from ..service import Service, field_errors
from .deps import get_app_id, get_service, json_body, validation_error
from .schemas import ITEM_BODY, ITEMS_BODY

router = APIRouter(prefix="/v1", tags=["items"])


@router.put("/items/{item_id}", openapi_extra=ITEM_BODY)
async def put_item(item_id: str, request: Request, app: str = Depends(get_app_id), service: Service = Depends(get_service)) -> dict:
    """Insert or replace one item (title, text, categories, attributes)."""
    body = await json_body(request)
    try:
        await run_in_threadpool(service.put_item, app, item_id, body)
    except EventValidationError as exc:
        raise validation_error(field_errors(exc)) from None
    return {"upserted": 1}


@router.post("/items", openapi_extra=ITEMS_BODY)
async def post_items(request: Request, app: str = Depends(get_app_id), service: Service = Depends(get_service)) -> dict:
    """Batch upsert: `{"items": [{"item_id", "title", "text", "categories", "attributes"}]}`."""
    body = await json_body(request)
    if not isinstance(body, dict) or not isinstance(body.get("items"), list):
        raise validation_error([{"field": "items", "value": str(body)[:80], "expected": "{\"items\": [item objects]}"}])
    try:
        count = await run_in_threadpool(service.upsert_items, app, body["items"])
    except EventValidationError as exc:
        raise validation_error(field_errors(exc)) from None
    return {"upserted": count}


@router.get("/items/{item_id}")
def get_item(item_id: str, app: str = Depends(get_app_id), service: Service = Depends(get_service)) -> dict:
    item = service.catalog.get(app, item_id)
    if item is None:
        raise HTTPException(404, detail={"errors": [{"field": "item_id", "value": item_id, "expected": f"an item of app '{app}'"}]})
    return item.to_dict()


@router.get("/items/{item_id}/similar")
def similar(
    item_id: str,
    n: int = Query(10, ge=1, le=1000),
    app: str = Depends(get_app_id),
    service: Service = Depends(get_service),
) -> dict:
    """Items most similar to this one."""
    return service.similar(app, item_id, n)
