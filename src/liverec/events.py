"""The event schema: types, polarity, and validation of raw input.

Every behaviour signal the app sends (a view, a rating, a block of a whole category, a search) is
one :class:`Event`. Raw input (JSON objects from HTTP, rows from files) goes through
:func:`parse_event` / :func:`parse_batch`, which either return events or raise
:class:`EventValidationError` listing every problem with its field, value and what was expected.

The type table (:data:`DEFAULT_TYPES`) is the one place event types are named: every role other
modules test for (positive, scoped, kept as a like...) is a set of :class:`Vocabulary`, read from it.

>>> e = parse_event({"user_id": "u1", "item_id": "i9", "type": "like"}, app="shop", now=1.0)
>>> (e.app, e.type, e.timestamp, e.scope)
('shop', 'like', 1.0, 'item')
"""

from __future__ import annotations

import math
import re
import time
import uuid
from dataclasses import asdict, dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import Any, Callable, Iterable, Literal, Mapping

Polarity = Literal["positive", "negative", "neutral"]


class Feedback(StrEnum):
    """What an event says about the item (or the scope) it names, beyond its polarity: the
    feedback the user state keeps and the ranking policy reads."""

    CLICK = "click"  # a weak positive: the user opened it
    LIKE = "like"  # the user says they like it (like, favorite)
    ENDORSE = "endorse"  # an act that vouches for it (share, purchase); the state keeps it as a like
    SKIP = "skip"
    DISLIKE = "dislike"
    BLOCK = "block"


Reverts = Literal["event", "block"]


@dataclass(frozen=True, slots=True)
class TypeSpec:
    """How one event type is read.

    ``weight`` is the strength used by counters (popularity, co-occurrence) and the sign used by
    the feedback policy; ``in_sequence`` says whether the event enters the user's behaviour
    sequence (the model's input); ``needs_item`` whether an ``item_id`` is required (for scope
    ``item``); ``needs_text`` whether a non-empty ``text`` is; ``rated`` whether ``value`` is a
    rating (required, within the rules' rating range). ``scoped``: the type may name a
    ``scope`` other than ``item`` (a category, any item attribute) with its ``target``.
    ``signal``: the feedback it gives (:class:`Feedback`), if any. ``reverts``: what it takes back,
    ``event`` (the event whose id is its ``target``) or ``block`` (the block of the same scope and
    target).

    Only ``polarity`` and ``weight`` vary between deployments (``Settings.type_weights``); the
    other fields are what the type means.
    """

    polarity: Polarity
    weight: float
    in_sequence: bool = True
    needs_item: bool = True
    needs_text: bool = False
    rated: bool = False
    scoped: bool = False
    signal: Feedback | None = None
    reverts: Reverts | None = None


# The order is part of every trained model: a type's model id is its position here (see
# liverec.model.features), so new types go at the end.
DEFAULT_TYPES: dict[str, TypeSpec] = {
    "view": TypeSpec("positive", 1.0),
    "click": TypeSpec("positive", 2.0, signal=Feedback.CLICK),
    "add_to_cart": TypeSpec("positive", 3.0),
    "purchase": TypeSpec("positive", 5.0, signal=Feedback.ENDORSE),
    # A rating is an interaction (the user consumed the item); its value is model input.
    "rating": TypeSpec("positive", 1.0, rated=True),
    "like": TypeSpec("positive", 4.0, signal=Feedback.LIKE),
    "favorite": TypeSpec("positive", 4.0, signal=Feedback.LIKE),
    "share": TypeSpec("positive", 4.0, signal=Feedback.ENDORSE),
    "review": TypeSpec("positive", 1.0, needs_text=True),
    "tag": TypeSpec("neutral", 0.0, needs_text=True),
    "skip": TypeSpec("negative", -1.0, scoped=True, signal=Feedback.SKIP),
    "dislike": TypeSpec("negative", -3.0, scoped=True, signal=Feedback.DISLIKE),
    "block": TypeSpec("negative", -5.0, scoped=True, signal=Feedback.BLOCK),
    "search": TypeSpec("neutral", 0.0, needs_item=False, needs_text=True),
    "impression": TypeSpec("neutral", 0.0, in_sequence=False),
    "unblock": TypeSpec("neutral", 0.0, in_sequence=False, scoped=True, reverts="block"),
    "undo": TypeSpec("neutral", 0.0, in_sequence=False, needs_item=False, reverts="event"),
}


