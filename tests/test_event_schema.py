"""The documented schemas of an event and an item accept exactly what the validators accept.

The schemas are built from the same field tables the validators check; these tests draw raw
objects near the edges of every rule (types, requirements by type, lengths, id ranges, timestamp
forms, blank text, unknown fields) and require the JSON Schema validator and ``parse_event`` /
``parse_item`` to agree on every one.
"""

from __future__ import annotations

import json
import sys

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from liverec.catalog import item_schema, parse_item
from liverec.events import (
    DEFAULT_TYPES, ID_MAX, ID_MIN, ID_SCHEMA, MAX_ID_LEN, NOT_BLANK, TIMESTAMP_SCHEMA, WHITESPACE, EventRules,
    EventValidationError, TypeSpec, event_schema, id_text, parse_event, parse_timestamp,
)

jsonschema_rs = pytest.importorskip("jsonschema_rs")

MISSING = object()

ids = st.one_of(
    st.text(max_size=3),
    st.sampled_from(["a" * MAX_ID_LEN, "a" * (MAX_ID_LEN + 1), "x/y", "\x00"]),
    st.integers(ID_MIN - 2, ID_MIN + 2), st.integers(ID_MAX - 2, ID_MAX + 2), st.integers(-1000, 1000),
    st.floats(-(2.0**53), 2.0**53, allow_nan=False).filter(lambda f: not f.is_integer() or abs(f) < 2**53),
    st.sampled_from([7.0, -3.0, True, False, None, [], {}]),
)
timestamps = st.one_of(
    st.floats(allow_nan=False, allow_infinity=False), st.integers(-5, 10**12), st.booleans(), st.none(),
    st.from_regex(r"\A[0-9]{1,21}(\.[0-9]{0,10})?\Z"),
    # date-time shaped, with digits anywhere in their range (most name no instant)
    st.from_regex(r"\A[0-9]{4}-[01][0-9]-[0-3][0-9][Tt][0-2][0-9]:[0-6][0-9]:[0-6][0-9](\.[0-9]{1,8})?([Zz]|[+-][0-2][0-9]:[0-9]{2})\Z"),
    st.sampled_from([
        "2000-01-01T00:00:00Z", "2000-01-01t00:00:00.25z", "2000-01-01T01:00:00+01:00", "1998-12-31T23:59:60Z",
        "1999-12-31T23:59:60Z", "2000-01-01T00:59:60+01:00", "2000-02-29T00:00:00Z", "1900-02-29T00:00:00Z",
        "2000-02-30T00:00:00Z", "2000-13-01T00:00:00Z", "2000-01-01T24:00:00Z", "2000-01-01T00:00:00+24:00",
        "2000-01-01T00:00:00+00:60", "2000-01-01T23:60:00Z", "0001-01-01T00:00:00+01:00", "9999-12-31T23:59:59-01:00",
        "2000-01-01T00:00:00", "2000-01-01", "2000-01-01 00:00:00Z", "2000-01-01T00:00:00.Z", "0001-01-01T00:00:00Z",
        "0000-01-01T00:00:00Z", " 12", "1e5", "-1", "nan", "inf", "\u0661", "", "soon",
    ]),
    st.text(max_size=4),
)
texts = st.one_of(st.none(), st.text(max_size=4), st.text(alphabet=WHITESPACE, max_size=3), st.sampled_from(["x" * 10_000, "x" * 10_001]),
                  st.integers(0, 3))
values = st.one_of(st.none(), st.floats(-10, 10, allow_nan=False), st.integers(-10, 10), st.booleans(), st.just("5"))
scopes = st.one_of(st.none(), st.sampled_from(["item", "category", "creator", "", "x" * 257, 5]))
contexts = st.one_of(st.none(), st.dictionaries(st.text(max_size=2), st.integers(), max_size=2), st.just([1]), st.just("c"))


valid_ids = st.one_of(st.text(min_size=1, max_size=4), st.integers(-1000, 1000), st.sampled_from(["a" * MAX_ID_LEN, ID_MIN, ID_MAX, 7.0]))
valid_timestamps = st.one_of(
    st.floats(0, 2e9), st.integers(0, 2 * 10**9), st.from_regex(r"\A[0-9]{1,20}(\.[0-9]{1,9})?\Z"),
    st.sampled_from(["2000-01-01T00:00:00Z", "2000-02-29T12:30:00.5-03:30", "1969-12-31T23:59:59z"]),
)
valid_texts = st.text(max_size=3).map(lambda t: t + "x")


