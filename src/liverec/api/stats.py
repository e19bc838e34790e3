"""Operational read-outs for the dashboard and the demo page.

- ``GET /v1/stats``: live throughput and latency, the sampled time series, feedback rates, the
  model in service, the online learners (the app's, and all of them) with their status, served
  version and staleness, and the app's catalog and users at a glance;
- ``GET /v1/apps``: the apps (tenants) the service knows, with item and user counts;
- ``GET /v1/users``: known users of an app, most recently active first (``prefix`` filters).

The model and learner sections read optional attributes (``version``, ``metrics``, ...) when the
objects carry them, so they keep working whichever scorer or learner is plugged in.
"""

from __future__ import annotations

import dataclasses
import heapq
import math
import time
from typing import Any, Mapping

from fastapi import APIRouter, Depends, Query, Request

from ..auth import ADMIN
from ..learning import Learners
from ..service import Service
from ..streams.progress import StreamProgress
from .auth import requires
from .deps import get_app_id, get_service, request_key
from .schemas import Apps, Stats, Users, errors
from .telemetry import EVENTS_ROUTE, RECOMMEND_ROUTE, Telemetry

router = APIRouter(prefix="/v1", tags=["ops"])

MODEL_FIELDS = ("version", "trained_at", "created_at", "artifact", "path")
LEARNER_FIELDS = ("staleness_s", "lag_events", "lag_s", "last_update", "last_update_at", "updates", "version",
                  "events_seen", "running")


def jsonable(value: Any, depth: int = 0) -> Any:
    """``value`` reduced to JSON-safe scalars, lists and dicts (anything else becomes ``None``).

    >>> jsonable({"ndcg@10": 0.31, "curve": [1, float("nan")], "obj": object()})
    {'ndcg@10': 0.31, 'curve': [1, None], 'obj': None}
    """
    if value is None or isinstance(value, (bool, int, str)):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if depth >= 3:
        return None
    if hasattr(value, "item") and callable(value.item) and getattr(value, "ndim", 1) == 0:
        return jsonable(value.item(), depth)  # numpy / torch scalars
    if isinstance(value, Mapping):
        return {str(k): jsonable(v, depth + 1) for k, v in list(value.items())[:50]}
    if isinstance(value, (list, tuple)):
        return [jsonable(v, depth + 1) for v in value[:50]]
    return None


def _read(obj: Any, name: str) -> Any:
    """``obj.name``, called if it is a method without arguments; ``None`` on any failure."""
    try:
        value = getattr(obj, name, None)
        return value() if callable(value) else value
    except Exception:  # a read-out must never break the dashboard
        return None


def model_info(service: Service, app: str | None = None) -> dict[str, Any]:
    """The scorer in service (for ``app`` when given): its name and, when it has them, version
    and evaluation metrics."""
    scorer = service.pipeline.scorer if app is None else service.pipeline.scorer_for(app)
    info: dict[str, Any] = {"scorer": getattr(scorer, "name", type(scorer).__name__)}
    by_app = getattr(scorer, "by_app", None)
    # A per-app router reports every app's versions at once; the app's own model says which is its.
    source = by_app[app] if app is not None and isinstance(by_app, Mapping) and app in by_app else scorer
    for name in MODEL_FIELDS:
        value = jsonable(_read(source, name))
        if value is not None:
            info[name] = value
    metrics = jsonable(_read(source, "metrics"))
    info["metrics"] = metrics if isinstance(metrics, dict) else {}
    fallback = service.pipeline.fallback
    info["fallback"] = getattr(fallback, "name", None) if fallback is not None and fallback is not scorer else None
    return info


def running_learners(service: Service) -> list[Any]:
    """Every online learner the service runs (its :class:`~liverec.learning.Learners` component)."""
    learners = service.component(Learners)
    return list(learners.running.values()) if learners is not None else []


