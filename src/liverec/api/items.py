"""Catalog endpoints: upsert items, similar items."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, HTTPException, Path, Query, Request
from fastapi.concurrency import run_in_threadpool

from ..auth import INGEST, READ
from ..events import MAX_ID_LEN, EventValidationError
from ..service import Service, field_errors
from .auth import requires
from .deps import get_app_id, get_service, json_body, validation_error
from .schemas import ItemOut, SimilarItems, UpsertResponse, body, errors

# Ids may hold any character, "/" too: the path takes them whole (deps.ItemId), and the route whose
# path extends an item's comes first.
router = APIRouter(prefix="/v1", tags=["items"])


@router.get("/items/{item_id:path}/similar", response_model=SimilarItems, response_model_exclude_unset=True, responses=errors(400, 422))
@requires(READ)
def similar(
    item_id: str,
    n: int = Query(10, ge=1, le=1000),
    app: str = Depends(get_app_id),
    service: Service = Depends(get_service),
) -> dict:
    """Items most similar to this one (none for an id without co-occurrences)."""
    return service.similar(app, item_id, n)


@router.put("/items/{item_id:item_id}", response_model=UpsertResponse, responses=errors(400, 422), openapi_extra=body("ItemUpdate"))
@requires(INGEST)
async def put_item(
    request: Request,
    item_id: str = Path(max_length=MAX_ID_LEN),
    app: str = Depends(get_app_id),
    service: Service = Depends(get_service),
) -> dict[str, int]:
    """Insert or replace one item (title, text, categories, attributes)."""
    raw = await json_body(request)
    try:
        await run_in_threadpool(service.put_item, app, item_id, raw)
    except EventValidationError as exc:
        raise validation_error(field_errors(exc)) from None
    return {"upserted": 1}


@router.post("/items", response_model=UpsertResponse, responses=errors(400, 422), openapi_extra=body("ItemBatchIn"))
@requires(INGEST)
async def post_items(request: Request, app: str = Depends(get_app_id), service: Service = Depends(get_service)) -> dict[str, int]:
    """Batch upsert (all-or-nothing): `{"items": [{"item_id", "title", "text", "categories", "attributes"}]}`."""
    raw: Any = await json_body(request)
    if not isinstance(raw, dict) or not isinstance(raw.get("items"), list):
        raise validation_error([{"field": "items", "value": str(raw)[:80], "expected": "{\"items\": [item objects]}"}])
    extra = sorted(set(raw) - {"items"})
    if extra:
        raise validation_error([{"field": extra[0], "value": raw[extra[0]], "expected": "only 'items' in a batch"}])
    try:
        count = await run_in_threadpool(service.upsert_items, app, raw["items"])
    except EventValidationError as exc:
        raise validation_error(field_errors(exc)) from None
    return {"upserted": count}


@router.get("/items/{item_id:item_id}", response_model=ItemOut, responses=errors(400, 404))
@requires(READ)
def get_item(item_id: str, app: str = Depends(get_app_id), service: Service = Depends(get_service)) -> dict:
    """One item of the app (404 for an id the catalog does not have)."""
    item = service.catalog.get(app, item_id)
    if item is None:
        raise HTTPException(404, detail={"errors": [{"field": "item_id", "value": item_id, "expected": f"an item of app '{app}'"}]})
    return item.to_dict()
