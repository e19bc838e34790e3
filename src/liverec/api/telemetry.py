"""Live operational figures for the dashboard: a rolling window of request timings and a sampled
time series of throughput, latency and feedback rates.

The HTTP middleware calls :meth:`Telemetry.record` once per request; :meth:`Telemetry.tick` takes
one sample (every ``interval`` seconds, from a background thread while the app runs, and lazily
from the stats endpoint so the series also fills when no thread runs). Rates come from the deltas
of the service's plain counters between samples, so nothing on the event path pays for them.

>>> from types import SimpleNamespace
>>> counters = SimpleNamespace(events_accepted=0, recommendations=0, by_type={})
>>> t = Telemetry(counters, interval=2.0, clock=lambda: 100.0)
>>> t.record("/v1/users/{user_id}/recommendations", 0.004, now=99.0)
>>> t.latency_ms(window=60.0, now=100.0)["p50"]
4.0
"""

from __future__ import annotations

import math
import threading
import time
from collections import deque
from dataclasses import asdict, dataclass
from typing import Any, Callable, Mapping, Protocol

from ..events import DEFAULT_TYPES, TypeSpec, Vocabulary

# Requests that are the service's own work (the read and write paths); the pages, their assets
# and the dashboard's polling are left out so that watching the service does not move its figures.
RECOMMEND_ROUTE = "/v1/users/{user_id}/recommendations"
EVENTS_ROUTE = "/v1/events"
IGNORED_PREFIXES = ("/ui/", "/v1/stats", "/v1/apps", "/metrics", "/docs", "/openapi.json", "/redoc")
IGNORED_PATHS = ("/", "/dashboard", "/v1/users", "/v1/health", "unmatched")

SERVED = "__served__"  # key of the served-impressions count inside counter snapshots


class CounterSource(Protocol):
    """What telemetry reads from the service (``liverec.service.Counters`` fits).

    ``impressions`` (items returned in recommendation responses) is read when present; clients
    that render their own lists may also send ``impression`` events, and both count.
    """

    events_accepted: int
    recommendations: int
    by_type: dict[str, int]


@dataclass(frozen=True)
class Sample:
    """One point of the dashboard's time series. Ratios are ``None`` when their base is zero."""

    t: float
    events_per_s: float
    recommendations_per_s: float
    p50_ms: float | None
    p99_ms: float | None
    ctr: float | None
    like_rate: float | None
    negative_share: float | None


def percentile(sorted_values: list[float], q: float) -> float | None:
    """The ``q``-quantile (0..1) of already sorted values, nearest-rank; ``None`` if empty.

    >>> percentile([1.0, 2.0, 3.0, 4.0], 0.5), percentile([1.0, 2.0, 3.0, 4.0], 0.99)
    (2.0, 4.0)
    """
    if not sorted_values:
        return None
    rank = max(1, math.ceil(q * len(sorted_values)))
    return sorted_values[min(rank, len(sorted_values)) - 1]


def _ratio(num: float, den: float) -> float | None:
    return num / den if den > 0 else None


