"""Request-scoped dependencies shared by the routers."""

from __future__ import annotations

import json
import re
from typing import Any

import orjson
from fastapi import Header, HTTPException, Request

from ..service import Service

APP_ID = re.compile(r"^[A-Za-z0-9_.\-]{1,64}$")


def get_service(request: Request) -> Service:
    return request.app.state.service


def get_app_id(x_liverec_app: str | None = Header(default=None, description="Tenant (app) id; absent = default")) -> str:
    app = "default" if x_liverec_app is None else x_liverec_app
    if not APP_ID.match(app):
        raise HTTPException(
            status_code=400,
            detail={"errors": [{"field": "X-Liverec-App", "value": app, "expected": "1-64 characters of A-Z a-z 0-9 _ . -"}]},
        )
    return app


async def json_body(request: Request) -> Any:
    """The parsed JSON body, or a 400 naming what was wrong with it."""
    raw = await request.body()
    if not raw:
        raise HTTPException(status_code=400, detail={"errors": [{"field": "body", "value": "", "expected": "a JSON body"}]})
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError:
        pass
    # The slow parser accepts NaN / Infinity literals, so validation can name the field they sit in.
    try:
        return json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        snippet = raw[:80].decode("utf-8", "replace")
        raise HTTPException(
            status_code=400,
            detail={"errors": [{"field": "body", "value": snippet, "expected": f"valid JSON ({exc})"}]},
        ) from None


def validation_error(errors: list[dict[str, Any]], status: int = 422) -> HTTPException:
    return HTTPException(status_code=status, detail={"errors": errors})
