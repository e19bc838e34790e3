"""Where each stream consumer stands: per-partition lag records in the store.

A consumer (:mod:`liverec.streams.kafka`) may run on another machine than the API workers; the
store is what they all share, so the consumer writes one small record per partition into the
store's snapshot role and every worker reads them for ``/metrics`` and the dashboard.

>>> from liverec.store import open_store
>>> progress = StreamProgress(open_store("sqlite:///:memory:").snapshots)
>>> progress.write([PartitionLag("g", "events", 0, 90, 100, 10, "host:1", 0.0)])
>>> [(p.topic, p.partition, p.lag) for p in progress.read()]
[('events', 0, 10)]
"""

from __future__ import annotations

from dataclasses import dataclass
import time
from typing import Any, Callable, Iterable, Mapping

import orjson

from ..store.base import Snapshots

PROGRESS_APP = "_liverec"  # the store's internal app, beside the snapshots of the folds


@dataclass(frozen=True, slots=True)
class PartitionLag:
    """Where one consumer group stands on one partition."""

    group: str
    topic: str
    partition: int
    position: int  # next offset the group will read (its committed offset), -1 before any commit
    high: int  # the partition's high watermark
    lag: int  # messages not yet consumed
    consumer: str  # host:pid of the process that reported it
    updated_at: float

    def to_dict(self) -> dict[str, Any]:
        return {f: getattr(self, f) for f in self.__dataclass_fields__}


class StreamProgress:
    """Per-partition lag records kept in the store's snapshot role (one small record per
    partition, so consumers of one group never overwrite each other's partitions)."""

    PREFIX = "streams/kafka/"

    def __init__(self, snapshots: Snapshots):
        self._snapshots = snapshots

    def write(self, lags: Iterable[PartitionLag]) -> None:
        for lag in lags:
            name = f"{self.PREFIX}{lag.group}/{lag.topic}/{lag.partition}"
            self._snapshots.put(PROGRESS_APP, name, orjson.dumps(lag.to_dict()))

    def read(self) -> list[PartitionLag]:
        out = []
        for name in self._snapshots.names(PROGRESS_APP, self.PREFIX):
            blob = self._snapshots.get(PROGRESS_APP, name)
            if blob:
                out.append(PartitionLag(**orjson.loads(blob)))
        return sorted(out, key=lambda lag: (lag.group, lag.topic, lag.partition))


def lags_from_statistics(stats: Mapping[str, Any], group: str, consumer: str, now: float,
                         committed: Mapping[tuple[str, int], int] | None = None) -> list[PartitionLag]:
    """Per-partition lag from librdkafka's statistics JSON (``statistics.interval.ms``) for the
    partitions this consumer is assigned; ``committed`` (what it committed itself) takes
    precedence over the statistics' committed offset, which lags behind explicit commits.

    >>> stats = {"topics": {"t": {"partitions": {"0": {"fetch_state": "active", "hi_offset": 120,
    ...          "committed_offset": -1001, "app_offset": 100}, "-1": {}}}}}
    >>> [(p.partition, p.position, p.lag) for p in lags_from_statistics(stats, "g", "c", 0.0, {("t", 0): 110})]
    [(0, 110, 10)]
    """
    committed = committed or {}
    out = []
    for topic, t in (stats.get("topics") or {}).items():
        for key, p in (t.get("partitions") or {}).items():
            partition = int(key)
            if partition < 0 or p.get("fetch_state") in (None, "none", "stopped"):
                continue  # the internal "-1" partition, or one this consumer is not assigned
            high = int(p.get("hi_offset", -1))
            position = committed.get((topic, partition), int(p.get("committed_offset", -1)))
            if position < 0:  # nothing committed yet: behind by what the partition holds
                position = -1
                lag = max(high - int(p.get("lo_offset", 0) or 0), 0)
            else:
                lag = max(high - position, 0)
            out.append(PartitionLag(group, topic, partition, position, high, lag, consumer, now))
    return out


class LagCollector:
    """Prometheus collector of per-partition lag from ``read`` (the store's records in every API
    worker, the consumer's own view on its ``--metrics-port``)."""

    def __init__(self, read: Callable[[], Iterable[PartitionLag]], clock: Callable[[], float] = time.time):
        self._read = read
        self._clock = clock

    def collect(self):
        from prometheus_client.core import GaugeMetricFamily

        labels = ["group", "topic", "partition"]
        lag = GaugeMetricFamily("liverec_consumer_lag", "Messages behind the partition's high watermark", labels=labels)
        age = GaugeMetricFamily("liverec_consumer_report_age_seconds", "Seconds since the consumer last reported",
                                labels=labels)
        now = self._clock()
        for p in self._read():
            values = [p.group, p.topic, str(p.partition)]
            lag.add_metric(values, p.lag)
            age.add_metric(values, round(now - p.updated_at, 3))
        yield lag
        yield age