@dataclass(frozen=True)
class Vocabulary:
    """The types of one table grouped by role: the sets a module tests an event's type against.

    Polarity can differ per deployment (``Settings.types()``), so a module that is handed a type
    table builds its own with :meth:`of`; the module-level sets (:data:`POSITIVE`,
    :data:`LIKE_LIKE`, ...) are those of :data:`DEFAULT_TYPES`.

    >>> v = Vocabulary.of({**DEFAULT_TYPES, "report": TypeSpec("negative", -4.0, scoped=True)})
    >>> ("report" in v.negative, "report" in v.scoped, "report" in v.positive)
    (True, True, False)
    >>> sorted(VOCABULARY.like_like)
    ['favorite', 'like', 'purchase', 'share']
    """

    names: frozenset[str]
    positive: frozenset[str]
    negative: frozenset[str]
    neutral: frozenset[str]
    in_sequence: frozenset[str]
    needs_item: frozenset[str]
    needs_text: frozenset[str]
    rated: frozenset[str]
    scoped: frozenset[str]  # may name a scope other than item, with a target
    targeted: frozenset[str]  # take back what their target names (undo, unblock)
    undoes: frozenset[str]  # revert the event whose id is the target
    unblocks: frozenset[str]  # revert a block of the same scope and target
    like_like: frozenset[str]  # kept as the user's likes: said (like, favorite) or implied (share, purchase)
    likes: frozenset[str]  # the user says they like the item
    clicks: frozenset[str]
    skips: frozenset[str]
    dislikes: frozenset[str]
    blocks: frozenset[str]

    @classmethod
    def of(cls, types: Mapping[str, TypeSpec]) -> Vocabulary:
        def where(test: Callable[[TypeSpec], bool]) -> frozenset[str]:
            return frozenset(name for name, spec in types.items() if test(spec))

        def signal(*kinds: Feedback) -> frozenset[str]:
            return where(lambda s: s.signal in kinds)

        return cls(
            names=frozenset(types),
            positive=where(lambda s: s.polarity == "positive"),
            negative=where(lambda s: s.polarity == "negative"),
            neutral=where(lambda s: s.polarity == "neutral"),
            in_sequence=where(lambda s: s.in_sequence),
            needs_item=where(lambda s: s.needs_item),
            needs_text=where(lambda s: s.needs_text),
            rated=where(lambda s: s.rated),
            scoped=where(lambda s: s.scoped),
            targeted=where(lambda s: s.reverts is not None),
            undoes=where(lambda s: s.reverts == "event"),
            unblocks=where(lambda s: s.reverts == "block"),
            like_like=signal(Feedback.LIKE, Feedback.ENDORSE),
            likes=signal(Feedback.LIKE),
            clicks=signal(Feedback.CLICK),
            skips=signal(Feedback.SKIP),
            dislikes=signal(Feedback.DISLIKE),
            blocks=signal(Feedback.BLOCK),
        )


VOCABULARY = Vocabulary.of(DEFAULT_TYPES)
POSITIVE = VOCABULARY.positive
NEGATIVE = VOCABULARY.negative
NEUTRAL = VOCABULARY.neutral
IN_SEQUENCE = VOCABULARY.in_sequence
NEEDS_ITEM = VOCABULARY.needs_item
NEEDS_TEXT = VOCABULARY.needs_text
RATED = VOCABULARY.rated
SCOPED = VOCABULARY.scoped
TARGETED = VOCABULARY.targeted
UNDOES = VOCABULARY.undoes
UNBLOCKS = VOCABULARY.unblocks
LIKE_LIKE = VOCABULARY.like_like
LIKES = VOCABULARY.likes
CLICKS = VOCABULARY.clicks
SKIPS = VOCABULARY.skips
DISLIKES = VOCABULARY.dislikes
BLOCKS = VOCABULARY.blocks

