"""Kafka in and out, on confluent-kafka (librdkafka: the maintained client, with consumer groups,
exact offset commits and per-partition statistics).

**Source** (:class:`KafkaEventSource`, ``liverec consume kafka``): consume a batch of messages,
decode and validate them (:mod:`liverec.streams.decode`), append the good events to the log in
one transaction (durable when ``append`` returns), produce the bad messages to the dead-letter
topic and wait for the broker's acknowledgement, and only then commit the batch's offsets. A
crash anywhere before the commit redelivers the batch; the log's idempotent ``event_id`` turns
the redelivery into duplicates, so nothing acknowledged by the broker is lost and nothing is
stored twice. If the log cannot be written (a database restart) the batch is retried, never
skipped: a later commit would otherwise move past it.

Every process serving the log sees the events as it sees events posted over HTTP: a worker
catches up with the log before it answers, so a recommendation reflects every event appended.

**Lag** per partition (the broker's high watermark minus the group's position) comes from
librdkafka's statistics; the source writes it to the store (:class:`StreamProgress`), where every
API worker reads it for ``/metrics`` and the dashboard, whichever machine it runs on.

**Sink** (:class:`ImpressionSink`, ``liverec sink kafka``): follows the impression log and
produces every impression with its propensity at once, and its reward (1 / 0 / 0.5) once the
reward window has closed, keyed by impression id (at least once; a consumer dedupes on the key).
"""

from __future__ import annotations

import logging
import os
import queue
import signal
import socket
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Mapping

import orjson

from ..events import Event, EventRules, TypeSpec
from ..ranking.impressions import Impression, ImpressionLog, assign_rewards
from ..store.base import EventLog, Snapshots
from .decode import DeadLetter, StreamMessage, dead_letter_record, decode_message
from .progress import PROGRESS_APP, PartitionLag, StreamProgress, lags_from_statistics

log = logging.getLogger(__name__)

APP_HEADER = "x-liverec-app"
_CONSUMER_ONLY = ("group.", "session.", "heartbeat.", "max.poll", "auto.", "fetch.", "enable.auto", "partition.assignment")


def client_config(bootstrap: str, extra: Mapping[str, Any] | None = None, **defaults: Any) -> dict[str, Any]:
    """librdkafka properties: ``defaults``, then the operator's ``extra`` on top."""
    return {"bootstrap.servers": bootstrap, **defaults, **dict(extra or {})}


def parse_properties(pairs: Iterable[str]) -> dict[str, str]:
    """``["session.timeout.ms=6000", ...]`` -> a dict; a clear error for a malformed pair.

    >>> parse_properties(["acks=all", "linger.ms=5"])
    {'acks': 'all', 'linger.ms': '5'}
    """
    out: dict[str, str] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"--config {pair!r}: expected KEY=VALUE (a librdkafka property)")
        out[key.strip()] = value.strip()
    return out


# ---- source ---------------------------------------------------------------------------------------

@dataclass
class SourceTotals:
    """What the source has done since it started (also its Prometheus figures)."""

    messages: int = 0
    events: int = 0  # appended (new)
    duplicates: int = 0  # redelivered or sent twice: recognised by event_id, not stored again
    dead_letters: int = 0
    batches: int = 0
    append_retries: int = 0
    commit_seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


@dataclass
class SourceConfig:
    """``liverec consume kafka``'s options."""

    bootstrap: str
    topic: str
    group: str = "liverec"
    app: str = "default"
    dlq_topic: str | None = None  # default: TOPIC.dlq
    batch: int = 5_000  # messages per consume call (one transaction, one commit)
    poll_s: float = 0.5
    max_idle_s: float | None = None  # stop after this long without a message (None: run until stopped)
    stats_interval_ms: int = 1_000
    properties: dict[str, str] = field(default_factory=dict)  # librdkafka properties, on top of ours

    @property
    def dead_letter_topic(self) -> str:
        return self.dlq_topic or f"{self.topic}.dlq"


@dataclass
class _Batch:
    """One consume call's worth, decoded: what the writer appends, dead-letters and commits."""

    messages: int
    events: list[Event] = field(default_factory=list)
    dead: list[tuple[StreamMessage, DeadLetter]] = field(default_factory=list)
    offsets: dict[tuple[str, int], int] = field(default_factory=dict)  # (topic, partition) -> next offset