@st.composite
def raw_events(draw, rules):
    """A valid event of a drawn type (every field it needs, some of the optional ones), then,
    half the time, one or two fields set to a value near an edge (valid or not) or dropped."""
    name = draw(st.sampled_from(list(rules.types)))
    spec = rules.types[name]
    raw = {"user_id": draw(valid_ids), "type": name}
    scoped = spec.scoped and draw(st.booleans())
    if scoped:
        raw["scope"], raw["target"] = draw(st.sampled_from(["category", "creator"])), draw(valid_ids)
    elif spec.needs_item or draw(st.booleans()):
        raw["item_id"] = draw(valid_ids)
    if spec.rated:
        raw["value"] = draw(st.floats(rules.rating_min, rules.rating_max))
    if spec.needs_text:
        raw["text"] = draw(valid_texts)
    if spec.reverts == "event":
        raw["target"] = draw(valid_ids)
    for field, values_of in (("event_id", valid_ids), ("timestamp", valid_timestamps), ("context", contexts)):
        if draw(st.booleans()):
            raw[field] = draw(values_of)
    edges = {
        "event_id": ids, "user_id": ids, "item_id": ids, "type": st.sampled_from([*rules.types, "nope", 3, None]),
        "timestamp": timestamps, "value": values, "text": texts, "scope": scopes, "target": ids, "context": contexts,
        "colour": st.text(max_size=2), "app": st.text(max_size=2), "events": st.just([]),
    }
    for _ in range(draw(st.sampled_from([0, 0, 1, 2]))):
        # mostly a field the event has (what its type needs among them), else any
        field = draw(st.sampled_from(sorted(raw) if raw and draw(st.booleans()) else sorted(edges)))
        if draw(st.integers(0, 2)) == 0:
            raw.pop(field, None)
        else:
            raw[field] = draw(edges[field])
    return raw


def agree(validator, raw, parse) -> None:
    # only what JSON can carry reaches either (no NaN, no tuples)
    raw = json.loads(json.dumps(raw))
    try:
        parse(raw)
        accepted = True
    except EventValidationError:
        accepted = False
    assert validator.is_valid(raw) == accepted, (raw, "parser accepts" if accepted else "parser rejects")


RULES = EventRules(rating_min=1, rating_max=10)
# The app is the request's (the HTTP header's), so the schema has no `app`; the parser also takes a
# body `app` equal to the request's, which no drawn value (2 characters at most) is.
APP = "the-app"
EVENTS = jsonschema_rs.validator_for(event_schema(RULES, omit=("app",)), validate_formats=True)


@settings(max_examples=1500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(raw_events(RULES))
def test_event_schema_accepts_what_the_validator_accepts(raw):
    agree(EVENTS, raw, lambda r: parse_event(r, app=APP, rules=RULES))


CUSTOM = EventRules(types={"view": DEFAULT_TYPES["view"], "report": TypeSpec("negative", -4.0, scoped=True, needs_text=True)})
CUSTOM_EVENTS = jsonschema_rs.validator_for(event_schema(CUSTOM, omit=("app",)), validate_formats=True)


@settings(max_examples=300, deadline=None)
@given(raw_events(CUSTOM))
def test_event_schema_follows_the_type_table(raw):
    agree(CUSTOM_EVENTS, raw, lambda r: parse_event(r, app=APP, rules=CUSTOM))


@st.composite
def raw_items(draw):
    fields = {
        "item_id": ids, "title": st.one_of(st.text(max_size=3), st.sampled_from(["t" * 1000, "t" * 1001]), st.none(), st.integers(0, 2)),
        "text": texts, "categories": st.one_of(st.lists(st.one_of(st.text(max_size=2), st.integers(0, 2)), max_size=3), st.just("A")),
        "attributes": contexts,
    }
    raw = {name: draw(v) for name, v in fields.items() if draw(st.integers(0, 2)) > (0 if name == "item_id" else 1)}
    if draw(st.integers(0, 20)) == 0:
        raw["colour"] = "red"
    return raw


ITEMS = jsonschema_rs.validator_for(item_schema())
ITEM_UPDATES = jsonschema_rs.validator_for(item_schema(omit=("item_id",)))


@settings(max_examples=600, deadline=None)
@given(raw_items())
def test_item_schema_accepts_what_the_validator_accepts(raw):
    agree(ITEMS, raw, lambda r: parse_item(r, app="a"))
    raw.pop("item_id", None)  # PUT /v1/items/{id}: the id is the URL's
    agree(ITEM_UPDATES, raw, lambda r: parse_item(r, app="a", item_id="from-url"))


TIMESTAMPS = jsonschema_rs.validator_for(TIMESTAMP_SCHEMA, validate_formats=True)
IDS = jsonschema_rs.validator_for(ID_SCHEMA)


@settings(max_examples=2000, deadline=None)
@given(timestamps)
def test_timestamp_schema_is_the_reader(raw):
    raw = json.loads(json.dumps(raw))
    assert TIMESTAMPS.is_valid(raw) == (raw is not None and parse_timestamp(raw) is not None), raw


@settings(max_examples=1000, deadline=None)
@given(ids)
def test_id_schema_is_the_reader(raw):
    raw = json.loads(json.dumps(raw))
    assert IDS.is_valid(raw) == (id_text(raw) is not None), raw


def test_schema_names_the_table():
    schema = event_schema(omit=("app",))
    assert schema["properties"]["type"]["enum"] == list(DEFAULT_TYPES)
    assert "app" not in schema["properties"] and "app" in event_schema()["properties"]
    rated = [c for c in schema["allOf"] if "value" in c["then"].get("required", [])]
    assert rated and rated[0]["if"]["properties"]["type"]["enum"] == ["rating"]


def test_whitespace_is_what_strip_strips():
    assert WHITESPACE == "".join(c for c in map(chr, range(sys.maxunicode + 1)) if c.isspace())
    assert NOT_BLANK.startswith("[^")
