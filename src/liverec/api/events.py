"""POST /v1/events — one event or a batch, all-or-nothing, acknowledged after commit."""

from __future__ import annotations

import asyncio
from typing import Any

from fastapi import APIRouter, Depends, Request
from fastapi.concurrency import run_in_threadpool

from ..auth import INGEST
from ..events import EventValidationError
from ..service import BatchTooLarge, Service, field_errors
from .auth import requires
from .deps import get_app_id, get_service, json_body, validation_error
from .schemas import IngestResponse, body, errors

router = APIRouter(prefix="/v1", tags=["events"])


@router.post("/events", response_model=IngestResponse, responses=errors(400, 413, 422), openapi_extra=body("EventsBody"))
@requires(INGEST)
async def post_events(
    request: Request,
    app: str = Depends(get_app_id),
    service: Service = Depends(get_service),
) -> dict[str, int]:
    """Store one event (a JSON object) or a batch (`{"events": [...]}`).

    The answer comes after the batch is durably committed and applied to the user's state, so
    the next recommendation request already reflects it. A batch with any invalid event is
    rejected whole (422, with every field error); duplicates by `event_id` are counted, not stored.
    """
    body: Any = await json_body(request)
    single = False
    if isinstance(body, dict) and "events" in body:
        extra = sorted(set(body) - {"events"})
        if extra:
            raise validation_error([{"field": extra[0], "value": body[extra[0]], "expected": "only 'events' beside a batch"}])
        raws = body["events"]
        if not isinstance(raws, list):
            raise validation_error([{"field": "events", "value": str(raws)[:80], "expected": "a list of event objects"}])
    elif isinstance(body, dict):
        raws = [body]
        single = True
    else:
        raise validation_error([{"field": "body", "value": str(body)[:80], "expected": "an event object or {\"events\": [...]}"}])
    try:
        # validated in a request thread; the commit is awaited here, holding no thread (a group
        # commit takes a few store round trips: request threads waiting on it were most of their time)
        submitted = await run_in_threadpool(service.submit, app, raws, single)
    except BatchTooLarge as exc:
        raise validation_error(field_errors(exc), status=413) from None
    except EventValidationError as exc:
        raise validation_error(field_errors(exc)) from None
    return service.acknowledge(await asyncio.wrap_future(submitted))