class KafkaEventSource:
    """Consume events from a topic into the event log; see the module docstring for the order of
    append, dead letters and commit that makes delivery lossless and duplicate-free."""

    def __init__(
        self,
        config: SourceConfig,
        events: EventLog,
        rules: EventRules,
        progress: StreamProgress | None = None,
        on_batch: Callable[[SourceTotals], None] | None = None,
        clock: Callable[[], float] = time.time,
    ):
        from confluent_kafka import Consumer, Producer

        self.config = config
        self.events = events
        self.rules = rules
        self.progress = progress
        self.on_batch = on_batch
        self.clock = clock
        self.totals = SourceTotals()
        self.name = f"{socket.gethostname()}:{os.getpid()}"
        self.lags: list[PartitionLag] = []
        self._committed: dict[tuple[str, int], int] = {}  # (topic, partition) -> next offset, as committed here
        self._stop = threading.Event()
        self._consumer = Consumer(client_config(
            config.bootstrap, config.properties,
            **{"group.id": config.group, "enable.auto.commit": False, "auto.offset.reset": "earliest",
               "enable.partition.eof": False, "statistics.interval.ms": config.stats_interval_ms,
               # a broker may hold a fetch this long when nothing is new (librdkafka's 500 ms default
               # would be most of the produce -> recommendation budget)
               "fetch.wait.max.ms": 50,
               "stats_cb": self._on_stats, "client.id": f"liverec-consume-{self.name}"},
        ))
        # The dead-letter producer waits for every replica (acks=all) before the offsets move on.
        dlq_props = {k: v for k, v in config.properties.items() if not k.startswith(_CONSUMER_ONLY)}
        self._producer = Producer(client_config(config.bootstrap, dlq_props, **{"acks": "all", "linger.ms": 5}))
        self._dlq_errors: list[str] = []

    # ---- lifecycle ---------------------------------------------------------------------------
    def stop(self, *_: Any) -> None:
        """Finish the batch in hand (append, commit) and return from :meth:`run`."""
        self._stop.set()

    def install_signal_handlers(self) -> None:
        signal.signal(signal.SIGTERM, self.stop)
        signal.signal(signal.SIGINT, self.stop)

    def run(self) -> SourceTotals:
        """Consume until :meth:`stop` (or ``max_idle_s`` without messages); returns the totals.

        Two threads share the work: this one consumes and decodes batch N+1 while a writer
        appends batch N (SQLite and PostgreSQL drivers release the GIL while they write); this
        one commits the offsets of the batches the writer has finished, in order, between two
        consume calls. At most two decoded batches wait; a rebalance or a stop first lets the
        writer finish them and commits them, so an offset is never committed before its append.
        """
        cfg = self.config
        started = time.monotonic()
        self._last_message = started
        self._assigned = False
        self._failure: BaseException | None = None
        self._pending: queue.Queue[_Batch | None] = queue.Queue(maxsize=2)
        self._written: queue.SimpleQueue[_Batch] = queue.SimpleQueue()
        writer = threading.Thread(target=self._write_loop, name="liverec-kafka-writer", daemon=True)
        writer.start()
        self._consumer.subscribe([cfg.topic], on_assign=self._on_assign, on_revoke=self._on_revoke)
        try:
            while not self._stop.is_set() and self._failure is None:
                self._commit_written()
                messages = self._next_batch()
                if not messages:
                    if self._idle_for_good(started):
                        break
                    continue
                self._last_message = time.monotonic()
                batch = self._decode(messages)
                if batch is not None:
                    self._put(batch)
        finally:
            self._put(None)
            writer.join()
            if self._failure is None:
                self._commit_written()
                self._final_lags()
            self._producer.flush(10)
            self._consumer.close()  # leaves the group at once: its partitions move to the others
        if self._failure is not None:
            raise self._failure
        return self.totals

    def _next_batch(self) -> list[Any]:
        """Wait for one message (at most ``poll_s``), then take what is already fetched, up to
        ``batch``: a quiet stream's event goes on at once, a busy one fills whole batches
        (``consume(n, timeout)`` alone waits out the timeout whenever fewer than n are there)."""
        first = self._consumer.poll(self.config.poll_s)
        if first is None:
            return []
        return [first, *self._consumer.consume(self.config.batch - 1, 0)] if self.config.batch > 1 else [first]

    def _put(self, batch: _Batch | None) -> None:
        while self._failure is None:
            try:
                self._pending.put(batch, timeout=0.5)
                return
            except queue.Full:
                continue

    def _on_assign(self, _consumer: Any, _partitions: list[Any]) -> None:
        self._assigned = True
        self._last_message = time.monotonic()  # idle time counts from the (re)assignment

    def _on_revoke(self, _consumer: Any, _partitions: list[Any]) -> None:
        # the partitions move to another consumer: append and commit what was decoded from them first
        while self._failure is None and self._pending.unfinished_tasks:
            time.sleep(0.005)
        self._commit_written()

    def _idle_for_good(self, started: float) -> bool:
        limit = self.config.max_idle_s
        if limit is None:
            return False
        if not self._assigned:  # a group join takes a while; give up only if it never happens
            return time.monotonic() - started >= max(limit, 60.0)
        return time.monotonic() - self._last_message >= limit

    # ---- one batch ---------------------------------------------------------------------------
    def _decode(self, messages: list[Any]) -> _Batch | None:
        from confluent_kafka import KafkaError, KafkaException

        now = self.clock()
        app, rules = self.config.app, self.rules
        batch = _Batch(len(messages))
        for m in messages:
            err = m.error()
            if err is not None:
                if err.fatal():
                    raise KafkaException(err)
                if err.code() != KafkaError._PARTITION_EOF:
                    log.warning("kafka: %s", err)
                continue
            headers = m.headers()
            msg = StreamMessage(m.topic(), m.partition(), m.offset(), m.value(), m.key(),
                                _app_header(headers) if headers else None)
            try:
                batch.events.extend(decode_message(msg, app=app, rules=rules, now=now))
            except DeadLetter as letter:
                batch.dead.append((msg, letter))
            batch.offsets[(msg.topic, msg.partition)] = msg.offset + 1
        return batch if batch.offsets else None

    def _write_loop(self) -> None:
        try:
            while True:
                batch = self._pending.get()
                try:
                    if batch is None:
                        return
                    self._write(batch)
                finally:
                    self._pending.task_done()
        except BaseException as exc:  # handed to run(), which stops consuming and raises it
            self._failure = exc

    def _write(self, batch: _Batch) -> None:
        if batch.events:
            result = self._append(batch.events)  # durable from here
            self.totals.events += len(result.accepted)
            self.totals.duplicates += result.duplicates
        if batch.dead:
            self._dead_letters(batch.dead)  # acknowledged by the broker from here
        self._written.put(batch)

    def _commit_written(self) -> None:
        """Commit the offsets of the batches the writer has finished (on the consuming thread:
        a synchronous commit from another thread waits on this thread's next poll)."""
        from confluent_kafka import TopicPartition

        offsets: dict[tuple[str, int], int] = {}
        done: list[_Batch] = []
        while True:
            try:
                batch = self._written.get_nowait()
            except queue.Empty:
                break
            offsets.update(batch.offsets)  # batches come in order: the last is the furthest
            done.append(batch)
        if not done:
            return
        t0 = time.perf_counter()
        self._consumer.commit(offsets=[TopicPartition(t, p, o) for (t, p), o in offsets.items()], asynchronous=False)
        self.totals.commit_seconds += time.perf_counter() - t0
        for batch in done:
            self.totals.messages += batch.messages
            self.totals.dead_letters += len(batch.dead)
            self.totals.batches += 1
        self._committed.update(offsets)
        if self.on_batch is not None:
            self.on_batch(self.totals)

    def _append(self, events: list[Event]):
        delay = 0.1
        while True:
            try:
                return self.events.append(events)
            except Exception as exc:  # the database is away: keep the batch, never skip it
                if self._stop.is_set() and delay > 5:
                    raise
                self.totals.append_retries += 1
                log.warning("kafka: appending %d events failed (%s); retrying in %.1fs", len(events), exc, delay)
                time.sleep(delay)
                delay = min(delay * 2, 5.0)

    def _dead_letters(self, dead: list[tuple[StreamMessage, DeadLetter]]) -> None:
        topic = self.config.dead_letter_topic
        self._dlq_errors.clear()
        for msg, letter in dead:
            log.info("kafka: %s -> %s: %s", msg.position, topic, letter)
            self._producer.produce(topic, dead_letter_record(msg, letter, self.name), key=msg.key,
                                   on_delivery=self._on_dlq_delivery)
        remaining = self._producer.flush(30)
        if remaining or self._dlq_errors:
            # not acknowledged: do not commit past the poison messages (the batch comes again)
            raise RuntimeError(f"dead-letter topic {topic!r} did not acknowledge: {self._dlq_errors or remaining}")

    def _report_lags(self) -> None:
        if self.progress is not None and self.lags:
            self.progress.write(self.lags)

    def _final_lags(self) -> None:
        """The last word before leaving: lags as of the final commit (statistics are up to a
        second old), so a stopped consumer does not stay reported behind."""
        now = self.clock()
        self.lags = [PartitionLag(lag.group, lag.topic, lag.partition, self._committed.get((lag.topic, lag.partition), lag.position),
                                  lag.high, max(lag.high - self._committed.get((lag.topic, lag.partition), lag.high - lag.lag), 0),
                                  lag.consumer, now) for lag in self.lags]
        try:
            self._report_lags()
        except Exception:
            log.exception("kafka: writing the final lag failed")

    def _on_dlq_delivery(self, err: Any, _msg: Any) -> None:
        if err is not None:
            self._dlq_errors.append(str(err))

    def _on_stats(self, raw: str) -> None:
        try:
            self.lags = lags_from_statistics(orjson.loads(raw), self.config.group, self.name, self.clock(), self._committed)
            self._report_lags()
        except Exception:  # statistics are advisory: never let them stop the stream
            log.exception("kafka: reading consumer statistics failed")