MAX_ID_LEN = 256
MAX_TEXT_LEN = 10_000
# An integer id is a 64-bit integer (its decimal text is the id): what every client language holds.
ID_MIN, ID_MAX = -(2**63), 2**63 - 1
# Epoch seconds written as a string (rows of CSV files): digits, an optional fraction.
EPOCH_TEXT = r"^[0-9]{1,20}(\.[0-9]{1,9})?$"
_EPOCH_TEXT = re.compile(EPOCH_TEXT)
# The characters ``str.strip()`` strips (``str.isspace``): a text needs one character outside them.
WHITESPACE = "\t\n\x0b\x0c\r\x1c\x1d\x1e\x1f \x85\xa0\u1680\u2000\u2001\u2002\u2003\u2004\u2005\u2006\u2007\u2008\u2009\u200a\u2028\u2029\u202f\u205f\u3000"
NOT_BLANK = f"[^{WHITESPACE}]"

ID_SCHEMA: dict[str, Any] = {"anyOf": [
    {"type": "string", "minLength": 1, "maxLength": MAX_ID_LEN},
    {"type": "integer", "minimum": ID_MIN, "maximum": ID_MAX},
]}
TIMESTAMP_SCHEMA: dict[str, Any] = {"anyOf": [
    {"type": "number", "minimum": 0},
    {"type": "string", "pattern": EPOCH_TEXT},
    {"type": "string", "format": "date-time"},
]}


@dataclass(frozen=True, slots=True)
class FieldSpec:
    """One field of a raw input object: the JSON Schema of its value, whether it must be present
    (and not null), whether null stands for absent, and what it means.

    The validators (:func:`parse_event`, :func:`liverec.catalog.parse_item`) check exactly these
    constraints, and :func:`object_schema` documents them, so the API's schema is the validator's.
    """

    schema: Mapping[str, Any]
    description: str
    required: bool = False
    nullable: bool = True


EVENT_FIELD_SPECS: dict[str, FieldSpec] = {
    "event_id": FieldSpec(ID_SCHEMA, "Client id for idempotency (a repeated id is counted as a duplicate); generated if absent"),
    "user_id": FieldSpec(ID_SCHEMA, "Who acted (an integer id is read as its decimal text)", required=True),
    "item_id": FieldSpec(ID_SCHEMA, "The item acted on; required unless the type needs none (search, undo) or the scope is not item"),
    "type": FieldSpec({"type": "string"}, "The event type (the service's type table)", required=True),
    "timestamp": FieldSpec(TIMESTAMP_SCHEMA, "When: epoch seconds >= 0 (a number, or a string of digits), or an RFC 3339 date-time; default now"),
    "value": FieldSpec({"type": "number"}, "A finite number; for a rating, required and within the rating range"),
    "text": FieldSpec({"type": "string", "maxLength": MAX_TEXT_LEN}, "Search query, review or tag text (required, not blank, for those types)"),
    "scope": FieldSpec({"type": "string", "minLength": 1, "maxLength": MAX_ID_LEN},
                       "What scoped feedback applies to: item (default), category, or any item attribute (creator, ...)"),
    "target": FieldSpec(ID_SCHEMA, "The scoped value (a category, a creator...), or the event_id an undo reverts"),
    "context": FieldSpec({"type": "object"}, "Free-form context of the event (device, page, ...)"),
    "app": FieldSpec({"type": "string"}, "The tenant: must be the app the event is read for"),
}
EVENT_FIELDS = tuple(EVENT_FIELD_SPECS)
_FIELD_SET = frozenset(EVENT_FIELDS)


