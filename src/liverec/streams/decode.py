"""A message from an event bus -> validated events, or a dead letter saying why not.

Pure functions, no broker: the Kafka source (:mod:`liverec.streams.kafka`) calls
:func:`decode_message` on every message it consumes. A message holds one event object in the
API's event schema or a batch ``{"events": [...]}``; like a request, a batch is all-or-nothing
(one bad event sends the whole message to the dead-letter topic, with every field error, so the
message can be fixed and produced again as it was).

An event without ``event_id`` gets one derived from where it sits in the stream
(``kafka:TOPIC:PARTITION:OFFSET``, ``:INDEX`` for the events of a batch): a redelivery after a
crash carries the same id, so the log's idempotent append recognises it.

>>> from liverec.events import EventRules
>>> msg = StreamMessage("clicks", 0, 41, b'{"user_id": "u1", "item_id": "i9", "type": "view"}')
>>> events = decode_message(msg, app="default", rules=EventRules(), now=1.0)
>>> [(e.event_id, e.user_id, e.item_id) for e in events]
[('kafka:clicks:0:41', 'u1', 'i9')]
>>> try:
...     decode_message(StreamMessage("clicks", 0, 42, b'{"user_id": "u1", "type": "viewed"}'), app="default",
...                    rules=EventRules(), now=1.0)
... except DeadLetter as dead:
...     print(dead.errors[0]["field"], "->", dead.errors[0]["expected"][:6])
type -> one of
"""

from __future__ import annotations

import base64
from typing import Any, NamedTuple

import orjson

from ..events import Event, EventRules, EventValidationError, FieldError, parse_event

MAX_BATCH = 10_000  # events in one message, as over HTTP


class StreamMessage(NamedTuple):
    """Where a message sits in its stream, and its bytes (a tuple: one is built per message)."""

    topic: str
    partition: int
    offset: int
    value: bytes | None
    key: bytes | None = None
    app: str | None = None  # from the message's ``x-liverec-app`` header, if any

    @property
    def position(self) -> str:
        return f"kafka:{self.topic}:{self.partition}:{self.offset}"


class DeadLetter(ValueError):
    """A message that cannot become events, with field-level reasons (``field``, ``value``,
    ``expected``, as the HTTP API's 422)."""

    def __init__(self, errors: list[dict[str, Any]]):
        self.errors = errors
        super().__init__("; ".join(f"{e['field']}: expected {e['expected']}" for e in errors))


def decode_message(msg: StreamMessage, *, app: str, rules: EventRules, now: float) -> list[Event]:
    """The events of one message, validated; raises :class:`DeadLetter` if any is bad."""
    app = msg.app or app
    if msg.value is None:
        raise DeadLetter([FieldError("message", None, "a JSON event object or {\"events\": [...]}").to_dict()])
    try:
        body = orjson.loads(msg.value)
    except orjson.JSONDecodeError as exc:
        raise DeadLetter([FieldError("message", _preview(msg.value), f"JSON ({exc})").to_dict()]) from None
    if isinstance(body, dict) and "events" in body:
        extra = sorted(set(body) - {"events"})
        if extra:
            raise DeadLetter([FieldError(extra[0], body[extra[0]], "only 'events' beside a batch").to_dict()])
        raws = body["events"]
        if not isinstance(raws, list) or not raws:
            raise DeadLetter([FieldError("events", raws, "a non-empty list of event objects").to_dict()])
        if len(raws) > MAX_BATCH:
            raise DeadLetter([FieldError("events", f"{len(raws)} events", f"at most {MAX_BATCH} in one message").to_dict()])
        ids = [f"{msg.position}:{i}" for i in range(len(raws))]
        prefixes = [f"events[{i}]." for i in range(len(raws))]
    elif isinstance(body, dict):
        raws, ids, prefixes = [body], [msg.position], [""]
    else:
        raise DeadLetter([FieldError("message", _preview(msg.value), "a JSON event object or {\"events\": [...]}").to_dict()])

    events: list[Event] = []
    errors: list[FieldError] = []
    for raw, derived, prefix in zip(raws, ids, prefixes):
        if isinstance(raw, dict) and raw.get("event_id") is None:
            raw["event_id"] = derived  # the dict was decoded here: ours to complete
        try:
            events.append(parse_event(raw, app=app, rules=rules, now=now, prefix=prefix))
        except EventValidationError as exc:
            errors.extend(exc.errors)
    if errors:
        raise DeadLetter([e.to_dict() for e in errors[:100]])
    return events


def dead_letter_record(msg: StreamMessage, dead: DeadLetter, consumer: str) -> bytes:
    """The dead-letter topic's message: where the original sat, why it was refused, and the
    original bytes (as text when they are UTF-8, base64 otherwise)."""
    value: dict[str, Any] = {}
    if msg.value is not None:
        try:
            value = {"value": msg.value.decode("utf-8")}
        except UnicodeDecodeError:
            value = {"value_base64": base64.b64encode(msg.value).decode("ascii")}
    return orjson.dumps({
        "source": {"topic": msg.topic, "partition": msg.partition, "offset": msg.offset},
        "errors": dead.errors,
        "consumer": consumer,
        **value,
    })


def _preview(value: bytes) -> str:
    return value[:200].decode("utf-8", errors="replace")
