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
import time
import uuid
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
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

EVENT_FIELDS = (
    "event_id", "user_id", "item_id", "type", "timestamp", "value", "text", "scope", "target",
    "context", "app",
)
_FIELD_SET = frozenset(EVENT_FIELDS)
MAX_ID_LEN = 256
MAX_TEXT_LEN = 10_000


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
    """Epoch seconds from a number or an ISO-8601 string; ``None`` if it cannot be read.

    Naive ISO times are taken as UTC.

    >>> parse_timestamp("2000-01-01T00:00:00Z")
    946684800.0
    >>> parse_timestamp(12.5)
    12.5
    """
    if isinstance(raw, bool):
        return None
    if isinstance(raw, (int, float)):
        value = float(raw)
        return value if math.isfinite(value) and value >= 0 else None
    if isinstance(raw, str):
        text = raw.strip()
        if not text:
            return None
        try:
            return parse_timestamp(float(text))
        except ValueError:
            pass
        try:
            parsed = datetime.fromisoformat(text.replace("Z", "+00:00"))
        except ValueError:
            return None
        if parsed.tzinfo is None:
            parsed = parsed.replace(tzinfo=timezone.utc)
        return parsed.timestamp()
    return None


def _one_of(names: list[str]) -> str:
    """``a, b or c``."""
    return " or ".join(filter(None, [", ".join(names[:-1]), names[-1]])) if names else "none"


def _id(raw: Any, name: str, errors: list[FieldError], prefix: str, required: bool) -> str | None:
    if raw is None:
        if required:
            errors.append(FieldError(prefix + name, None, "a non-empty string (required)"))
        return None
    if isinstance(raw, bool) or not isinstance(raw, (str, int)):
        errors.append(FieldError(prefix + name, raw, "a string or integer id"))
        return None
    text = str(raw)
    if not text or len(text) > MAX_ID_LEN:
        errors.append(FieldError(prefix + name, raw, f"1 to {MAX_ID_LEN} characters"))
        return None
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
            errors.append(FieldError(prefix + "timestamp", raw_ts, "epoch seconds >= 0 or an ISO-8601 date-time"))
            parsed = 0.0
        timestamp = parsed

    value = raw.get("value")
    if value is not None:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            errors.append(FieldError(prefix + "value", value, "a finite number"))
            value = None
        elif not math.isfinite(value):
            errors.append(FieldError(prefix + "value", value, "a finite number"))
            value = None
        else:
            value = float(value)
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
