"""Health and Prometheus metrics."""

from __future__ import annotations

import time

from fastapi import APIRouter, Depends, Request, Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

from ..auth import ADMIN
from ..memory import CollectorPauses, HeapTrimmer
from ..service import Service
from ..streams.progress import LagCollector, StreamProgress
from .auth import public, requires
from .deps import APP_ID, get_service
from .schemas import Health

router = APIRouter(tags=["ops"])

LATENCY_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)


class Metrics:
    """One registry per app instance (tests create many apps in one process)."""

    def __init__(self, service: Service, heap: HeapTrimmer | None = None):
        self.registry = CollectorRegistry()
        self.requests = Counter("liverec_http_requests", "HTTP requests", ["route", "method", "status"], registry=self.registry)
        self.latency = Histogram(
            "liverec_http_request_seconds", "HTTP request latency", ["route", "method"], buckets=LATENCY_BUCKETS, registry=self.registry
        )
        counters = service.counters
        Gauge("liverec_events_accepted", "Events stored since start", registry=self.registry).set_function(lambda: counters.events_accepted)
        Gauge("liverec_events_duplicate", "Duplicate events ignored since start", registry=self.registry).set_function(lambda: counters.events_duplicate)
        Gauge("liverec_events_rejected", "Events rejected by validation since start", registry=self.registry).set_function(lambda: counters.events_rejected)
        Gauge("liverec_users", "Users with online state", registry=self.registry).set_function(lambda: service.state.count())
        # as the stream consumers last reported it to the store (they may run on other machines)
        self.registry.register(LagCollector(StreamProgress(service.store.snapshots).read))
        self.registry.register(PauseCollector(CollectorPauses.install()))
        if heap is not None:
            self.registry.register(HeapCollector(heap))


class PauseCollector:
    """The cyclic garbage collector's passes in this process, per generation."""

    def __init__(self, pauses: CollectorPauses) -> None:
        self.pauses = pauses

    def collect(self):
        count = CounterMetricFamily("liverec_gc_passes", "Cyclic garbage collector passes", labels=["generation"])
        seconds = CounterMetricFamily("liverec_gc_pause_seconds", "Seconds the collector's passes held the interpreter",
                                      labels=["generation"])
        longest = GaugeMetricFamily("liverec_gc_pause_longest_seconds", "The longest pass since start", labels=["generation"])
        for g in range(3):
            count.add_metric([str(g)], self.pauses.count[g])
            seconds.add_metric([str(g)], self.pauses.seconds[g])
            longest.add_metric([str(g)], self.pauses.longest[g])
        return [count, seconds, longest]


class HeapCollector:
    """What the heap trimmer handed back to the system in this process."""

    def __init__(self, heap: HeapTrimmer) -> None:
        self.heap = heap

    def collect(self):
        yield CounterMetricFamily("liverec_heap_trim_passes", "Passes handing free heap memory back to the system",
                                  value=self.heap.passes)
        yield CounterMetricFamily("liverec_heap_trim_seconds", "Seconds those passes took", value=self.heap.seconds)
        yield CounterMetricFamily("liverec_heap_trim_returned_bytes", "Resident bytes those passes handed back",
                                  value=self.heap.returned)


@router.get("/v1/health", response_model=Health)
@public
def health(request: Request, service: Service = Depends(get_service)) -> dict:
    """200 once the state is rebuilt and the service answers; ``workers`` counts the server's
    ready worker processes, ``scorer`` names what answers the app of ``X-Liverec-App`` (health
    is not tenant-scoped: a missing or malformed header asks about the default app)."""
    app = request.headers.get("x-liverec-app") or "default"
    if not APP_ID.fullmatch(app):
        app = "default"
    return {
        "status": "ok" if service.ready else "starting",
        "uptime_s": round(time.time() - service.started_at, 3),
        "scorer": service.scorer_name(app),
        "workers": len(request.app.state.workers.live()),
        "warm_workers": request.app.state.workers.warm(),  # background start-up work done too
        "events": service.counters.events_accepted,
        "log_position": list(service.follower.position),
    }


@router.get("/metrics", include_in_schema=False)
@requires(ADMIN)
def metrics(request: Request) -> Response:
    return Response(generate_latest(request.app.state.metrics.registry), media_type=CONTENT_TYPE_LATEST)