def object_schema(specs: Mapping[str, FieldSpec], *, omit: Iterable[str] = (), title: str | None = None) -> dict[str, Any]:
    """The JSON Schema (2020-12) of an object made of ``specs``' fields (less ``omit``), no others.

    >>> s = object_schema({"a": FieldSpec({"type": "string"}, "an a", required=True), "b": FieldSpec({"type": "number"}, "a b")})
    >>> s["required"], s["properties"]["b"]["anyOf"][1]
    (['a'], {'type': 'null'})
    """
    properties: dict[str, Any] = {}
    required: list[str] = []
    for name, spec in specs.items():
        if name in omit:
            continue
        schema = dict(spec.schema)
        if spec.nullable and not spec.required:
            schema = {"anyOf": [*schema["anyOf"], {"type": "null"}]} if list(schema) == ["anyOf"] else {"anyOf": [schema, {"type": "null"}]}
        properties[name] = {**schema, "description": spec.description}
        if spec.required:
            required.append(name)
    out: dict[str, Any] = {"type": "object", "properties": properties, "required": required, "additionalProperties": False}
    if title:
        out["title"] = title
    return out


def event_schema(rules: EventRules | None = None, *, omit: Iterable[str] = ()) -> dict[str, Any]:
    """The JSON Schema (2020-12) of a raw event: what :func:`parse_event` accepts, no more, no
    less. The fields come from :data:`EVENT_FIELD_SPECS`; what each type requires (an item, a
    rating in range, non-blank text, a target) from the type table of ``rules``. ``omit`` leaves
    fields out (the HTTP API names the app in a header, so its events carry no ``app``).

    >>> s = event_schema(omit=("app",))
    >>> s["required"], "app" in s["properties"], s["properties"]["type"]["enum"][:3]
    (['user_id', 'type'], False, ['view', 'click', 'add_to_cart'])
    """
    rules = rules or EventRules()
    vocabulary = Vocabulary.of(rules.types)
    out = object_schema(EVENT_FIELD_SPECS, omit=omit, title="Event")
    out["properties"]["type"]["enum"] = list(rules.types)
    item_scope = {"enum": [None, "item"]}

    def when(types: frozenset[str], then: dict[str, Any], **also: Any) -> dict[str, Any]:
        condition = {"required": ["type"], "properties": {"type": {"enum": [t for t in rules.types if t in types]}, **also}}
        return {"if": condition, "then": then}

    def needs(name: str, schema: Mapping[str, Any]) -> dict[str, Any]:
        return {"required": [name], "properties": {name: schema}}

    clauses = []
    if vocabulary.needs_item:
        clauses.append(when(vocabulary.needs_item, needs("item_id", ID_SCHEMA), scope=item_scope))
    if vocabulary.names - vocabulary.scoped:
        clauses.append(when(vocabulary.names - vocabulary.scoped, {"properties": {"scope": item_scope}}))
    # feedback on a scope other than item names the value it applies to
    clauses.append({"if": {"required": ["scope"], "properties": {"scope": {"type": "string", "not": {"const": "item"}}}},
                    "then": needs("target", ID_SCHEMA)})
    if vocabulary.undoes:
        clauses.append(when(vocabulary.undoes, needs("target", ID_SCHEMA)))
    if vocabulary.rated:
        clauses.append(when(vocabulary.rated, needs("value", {"type": "number", "minimum": rules.rating_min, "maximum": rules.rating_max})))
    if vocabulary.needs_text:
        clauses.append(when(vocabulary.needs_text, needs("text", {"type": "string", "pattern": NOT_BLANK})))
    out["allOf"] = clauses
    return out


@dataclass(frozen=True, slots=True)
class Event:
    """One validated behaviour event. ``timestamp`` is epoch seconds (UTC)."""

    app: str
    event_id: str
    user_id: str
    type: str
    timestamp: float
    item_id: str | None = None
    value: float | None = None
    text: str | None = None
    scope: str = "item"
    target: str | None = None
    context: dict[str, Any] | None = field(default=None, compare=True)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True, slots=True)
