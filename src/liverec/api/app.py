"""The FastAPI application: one router per resource, the service built in ``lifespan``."""

from __future__ import annotations

import time
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from ..config import Settings
from ..service import Service
from . import events, items, ops, users
from . import stats
from .telemetry import Telemetry
from .. import ui
from .ops import Metrics


def _summary(errors: list[dict[str, Any]]) -> str:
    return "; ".join(f"{e['field']}={e['value']!r}: expected {e['expected']}" for e in errors[:5])


def create_app(settings: Settings | None = None, service: Service | None = None, progress: bool = False) -> FastAPI:
    """Build the app. Pass ``service`` to serve an existing one (tests, benchmarks)."""
    settings = settings or Settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        if not app.state.service.ready:
            app.state.service.start(progress=progress)
        for hook in app.state.on_start:
            hook(app)
        yield
        for hook in app.state.on_stop:
            hook(app)
        if app.state.owns_service:
            app.state.service.close()

    app = FastAPI(title="liverec", version="0.1.0", lifespan=lifespan,
                  description="Real-time, feedback-aware recommendations.")
    app.state.owns_service = service is None
    app.state.service = service or Service(settings)
    app.state.metrics = Metrics(app.state.service)
    app.state.on_start = []
    app.state.on_stop = []
    app.state.telemetry = Telemetry(app.state.service.counters)
    app.state.on_start.append(app.state.telemetry.start)
    app.state.on_stop.append(app.state.telemetry.stop)

    @app.middleware("http")
    async def observe(request: Request, call_next):
        start = time.perf_counter()
        response = await call_next(request)
        route = request.scope.get("route")
        path = getattr(route, "path", "unmatched")
        metrics: Metrics = request.app.state.metrics
        metrics.requests.labels(path, request.method, str(response.status_code)).inc()
        metrics.latency.labels(path, request.method).observe(time.perf_counter() - start)
        request.app.state.telemetry.record(path, time.perf_counter() - start)
        return response

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException):
        detail = exc.detail
        if isinstance(detail, dict) and "errors" in detail:
            return JSONResponse({"detail": _summary(detail["errors"]), "errors": detail["errors"]}, status_code=exc.status_code)
        return JSONResponse({"detail": detail}, status_code=exc.status_code)

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

    for router in (events.router, items.router, users.router, ops.router):
        app.include_router(router)
    app.include_router(stats.router)
    app.include_router(ui.router)
    return app
