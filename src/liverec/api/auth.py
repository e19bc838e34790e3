"""Who may call which route: API keys, the scope each route needs, per-key rate limits.

Every route names the scope it needs, ``@requires(READ)`` under its route decorator, or is
``@public``; a route that names none needs ``admin``: a new route is closed until someone
decides otherwise. :func:`authorize` runs first for every route of the app (an app-wide
dependency) and, once auth is on (:meth:`liverec.auth.Keyring.enabled`):

1. reads the key (``Authorization: Bearer KEY``, or ``X-API-Key: KEY``) and verifies it: 401
   with ``WWW-Authenticate: Bearer`` when there is none or it is unknown, malformed or revoked;
2. takes a token from the key's bucket: 429 with ``Retry-After`` when it is empty;
3. checks the scope: 403 when the key lacks it.

The key's app is then the request's app (:func:`liverec.api.deps.get_app_id`: an
``X-Liverec-App`` header naming another app is a 403).
"""

from __future__ import annotations

import math
import threading
from dataclasses import dataclass
from typing import Any, Callable, TypeVar

import anyio
from fastapi import FastAPI, HTTPException, Request, routing
from fastapi.routing import APIRoute

from ..auth import ADMIN, SCOPES, Keyring, SecretSource, allows, open_limiter
from ..auth.keys import key_id_of
from ..auth.ratelimit import RateLimiter
from ..config import Settings
from ..store import Store
from ..store.base import Change
from .deps import KEY_STATE
from .schemas import ERROR_RESPONSES

PUBLIC = "public"
SCOPE_ATTR = "__liverec_scope__"
F = TypeVar("F", bound=Callable[..., Any])


def requires(scope: str) -> Callable[[F], F]:
    """Declare the scope a route needs (``ingest``, ``read``, ``admin``, or ``public``):
    place it under the route decorator."""
    if scope not in (*SCOPES, PUBLIC):
        raise ValueError(f"scope {scope!r}: expected one of {', '.join((*SCOPES, PUBLIC))}")

    def mark(endpoint: F) -> F:
        setattr(endpoint, SCOPE_ATTR, scope)
        return endpoint

    return mark


public = requires(PUBLIC)


def route_scope(route: Any) -> str:
    """The scope ``route`` needs: the declared one, else ``admin`` (deny by default)."""
    return getattr(getattr(route, "endpoint", None), SCOPE_ATTR, ADMIN)


class Guard:
    """What requests are checked with (``app.state.auth``): the keys and the rate limiter.
    Writes the keys' "last used" times from a background thread, off the request path."""

    FLUSH_EVERY_S = 30.0

    def __init__(self, keyring: Keyring, limiter: RateLimiter):
        self.keyring = keyring
        self.limiter = limiter
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def apply_change(self, change: Change) -> None:
        """Followed from the log (the service hands it over): keys created or revoked anywhere."""
        if change.kind == "api_key":
            self.keyring.changed()

    def start(self, app: FastAPI | None = None) -> None:
        self.keyring.check()  # keys made with another secret: refuse to start, saying so
        self._stop.clear()
        self._thread = threading.Thread(target=self._flush_loop, name="liverec-keys-used", daemon=True)
        self._thread.start()

    def stop(self, app: FastAPI | None = None) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5)
            self._thread = None
        self._flush()

    async def aclose(self) -> None:
        close = getattr(self.limiter, "aclose", None)
        if close is not None:
            await close()
        self.limiter.close()

    def _flush_loop(self) -> None:
        while not self._stop.wait(self.FLUSH_EVERY_S):
            self._flush()

    def _flush(self) -> None:
        try:
            self.keyring.flush_used()
        except Exception:  # noqa: BLE001 - a bookkeeping write must not stop the server
            pass


def build_guard(settings: Settings, store: Store) -> Guard:
    """The guard for a service's settings and store."""
    keyring = Keyring(store.keys, store.snapshots, SecretSource(settings.auth_secret, settings.data_dir),
                      required=settings.auth == "required", cached=True)  # the app follows its api_key changes
    return Guard(keyring, open_limiter(settings.rate_limit_url, settings.data_dir))


def presented_key(request: Request) -> str | None:
    """The key the request carries: ``Authorization: Bearer KEY``, else ``X-API-Key: KEY``."""
    header = request.headers.get("authorization")
    if header:
        scheme, _, value = header.strip().partition(" ")
        if scheme.lower() == "bearer" and value.strip():
            return value.strip()
    value = request.headers.get("x-api-key")
    return value.strip() if value and value.strip() else None


def _unauthorized(value: str | None, expected: str, invalid: bool) -> HTTPException:
    challenge = 'Bearer realm="liverec"' + (', error="invalid_token"' if invalid else "")
    return HTTPException(401, detail={"errors": [{"field": "Authorization", "value": value, "expected": expected}]},
                         headers={"WWW-Authenticate": challenge})


