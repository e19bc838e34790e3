"""The FastAPI application: one router per resource, the service built in ``lifespan``."""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path
from contextlib import asynccontextmanager
from typing import Any

import anyio
from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.utils import get_openapi
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .. import ui
from ..config import Settings
from ..memory import HeapTrimmer, freeze_long_lived
from ..runtime.compose import build_service
from ..runtime.follower import ARRIVED
from ..runtime.readiness import WorkerRegistry
from ..service import Service
from ..store import StoreUnavailable
from . import auth, events, experiments, items, ops, stats, users
from .ops import Metrics
from .schemas import body_schemas
from .telemetry import Telemetry


def _summary(errors: list[dict[str, Any]]) -> str:
    return "; ".join(f"{e['field']}={e['value']!r}: expected {e['expected']}" for e in errors[:5])


WORKER_ID = str(os.getpid()).encode()


class ObserveRequests:
    """Request counts and latency for /metrics and the dashboard (plain ASGI: no per-request
    task or body copying, unlike function middleware)."""

    def __init__(self, app: ASGIApp):
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        arrived = ARRIVED.set(time.monotonic())  # a log check started after this covers the request
        status = 500

        async def send_and_note(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                # which worker process answered (several share the port): for operators and tests
                message["headers"] = [*message.get("headers", []), (b"x-liverec-worker", WORKER_ID)]
            await send(message)

        try:
            await self.app(scope, receive, send_and_note)
        finally:
            ARRIVED.reset(arrived)
            elapsed = time.perf_counter() - start
            # the router fills in scope["route"]; its path without convertors, as documented
            path = getattr(scope.get("route"), "path_format", "unmatched")
            state = scope["app"].state
            state.metrics.requests.labels(path, scope["method"], str(status)).inc()
            state.metrics.latency.labels(path, scope["method"]).observe(elapsed)
            state.telemetry.record(path, elapsed)


def create_app(settings: Settings | None = None, service: Service | None = None, progress: bool = False) -> FastAPI:
    """Build the app. Pass ``service`` to serve an existing one (tests, benchmarks)."""
    settings = settings or Settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        # sync routes run in this pool: a few threads, not anyio's 40 fighting for the interpreter lock
        anyio.to_thread.current_default_thread_limiter().total_tokens = app.state.service.settings.request_threads
        if not app.state.service.ready:
            app.state.service.start(progress=progress)
        for hook in app.state.on_start:
            hook(app)
        app.state.workers.ready()

        def warm() -> None:  # readiness says when the background start-up work is done too
            app.state.service.wait_warm()
            freeze_long_lived()  # the sentence encoder and models it loaded: out of the collector's walks
            app.state.workers.ready(warm=True)

        threading.Thread(target=warm, name="liverec-warm", daemon=True).start()
        yield
        app.state.workers.gone()
        for hook in app.state.on_stop:
            hook(app)
        await app.state.auth.aclose()
        if app.state.owns_service:
            app.state.service.close()

    # authorize runs first on every route: the scope each route declares (admin when none), the
    # key, its rate limit (liverec.api.auth)
    app = FastAPI(title="liverec", version="0.1.0", lifespan=lifespan, dependencies=[Depends(auth.authorize)],
                  description="Real-time, feedback-aware recommendations.")
    app.state.owns_service = service is None
    app.state.service = service or build_service(settings)
    app.state.heap = HeapTrimmer(app.state.service.settings.heap_trim_s)
    app.state.metrics = Metrics(app.state.service, app.state.heap)
    app.state.workers = WorkerRegistry(Path(app.state.service.settings.data_dir) / "run")
    app.state.on_start = []
    app.state.on_stop = []
    app.state.telemetry = Telemetry(app.state.service.counters, types=app.state.service.rules.types)
    app.state.on_start.append(app.state.telemetry.start)
    app.state.on_stop.append(app.state.telemetry.stop)
    app.state.on_start.append(lambda _: app.state.heap.start())
    app.state.on_stop.append(lambda _: app.state.heap.stop())
    app.state.auth = auth.build_guard(app.state.service.settings, app.state.service.store)
    app.state.service.follow_changes(app.state.auth)  # keys created or revoked by any process
    app.state.on_start.append(app.state.auth.start)
    app.state.on_stop.append(app.state.auth.stop)

    app.add_middleware(ObserveRequests)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException):
        detail = exc.detail
        headers = dict(exc.headers or {})
        if exc.status_code == 405:  # every method the path takes, not only those of the first route matched
            headers["Allow"] = ", ".join(allowed_methods(request))
        if isinstance(detail, dict) and "errors" in detail:
            body = {"detail": _summary(detail["errors"]), "errors": detail["errors"]}
        else:
            body = {"detail": str(detail), "errors": []}
        return JSONResponse(body, status_code=exc.status_code, headers=headers or None)

    @app.exception_handler(StoreUnavailable)
    async def store_unavailable(request: Request, exc: StoreUnavailable):
        # a 503, never a 500: nothing was acknowledged, the request may be sent again as it was
        return JSONResponse({"detail": f"{exc}; retry in {exc.retry_after_s} s", "errors": []}, status_code=503,
                            headers={"Retry-After": str(exc.retry_after_s)})

    @app.exception_handler(RequestValidationError)
    async def request_error(request: Request, exc: RequestValidationError):
        errors = [
            {"field": ".".join(str(p) for p in e.get("loc", ())[1:]) or "request", "value": e.get("input"), "expected": e.get("msg", "")}
            for e in exc.errors()
        ]
        for e in errors:
            if not isinstance(e["value"], (str, int, float, bool, type(None))):
                e["value"] = repr(e["value"])[:200]
        return JSONResponse({"detail": _summary(errors), "errors": errors}, status_code=422)

    for router in (events.router, items.router, users.router, experiments.router, ops.router):
        app.include_router(router)
    app.include_router(stats.router)
    app.include_router(ui.router)
    app.openapi = lambda: openapi(app)  # type: ignore[method-assign]
    return app


def allowed_methods(request: Request) -> list[str]:
    """The methods the request's path answers to (for ``Allow`` on a 405)."""
    methods: set[str] = set()
    routes = list(request.app.router.routes)
    while routes:
        route = routes.pop()
        if route.matches(request.scope)[0] == Match.NONE:
            continue
        methods |= getattr(route, "methods", None) or set()
        # an included router matches for its routes: look into them
        routes.extend(getattr(getattr(route, "original_router", route), "routes", None) or [])
    return sorted(methods)


def openapi(app: FastAPI) -> dict[str, Any]:
    """The OpenAPI document, with the request bodies' schemas built for this service's type
    table, rating range and batch limit (the routes refer to them by name)."""
    if app.openapi_schema is None:
        document = get_openapi(title=app.title, version=app.version, openapi_version=app.openapi_version,
                               description=app.description, routes=app.routes)
        service = app.state.service
        schemas = document.setdefault("components", {}).setdefault("schemas", {})
        schemas.update(body_schemas(service.rules, service.settings.max_batch))
        # FastAPI adds its own 422 to every route with parameters; a route that can answer 422
        # lists it (with ErrorResponse), the others cannot
        for operations in document["paths"].values():
            for operation in operations.values():
                if "HTTPValidationError" in str(operation.get("responses", {}).get("422")):
                    del operation["responses"]["422"]
        for name in ("HTTPValidationError", "ValidationError"):
            schemas.pop(name, None)
        auth.document_security(document, app)
        app.openapi_schema = document
    return app.openapi_schema