class Telemetry:
    """Rolling request timings plus a sampled series (``interval`` s apart, ``history`` s kept).

    ``ratio_window`` smooths CTR, like rate and negative share: they are computed over the type
    counts of the last ``ratio_window`` seconds rather than one sampling interval, which holds
    too few events to read. ``types``: the service's event type table (its polarities decide
    what is negative feedback); the default table if not given.
    """

    def __init__(
        self,
        counters: CounterSource,
        interval: float = 2.0,
        history: float = 300.0,
        timing_window: float = 60.0,
        ratio_window: float = 30.0,
        max_timings: int = 50_000,
        clock: Callable[[], float] = time.time,
        types: Mapping[str, TypeSpec] | None = None,
    ):
        self.counters = counters
        self.vocabulary = Vocabulary.of(DEFAULT_TYPES if types is None else types)
        self.interval = interval
        self.timing_window = timing_window
        self.ratio_window = ratio_window
        self.clock = clock
        self.started_at = clock()
        self._timings: deque[tuple[float, str, float]] = deque(maxlen=max_timings)
        self._series: deque[Sample] = deque(maxlen=max(2, int(history / interval) + 1))
        # Counter snapshots taken with each sample: (t, events, recommendations, by_type copy),
        # where the by_type copy also holds the served impressions under SERVED.
        self._snapshots: deque[tuple[float, int, int, dict[str, int]]] = deque(
            maxlen=max(2, int(max(history, ratio_window) / interval) + 2)
        )
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._snapshot(self.started_at)

    # ---- recording ----------------------------------------------------------------------------
    @staticmethod
    def observed(path: str) -> bool:
        """Whether requests to this route template count as the service's work."""
        return path not in IGNORED_PATHS and not path.startswith(IGNORED_PREFIXES)

    def record(self, path: str, seconds: float, now: float | None = None) -> None:
        """Remember one request's duration (route template, seconds); cheap, lock-free append."""
        if self.observed(path):
            self._timings.append((self.clock() if now is None else now, path, seconds))

    def _counts(self) -> dict[str, int]:
        """Counts by event type, plus the impressions served with recommendations."""
        counts = dict(self.counters.by_type)
        counts[SERVED] = getattr(self.counters, "impressions", 0)
        return counts

    def _snapshot(self, now: float) -> None:
        c = self.counters
        self._snapshots.append((now, c.events_accepted, c.recommendations, self._counts()))

    # ---- reading ------------------------------------------------------------------------------
    def latency_ms(self, window: float | None = None, route: str | None = None, now: float | None = None) -> dict[str, Any]:
        """p50 / p99 / count of request durations (ms) over the last ``window`` seconds."""
        now = self.clock() if now is None else now
        since = now - (self.timing_window if window is None else window)
        values = sorted(s * 1000.0 for t, path, s in list(self._timings) if t >= since and (route is None or path == route))
        p50, p99 = percentile(values, 0.5), percentile(values, 0.99)
        return {
            "p50": None if p50 is None else round(p50, 3),
            "p99": None if p99 is None else round(p99, 3),
            "count": len(values),
        }

    def _since(self, seconds: float, now: float) -> tuple[float, int, int, dict[str, int]]:
        """The oldest snapshot no older than ``seconds`` (or the oldest kept)."""
        snapshots = list(self._snapshots)
        chosen = snapshots[0]
        for snap in reversed(snapshots):
            if now - snap[0] > seconds:
                break
            chosen = snap
        return chosen

    def rates(self, window: float = 10.0, now: float | None = None) -> dict[str, float]:
        """Events ingested and recommendations served per second over about ``window`` seconds."""
        now = self.clock() if now is None else now
        t0, events0, recs0, _ = self._since(window, now)
        span = max(now - t0, 1e-9)
        if now - t0 < 0.5:  # too short to read: the service has just started
            return {"events_per_s": 0.0, "recommendations_per_s": 0.0}
        c = self.counters
        return {
            "events_per_s": round((c.events_accepted - events0) / span, 3),
            "recommendations_per_s": round((c.recommendations - recs0) / span, 3),
        }

    def feedback(self, window: float | None = None, now: float | None = None) -> dict[str, Any]:
        """Counts by type over the last ``window`` seconds and the ratios computed from them."""
        now = self.clock() if now is None else now
        _, _, _, before = self._since(self.ratio_window if window is None else window, now)
        current = self._counts()
        delta = {k: v - before.get(k, 0) for k, v in current.items() if v - before.get(k, 0) > 0}
        v = self.vocabulary
        impressions = delta.pop(SERVED, 0) + delta.get("impression", 0)
        # Feedback on what was shown: every event with a polarity (the denominator of the negative share).
        feedback = sum(delta.get(k, 0) for k in v.positive | v.negative)
        ctr = _ratio(sum(delta.get(k, 0) for k in v.clicks), impressions)
        like_rate = _ratio(sum(delta.get(k, 0) for k in v.likes), impressions)
        negative = _ratio(sum(delta.get(k, 0) for k in v.negative), feedback)
        return {
            "by_type": delta,
            "impressions": impressions,
            "ctr": None if ctr is None else round(ctr, 4),
            "like_rate": None if like_rate is None else round(like_rate, 4),
            "negative_share": None if negative is None else round(negative, 4),
        }

    def series(self) -> list[dict[str, Any]]:
        return [asdict(s) for s in list(self._series)]

    # ---- sampling -----------------------------------------------------------------------------
    def tick(self, force: bool = False) -> Sample | None:
        """Take one sample if ``interval`` seconds have passed since the last (or ``force``)."""
        with self._lock:
            now = self.clock()
            last = self._snapshots[-1][0]
            if not force and now - last < self.interval * 0.95:
                return None
            t0, events0, recs0, _ = self._snapshots[-1]
            span = max(now - t0, 1e-9)
            c = self.counters
            latency = self.latency_ms(window=max(self.interval * 5, 10.0), now=now)
            ratios = self.feedback(now=now)
            sample = Sample(
                t=round(now, 3),
                events_per_s=round((c.events_accepted - events0) / span, 3),
                recommendations_per_s=round((c.recommendations - recs0) / span, 3),
                p50_ms=latency["p50"],
                p99_ms=latency["p99"],
                ctr=ratios["ctr"],
                like_rate=ratios["like_rate"],
                negative_share=ratios["negative_share"],
            )
            self._series.append(sample)
            self._snapshot(now)
            self._trim(now)
            return sample

    def _trim(self, now: float) -> None:
        horizon = now - self.timing_window
        while self._timings and self._timings[0][0] < horizon:
            self._timings.popleft()

    def start(self, *_: Any) -> None:
        """Sample in a daemon thread until :meth:`stop` (accepts the app as lifespan hooks pass it)."""
        if self._thread is not None and self._thread.is_alive():
            return
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="liverec-telemetry", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.tick()

    def stop(self, *_: Any) -> None:
        self._stop.set()
        thread, self._thread = self._thread, None
        if thread is not None:
            thread.join(timeout=5.0)