class FieldError:
    """One problem with one field of the input."""

    field: str
    value: Any
    expected: str

    def to_dict(self) -> dict[str, Any]:
        value = self.value
        if isinstance(value, str) and len(value) > 200:
            value = value[:200] + "..."
        elif not isinstance(value, (str, int, float, bool, type(None))):
            value = repr(value)[:200]
        elif isinstance(value, float) and not math.isfinite(value):
            value = repr(value)  # JSON has no NaN/inf
        return {"field": self.field, "value": value, "expected": self.expected}


class EventValidationError(ValueError):
    """Raised with every field error found in the input (all of them, not only the first)."""

    def __init__(self, errors: list[FieldError]):
        self.errors = errors
        super().__init__("; ".join(f"{e.field}={e.value!r}: expected {e.expected}" for e in errors))


@dataclass(frozen=True, slots=True)
class EventRules:
    """Validation settings: the type table and the accepted rating range."""

    types: Mapping[str, TypeSpec] = field(default_factory=lambda: dict(DEFAULT_TYPES))
    rating_min: float = 0.0
    rating_max: float = 5.0


def parse_timestamp(raw: Any) -> float | None:
    """Epoch seconds from a number >= 0, a string of digits, or an RFC 3339 date-time (its offset
    required: a time without one names no instant); ``None`` if it is none of them.

    >>> parse_timestamp("2000-01-01T00:00:00Z")
    946684800.0
    >>> parse_timestamp(12.5), parse_timestamp("12.5"), parse_timestamp("2000-01-01T00:00:00")
    (12.5, 12.5, None)
    """
    if isinstance(raw, bool):
        return None
    if isinstance(raw, (int, float)):
        value = _finite(raw)
        return value if value is not None and value >= 0 else None
    if isinstance(raw, str):
        if _EPOCH_TEXT.match(raw):
            return float(raw)
        return _date_time(raw)
    return None


def _finite(raw: int | float) -> float | None:
    """``raw`` as a float, ``None`` if it is not finite (or an integer too large for one)."""
    try:
        value = float(raw)
    except OverflowError:
        return None
    return value if math.isfinite(value) else None


_DATE_TIME = re.compile(
    r"([0-9]{4})-([0-9]{2})-([0-9]{2})[Tt]([0-9]{2}):([0-9]{2}):([0-9]{2})(\.[0-9]+)?(?:[Zz]|([+-])([0-9]{2}):([0-9]{2}))"
)
_MONTH_DAYS = (31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31)


def _date_time(text: str) -> float | None:
    """Epoch seconds of an RFC 3339 ``date-time`` (JSON Schema's format: years 0000-9999, a
    leap second only at 23:59:60 UTC), ``None`` for anything else."""
    m = _DATE_TIME.fullmatch(text)
    if m is None:
        return None
    offset = 0  # minutes east of UTC
    if m.group(8):
        off_hour, off_minute = int(m.group(9)), int(m.group(10))
        if off_hour > 23 or off_minute > 59:  # (Python's reader takes +00:99)
            return None
        offset = (off_hour * 60 + off_minute) * (1 if m.group(8) == "+" else -1)
    if m.group(6) != "60":
        try:  # the common case, in C
            return datetime.fromisoformat(text).timestamp()
        except (ValueError, OverflowError):
            pass  # a lowercase z, year 0000, a time before year 1 in UTC, or no such date: read below
    year, month, day, hour, minute, second = map(int, m.group(1, 2, 3, 4, 5, 6))
    leap = year % 4 == 0 and (year % 100 != 0 or year % 400 == 0)
    if not 1 <= month <= 12 or not 1 <= day <= _MONTH_DAYS[month - 1] + (month == 2 and leap):
        return None
    if hour > 23 or minute > 59 or second > 60 or (second == 60 and (hour * 60 + minute - offset) % 1440 != 1439):
        return None
    # days from 1970-01-01 in the proleptic Gregorian calendar (H. Hinnant's days_from_civil)
    y = year - (month <= 2)
    era, yoe = divmod(y, 400)
    doy = (153 * (month + (-3 if month > 2 else 9)) + 2) // 5 + day - 1
    days = era * 146097 + yoe * 365 + yoe // 4 - yoe // 100 + doy - 719468
    fraction = float(m.group(7)) if m.group(7) else 0.0
    return days * 86400.0 + hour * 3600 + (minute - offset) * 60 + second + fraction