async def authorize(request: Request) -> None:
    """The app-wide dependency: authenticate, rate-limit and authorize the request."""
    needed = route_scope(request.scope.get("route"))
    if needed == PUBLIC:
        return
    guard: Guard = request.app.state.auth
    # The keyring keeps what it read of the keys until the log says a key was created or revoked:
    # catch up first (in a request thread: it may query the store and fold what is new), and the
    # handler's own catch-up finds this check already covers the request (runtime.follower).
    await anyio.to_thread.run_sync(request.app.state.service.follower.catch_up)
    if not guard.keyring.enabled():
        return
    presented = presented_key(request)
    if presented is None:
        raise _unauthorized(None, "an API key: `Authorization: Bearer KEY` or `X-API-Key: KEY`", invalid=False)
    key = guard.keyring.verify(presented)
    if key is None:
        key_id = key_id_of(presented)
        # never echo what was sent: at most the id of a well-formed key
        raise _unauthorized(f"lrk_{key_id}_..." if key_id else None, "a valid, unrevoked API key", invalid=True)
    decision = await guard.limiter.take(key.key_id, key.rate, key.burst)
    if not decision.allowed:
        raise HTTPException(
            429, detail=f"rate limit of key {key.key_id} ({key.rate:g}/s, burst {key.burst:g}): retry in "
                        f"{decision.retry_after:.3f} s",
            headers={"Retry-After": str(max(1, math.ceil(decision.retry_after)))})
    if not allows(key.scopes, needed):
        raise HTTPException(403, detail={"errors": [{"field": "scope", "value": ",".join(key.scopes),
                                                     "expected": f"a key with the '{needed}' scope"}]})
    setattr(request.state, KEY_STATE, key)


# ---- the OpenAPI document ------------------------------------------------------------------------

SECURITY_SCHEMES = {
    "bearer": {"type": "http", "scheme": "bearer",
               "description": "An API key (`liverec keys create`) as `Authorization: Bearer KEY`. The key's app "
                              "is the request's app. Required once any key exists or with `LIVEREC_AUTH=required`."},
    "apiKey": {"type": "apiKey", "in": "header", "name": "X-API-Key",
               "description": "The same key in `X-API-Key` (read when there is no `Authorization: Bearer`)."},
}
AUTH_HEADERS = {
    401: {"WWW-Authenticate": {"description": "`Bearer realm=\"liverec\"`", "schema": {"type": "string"}}},
    429: {"Retry-After": {"description": "Seconds until the key's bucket has a token again",
                          "schema": {"type": "integer", "minimum": 1}}},
    503: {"Retry-After": {"description": "Seconds after which the store may be back",
                          "schema": {"type": "integer", "minimum": 1}}},
}


@dataclass(frozen=True)
class RouteInfo:
    path: str  # as documented: /v1/users/{user_id}
    methods: frozenset[str]
    scope: str
    documented: bool


def app_routes(app: FastAPI) -> list[RouteInfo]:
    """Every FastAPI route of the app (those of included routers too) with the scope it needs:
    the routes :func:`authorize` guards."""
    out = []
    for context in routing.iter_route_contexts(app.routes):
        route = context.original_route
        if isinstance(route, APIRoute):
            out.append(RouteInfo(context.path_format or route.path_format, frozenset(context.methods or route.methods),
                                 route_scope(route), route.include_in_schema))
    return out


def document_security(document: dict[str, Any], app: FastAPI) -> None:
    """Add the security schemes and, on every operation that needs a key, the scope it needs
    (OpenAPI 3.1 lets a non-OAuth scheme list role names) and the 401, 403 and 429 answers; and
    503 (the store unreachable: every such request reads it, for the key or whether keys exist)."""
    components = document.setdefault("components", {})
    components["securitySchemes"] = SECURITY_SCHEMES
    error = {"$ref": "#/components/schemas/ErrorResponse"}  # there: the routes' own errors refer to it
    for route in app_routes(app):
        if not route.documented or route.scope == PUBLIC:
            continue
        for method in route.methods:
            operation = document["paths"].get(route.path, {}).get(method.lower())
            if operation is None:
                continue
            operation["security"] = [{name: [route.scope]} for name in SECURITY_SCHEMES]
            responses = operation.setdefault("responses", {})
            for status in (401, 403, 429, 503):
                answer: dict[str, Any] = {"description": ERROR_RESPONSES[status],
                                          "content": {"application/json": {"schema": error}}}
                if status in AUTH_HEADERS:
                    answer["headers"] = AUTH_HEADERS[status]
                responses[str(status)] = answer
