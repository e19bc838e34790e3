"""Request-scoped dependencies shared by the routers."""

from __future__ import annotations

import json
import re
from typing import Any

import orjson
from fastapi import Header, HTTPException, Request
from starlette.convertors import Convertor, register_url_convertor

from ..service import Service
from ..store.base import ApiKey

APP_HEADER = "X-Liverec-App"
APP_PATTERN = r"^[A-Za-z0-9_.-]{1,64}$"
APP_ID = re.compile(APP_PATTERN)
APP_EXPECTED = "1-64 characters of A-Z a-z 0-9 _ . -"
KEY_STATE = "api_key"  # request.state attribute holding the verified key (liverec.api.auth sets it)


class _Id(Convertor[str]):
    def convert(self, value: str) -> str:
        return value

    def to_string(self, value: str) -> str:
        return value


class ItemId(_Id):
    """An item id in a path: any characters, "/" too (a client sends it as %2F), except that one
    ending in "/similar" names that route."""

    regex = r".+(?<!/similar)"


class UserId(_Id):
    """A user id in a path: any characters, except that one ending in "/recommendations" or
    "/export" names that route."""

    regex = r".+(?<!/recommendations)(?<!/export)"


register_url_convertor("item_id", ItemId())
register_url_convertor("user_id", UserId())


# The dependencies below do no I/O, so they are coroutines: FastAPI runs a plain function
# dependency in a worker thread, and those two hops per request were ~2 x 0.1 ms of CPU and GIL
# hand-offs on the hottest routes (py-spy of a soak worker).
async def get_service(request: Request) -> Service:
    return request.app.state.service


def request_key(request: Request) -> ApiKey | None:
    """The request's verified API key (``None`` while the service runs open)."""
    return getattr(request.state, KEY_STATE, None)


async def get_app_id(
    request: Request,
    x_liverec_app: str = Header(
        "default",
        description=f"Tenant (app) id, {APP_EXPECTED}; absent = default (a malformed one answers 400). "
                    "With an API key the app is the key's: absent = the key's, another app answers 403",
        # documented here, checked below with the same pattern (a 400 that names the header)
        json_schema_extra={"minLength": 1, "maxLength": 64, "pattern": APP_PATTERN},
    ),
) -> str:
    if not APP_ID.fullmatch(x_liverec_app):
        raise HTTPException(status_code=400, detail={"errors": [{"field": APP_HEADER, "value": x_liverec_app, "expected": APP_EXPECTED}]})
    key = request_key(request)
    if key is None:
        return x_liverec_app
    # the key decides the app; a header that names another is refused rather than ignored, so a
    # client that believes it writes app B never writes app A unawares
    if APP_HEADER.lower() in request.headers and x_liverec_app != key.app:
        raise HTTPException(status_code=403, detail={"errors": [{"field": APP_HEADER, "value": x_liverec_app,
                                                                 "expected": f"the key's app '{key.app}' (or no header)"}]})
    return key.app


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