def _one_of(names: list[str]) -> str:
    """``a, b or c``."""
    return " or ".join(filter(None, [", ".join(names[:-1]), names[-1]])) if names else "none"


def id_text(raw: Any) -> str | None:
    """The id ``raw`` names (:data:`ID_SCHEMA`: 1 to 256 characters, or a 64-bit integer read as
    its decimal text), ``None`` if it names none.

    >>> id_text("a"), id_text(7), id_text(7.0), id_text(True), id_text("")
    ('a', '7', '7', None, None)
    """
    if isinstance(raw, str):
        return raw if 0 < len(raw) <= MAX_ID_LEN else None
    if isinstance(raw, bool):
        return None
    if isinstance(raw, float):
        # JSON (and its schema) do not tell 7.0 from 7; past 2**53 a float is not the integer it
        # was written as (a parser may read an integer beyond 64 bits as one)
        if not (raw.is_integer() and abs(raw) <= 2**53):
            return None
        raw = int(raw)
    if isinstance(raw, int) and ID_MIN <= raw <= ID_MAX:
        return str(raw)
    return None


def _id(raw: Any, name: str, errors: list[FieldError], prefix: str, required: bool) -> str | None:
    if raw is None:
        if required:
            errors.append(FieldError(prefix + name, None, "a non-empty string (required)"))
        return None
    text = id_text(raw)
    if text is None:
        errors.append(FieldError(prefix + name, raw, f"a string of 1 to {MAX_ID_LEN} characters or a 64-bit integer"))
    return text