def _app_header(headers: list[tuple[str, bytes]] | None) -> str | None:
    for key, value in headers or ():
        if key.lower() == APP_HEADER and value:
            return value.decode("utf-8", errors="replace")
    return None


# ---- sink -----------------------------------------------------------------------------------------

@dataclass
class SinkConfig:
    bootstrap: str
    topic: str = "liverec-impressions"
    window_s: float = 1800.0  # the reward window (the ranking's ``reward_window_s``)
    poll_s: float = 1.0
    batch: int = 5_000
    properties: dict[str, str] = field(default_factory=dict)


class ImpressionSink:
    """Produce the impression log and its rewards to a topic, for the platform's analytics.

    Two cursors, kept in the store (``streams/sink/...``) after the broker acknowledged: the
    impressions produced as shown (``{"kind": "impression", ...}``) and those whose reward window
    has closed (``{"kind": "reward", "impression_id", "reward"}``: 1 positive, 0 negative, 0.5 no
    reaction), computed from the event log exactly as off-policy evaluation does.
    """

    def __init__(self, config: SinkConfig, impressions: ImpressionLog, events: EventLog, snapshots: Snapshots,
                 types: Mapping[str, TypeSpec], clock: Callable[[], float] = time.time):
        from confluent_kafka import Producer

        self.config = config
        self.impressions = impressions
        self.events = events
        self.snapshots = snapshots
        self.types = types
        self.clock = clock
        self.produced = {"impression": 0, "reward": 0}
        self._stop = threading.Event()
        self._errors: list[str] = []
        self._producer = Producer(client_config(config.bootstrap, config.properties, **{"acks": "all", "linger.ms": 20}))
        self._cursor_name = f"streams/sink/{config.topic}"
        blob = snapshots.get(PROGRESS_APP, self._cursor_name)
        cursor = orjson.loads(blob) if blob else {}
        self.shown_seq = int(cursor.get("shown", 0))
        self.rewarded_seq = int(cursor.get("rewarded", 0))

    def stop(self, *_: Any) -> None:
        self._stop.set()

    def run(self, until_idle: bool = False) -> dict[str, int]:
        while not self._stop.is_set():
            moved = self.step()
            if until_idle and not moved:
                break
            if not moved:
                self._stop.wait(self.config.poll_s)
        self._producer.flush(10)
        return self.produced

    def step(self) -> int:
        """Produce what is due; returns how many messages."""
        now = self.clock()
        shown = self.impressions.scan_after(self.shown_seq, self.config.batch)
        for _, imp in shown:
            self._produce(imp.impression_id, {"kind": "impression", **imp.to_dict()})
        due = [(s, imp) for s, imp in self.impressions.scan_after(self.rewarded_seq, self.config.batch)]
        closed = []
        for s, imp in due:
            if imp.timestamp + self.config.window_s > now:
                break  # log order is time order: the rest are still open
            closed.append((s, imp))
        for imp, reward in self._rewards([imp for _, imp in closed], now):
            self._produce(imp.impression_id, {"kind": "reward", "impression_id": imp.impression_id, "app": imp.app,
                                              "user_id": imp.user_id, "item_id": imp.item_id, "reward": reward,
                                              "propensity": imp.propensity, "policy": imp.policy})
        if not shown and not closed:
            return 0
        if self._producer.flush(30) or self._errors:
            raise RuntimeError(f"topic {self.config.topic!r} did not acknowledge: {self._errors}")
        if shown:
            self.shown_seq = shown[-1][0]
        if closed:
            self.rewarded_seq = closed[-1][0]
        self.snapshots.put(PROGRESS_APP, self._cursor_name,
                           orjson.dumps({"shown": self.shown_seq, "rewarded": self.rewarded_seq}))
        return len(shown) + len(closed)

    def _rewards(self, closed: list[Impression], now: float) -> list[tuple[Impression, float]]:
        users = {(imp.app, imp.user_id) for imp in closed}
        events = [e for app, user in users for e in self.events.user_events(app, user)]
        return assign_rewards(closed, events, self.config.window_s, self.types, now=now)

    def _produce(self, key: str, value: dict[str, Any]) -> None:
        self._producer.produce(self.config.topic, orjson.dumps(value), key=key.encode(), on_delivery=self._on_delivery)
        self.produced[value["kind"]] += 1
        self._producer.poll(0)

    def _on_delivery(self, err: Any, _msg: Any) -> None:
        if err is not None:
            self._errors.append(str(err))