def _fields(value: Any) -> dict[str, Any]:
    """A dataclass's or a mapping's fields as a dict (empty for anything else)."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return dataclasses.asdict(value)
    return dict(value) if isinstance(value, Mapping) else {}


def describe_learner(learner: Any) -> dict[str, Any]:
    """One learner's app, status, served version, staleness and progress.

    Read in this order, the first source of a field winning: a ``status()`` dict, the ``stats``
    record (``updates``, ``accepted``, ``last_version``, ``last_staleness_s``, ...), plain
    attributes, the ``cfg`` (update interval, events needed per update), the version of the
    model it serves.
    """
    info: dict[str, Any] = {"name": getattr(learner, "name", type(learner).__name__)}
    app = getattr(learner, "app", None)
    if isinstance(app, str):
        info["app"] = app
    status = jsonable(_read(learner, "status"))
    if isinstance(status, dict):
        info.update(status)
    for key, value in _fields(_read(learner, "stats")).items():
        value = jsonable(value)
        if value is not None:
            info.setdefault(key, value)
    for name in LEARNER_FIELDS:
        if name not in info:
            value = jsonable(_read(learner, name))
            if value is not None:
                info[name] = value
    cfg = _fields(getattr(learner, "cfg", None))
    for key in ("interval_s", "min_events"):
        if isinstance(cfg.get(key), (int, float)):
            info.setdefault(key, cfg[key])

    # A learner's record names its last published update; what it serves now is its model's.
    served = jsonable(_read(_read(learner, "serving"), "version"))
    last = info.pop("last_version", None)
    info.setdefault("version", served if served is not None else last)
    if "staleness_s" not in info:
        staleness = info.pop("last_staleness_s", None)
        if isinstance(staleness, (int, float)) and not isinstance(staleness, bool):
            info["staleness_s"] = round(staleness, 3)
        else:
            last_at = info.get("last_update_at", info.get("last_update"))
            if isinstance(last_at, (int, float)) and not isinstance(last_at, bool) and last_at > 1e9:
                info["staleness_s"] = round(time.time() - last_at, 3)
    if "status" not in info:
        info["status"] = _status_line(info)
    return info


def _status_line(info: Mapping[str, Any]) -> str:
    if info.get("running") is False:
        return "stopped"
    updates = info.get("updates")
    if not isinstance(updates, int):
        return "running"
    if updates == 0:
        need = info.get("min_events")
        return f"waiting for new events ({need} per update)" if need else "waiting for new events"
    return f"{info.get('accepted', 0)} of {updates} updates served"


def learner_info(service: Service, app: str | None = None) -> dict[str, Any] | None:
    """The online learner of ``app`` (any learner when ``app`` is None), else ``None``.

    A learner that names no app counts for every app.
    """
    for learner in running_learners(service):
        owner = getattr(learner, "app", None)
        if app is None or not isinstance(owner, str) or owner == app:
            return describe_learner(learner)
    return None


def _item_summary(service: Service, app: str, item_id: str) -> dict[str, Any]:
    item = service.catalog.get(app, item_id)
    entry: dict[str, Any] = {"item_id": item_id}
    if item is not None:
        entry["title"] = item.title
        entry["categories"] = list(item.categories)
    return entry


def catalog_info(service: Service, app: str, top: int = 8) -> dict[str, Any]:
    """Counts, the most popular items now (decayed popularity) and the newest items of ``app``."""
    popularity = service.baseline.popularity(app)
    best = max(popularity.values(), default=0.0)
    popular = []
    for item_id, value in heapq.nlargest(top, popularity.items(), key=lambda kv: kv[1]):
        if value <= 0:
            break
        entry = _item_summary(service, app, item_id)
        entry["popularity"] = round(value / best, 4) if best > 0 else 0.0
        popular.append(entry)
    newest = [
        {**_item_summary(service, app, item.item_id), "updated_at": item.updated_at}
        for item in heapq.nlargest(top, service.catalog.items(app), key=lambda i: (i.updated_at, i.item_id))
    ]
    return {
        "items": service.catalog.count(app),
        "users": service.state.count(app),
        "popular": popular,
        "newest": newest,
    }


async def get_telemetry(request: Request) -> Telemetry:
    return request.app.state.telemetry


@router.get("/stats", response_model=Stats, response_model_exclude_unset=True, responses=errors(400))
@requires(ADMIN)
def stats(
    request: Request,
    app: str = Depends(get_app_id),
    service: Service = Depends(get_service),
    telemetry: Telemetry = Depends(get_telemetry),
) -> dict:
    """Live figures, the sampled series (last few minutes) and the app at a glance."""
    telemetry.tick()
    counters = service.counters
    return {
        "app": app,
        "time": round(time.time(), 3),
        "uptime_s": round(time.time() - service.started_at, 3),
        "ready": service.ready,
        "interval_s": telemetry.interval,
        "throughput": telemetry.rates(),
        "latency_ms": {
            "recommendations": telemetry.latency_ms(route=RECOMMEND_ROUTE),
            "events": telemetry.latency_ms(route=EVENTS_ROUTE),
            "all": telemetry.latency_ms(),
            "window_s": telemetry.timing_window,
        },
        "events_total": service.store.events.count(app),  # in the log, however they arrived (HTTP, Kafka, import)
        "streams": [lag.to_dict() for lag in StreamProgress(service.store.snapshots).read()],
        "totals": {
            "events_accepted": counters.events_accepted,
            "events_duplicate": counters.events_duplicate,
            "events_rejected": counters.events_rejected,
            "recommendations": counters.recommendations,
            "impressions": getattr(counters, "impressions", 0),
            "by_type": dict(counters.by_type),
        },
        "feedback": {**telemetry.feedback(), "window_s": telemetry.ratio_window},
        "model": model_info(service, app),
        "learner": learner_info(service, app),
        # with a key, only its app's learners (the others name other apps' models)
        "learners": [describe_learner(learner) for learner in running_learners(service)
                     if request_key(request) is None or getattr(learner, "app", None) == app],
        "catalog": catalog_info(service, app),
        "series": telemetry.series(),
    }


@router.get("/apps", response_model=Apps)
@requires(ADMIN)
def apps(request: Request, service: Service = Depends(get_service)) -> dict:
    """Apps with events or items, each with its item and user counts (with an API key: the key's
    app alone)."""
    key = request_key(request)
    names = {key.app} if key is not None else set(service.store.events.apps()) | {"default"}
    return {
        "apps": [
            {"app": name, "items": service.catalog.count(name), "users": service.state.count(name)}
            for name in sorted(names)
        ]
    }


@router.get("/users", response_model=Users, responses=errors(400, 422))
@requires(ADMIN)
def users(
    limit: int = Query(50, ge=1, le=1000, description="How many users"),
    prefix: str = Query("", max_length=256, description="Only user ids starting with this"),
    app: str = Depends(get_app_id),
    service: Service = Depends(get_service),
) -> dict:
    """Known users of the app (with events), most recently active first."""
    rows = []
    for user_id in service.state.users(app):
        if prefix and not user_id.startswith(prefix):
            continue
        state = service.state.get(app, user_id)
        if state is not None:
            rows.append((state.last_timestamp, user_id, state.n_events))
    chosen = heapq.nlargest(limit, rows)
    return {
        "app": app,
        "total": len(rows),
        "users": [{"user_id": u, "n_events": n, "last_seen": t} for t, u, n in chosen],
    }