def parse_event(
    raw: Any,
    *,
    app: str,
    rules: EventRules | None = None,
    now: float | None = None,
    prefix: str = "",
) -> Event:
    """Validate one raw event object and return an :class:`Event`.

    ``app`` is the tenant the request is scoped to; a body ``app`` must agree with it.
    Raises :class:`EventValidationError` with every problem found.
    """
    rules = rules or EventRules()
    errors: list[FieldError] = []
    if not isinstance(raw, dict) and not isinstance(raw, Mapping):  # dict first: the ABC check is slow
        raise EventValidationError([FieldError(prefix.rstrip(".") or "body", raw, "a JSON object (an event)")])
    for key in sorted(raw.keys() - _FIELD_SET, key=str):
        errors.append(FieldError(prefix + str(key), raw[key], f"no such field; known: {', '.join(EVENT_FIELDS)}"))

    body_app = raw.get("app")
    if body_app is not None and body_app != app:
        errors.append(FieldError(prefix + "app", body_app, f"'{app}' (the app named by the X-Liverec-App header)"))

    type_ = raw.get("type")
    spec = rules.types.get(type_) if isinstance(type_, str) else None
    if spec is None:
        errors.append(FieldError(prefix + "type", type_, f"one of {', '.join(sorted(rules.types))}"))

    user_id = _id(raw.get("user_id"), "user_id", errors, prefix, required=True)

    scope = raw.get("scope", "item")
    if scope is None:
        scope = "item"
    if not isinstance(scope, str) or not scope or len(scope) > MAX_ID_LEN:
        errors.append(FieldError(prefix + "scope", scope, "'item', 'category' or an item attribute name"))
        scope = "item"
    target = _id(raw.get("target"), "target", errors, prefix, required=False)

    item_required = spec is not None and spec.needs_item and scope == "item"
    item_id = _id(raw.get("item_id"), "item_id", errors, prefix, required=item_required)
    if spec is not None and scope != "item":
        if not spec.scoped:
            scoped = [name for name, s in rules.types.items() if s.scoped]
            errors.append(FieldError(prefix + "scope", scope, f"'item' for type '{type_}' (scoped feedback is {_one_of(scoped)})"))
        elif target is None:
            errors.append(FieldError(prefix + "target", None, f"the {scope} value the {type_} applies to"))
    if spec is not None and spec.reverts == "event" and target is None:
        errors.append(FieldError(prefix + "target", None, f"the event_id of the event to {type_}"))

    event_id = _id(raw.get("event_id"), "event_id", errors, prefix, required=False)
    if event_id is None and raw.get("event_id") is None:
        event_id = uuid.uuid4().hex

    raw_ts = raw.get("timestamp")
    if raw_ts is None:
        timestamp = time.time() if now is None else now
    else:
        parsed = parse_timestamp(raw_ts)
        if parsed is None:
            errors.append(FieldError(prefix + "timestamp", raw_ts, "epoch seconds >= 0 (a number or a string of digits) or an RFC 3339 date-time"))
            parsed = 0.0
        timestamp = parsed

    value = raw.get("value")
    if value is not None:
        number = None if isinstance(value, bool) or not isinstance(value, (int, float)) else _finite(value)
        if number is None:
            errors.append(FieldError(prefix + "value", value, "a finite number"))
        value = number
    if spec is not None and spec.rated:
        if value is None and not any(e.field == prefix + "value" for e in errors):
            errors.append(FieldError(prefix + "value", None, f"a rating between {rules.rating_min:g} and {rules.rating_max:g}"))
        elif value is not None and not rules.rating_min <= value <= rules.rating_max:
            errors.append(FieldError(prefix + "value", value, f"a rating between {rules.rating_min:g} and {rules.rating_max:g}"))

    text = raw.get("text")
    if text is not None and (not isinstance(text, str) or len(text) > MAX_TEXT_LEN):
        errors.append(FieldError(prefix + "text", text, f"a string of at most {MAX_TEXT_LEN} characters"))
        text = None
    if spec is not None and spec.needs_text and not (isinstance(text, str) and text.strip()):
        if not any(e.field == prefix + "text" for e in errors):
            errors.append(FieldError(prefix + "text", text, f"non-empty text for a '{type_}' event"))

    context = raw.get("context")
    if context is not None and not isinstance(context, dict) and not isinstance(context, Mapping):
        errors.append(FieldError(prefix + "context", context, "a JSON object"))
        context = None

    if errors:
        raise EventValidationError(errors)
    return Event(
        app=app,
        event_id=event_id,  # type: ignore[arg-type]
        user_id=user_id,  # type: ignore[arg-type]
        type=type_,  # type: ignore[arg-type]
        timestamp=timestamp,
        item_id=item_id,
        value=value,
        text=text,
        scope=scope,
        target=target,
        context=dict(context) if context is not None else None,
    )


def parse_batch(
    raws: Iterable[Any],
    *,
    app: str,
    rules: EventRules | None = None,
    now: float | None = None,
    max_errors: int = 100,
    positions: bool = True,
) -> list[Event]:
    """Validate a batch; all-or-nothing: raise with the errors of every bad event.

    Field names carry the position, e.g. ``events[3].type`` (``positions=False``: plain field
    names, for a request that sent a single event).
    """
    now = time.time() if now is None else now
    events: list[Event] = []
    errors: list[FieldError] = []
    for i, raw in enumerate(raws):
        try:
            events.append(parse_event(raw, app=app, rules=rules, now=now, prefix=f"events[{i}]." if positions else ""))
        except EventValidationError as exc:
            errors.extend(exc.errors)
            if len(errors) >= max_errors:
                break
    if errors:
        raise EventValidationError(errors[:max_errors])
    return events
