import ast
import math
from dataclasses import fields as dataclass_fields
from pathlib import Path
from types import SimpleNamespace

import pytest

import liverec
from liverec import events
from liverec.api.telemetry import Telemetry
from liverec.config import Settings
from liverec.events import (
    DEFAULT_TYPES, VOCABULARY, EventRules, EventValidationError, Feedback, TypeSpec, Vocabulary, parse_batch, parse_event,
    parse_timestamp,
)


def fields(exc: EventValidationError) -> dict[str, str]:
    return {e.field: e.expected for e in exc.errors}


def test_minimal_event_gets_defaults():
    e = parse_event({"user_id": "u", "item_id": "i", "type": "view"}, app="a", now=5.0)
    assert (e.app, e.timestamp, e.scope, e.value) == ("a", 5.0, "item", None)
    assert len(e.event_id) == 32


def test_integer_ids_are_strings():
    e = parse_event({"user_id": 7, "item_id": 9, "type": "click"}, app="a")
    assert (e.user_id, e.item_id) == ("7", "9")


@pytest.mark.parametrize(
    "raw, field",
    [
        ({"item_id": "i", "type": "view"}, "user_id"),
        ({"user_id": "", "item_id": "i", "type": "view"}, "user_id"),
        ({"user_id": "u", "item_id": "i", "type": "teleport"}, "type"),
        ({"user_id": "u", "type": "view"}, "item_id"),
        ({"user_id": "u", "item_id": "i", "type": "rating"}, "value"),
        ({"user_id": "u", "item_id": "i", "type": "rating", "value": 7}, "value"),
        ({"user_id": "u", "item_id": "i", "type": "rating", "value": -1}, "value"),
        ({"user_id": "u", "item_id": "i", "type": "rating", "value": math.nan}, "value"),
        ({"user_id": "u", "item_id": "i", "type": "rating", "value": math.inf}, "value"),
        ({"user_id": "u", "item_id": "i", "type": "rating", "value": "5"}, "value"),
        ({"user_id": "u", "item_id": "i", "type": "view", "timestamp": "yesterday"}, "timestamp"),
        ({"user_id": "u", "item_id": "i", "type": "view", "timestamp": -3}, "timestamp"),
        ({"user_id": "u", "type": "search"}, "text"),
        ({"user_id": "u", "type": "block", "scope": "category"}, "target"),
        ({"user_id": "u", "item_id": "i", "type": "view", "colour": "red"}, "colour"),
        ({"user_id": "u", "item_id": "i", "type": "view", "context": [1]}, "context"),
        ({"user_id": "u", "type": "undo"}, "target"),
        ({"user_id": "u", "item_id": "i", "type": "view", "app": "other"}, "app"),
    ],
)
def test_bad_fields_are_named(raw, field):
    with pytest.raises(EventValidationError) as info:
        parse_event(raw, app="a")
    assert field in fields(info.value), info.value.errors


def test_error_names_value_and_expectation():
    with pytest.raises(EventValidationError) as info:
        parse_event({"user_id": "u", "item_id": "i", "type": "rating", "value": 9}, app="a")
    (err,) = info.value.errors
    assert err.value == 9 and "between 0 and 5" in err.expected


def test_rating_range_is_configurable():
    rules = EventRules(rating_min=1, rating_max=10)
    assert parse_event({"user_id": "u", "item_id": "i", "type": "rating", "value": 9}, app="a", rules=rules).value == 9.0


def test_batch_reports_every_bad_event_with_its_index():
    with pytest.raises(EventValidationError) as info:
        parse_batch([{"user_id": "u", "item_id": "i", "type": "view"}, {"type": "view"}, "x"], app="a")
    got = fields(info.value)
    assert "events[1].user_id" in got and "events[2]" in got


def test_scoped_block_and_search():
    block = parse_event({"user_id": "u", "type": "block", "scope": "category", "target": "Comedy"}, app="a")
    assert (block.scope, block.target, block.item_id) == ("category", "Comedy", None)
    search = parse_event({"user_id": "u", "type": "search", "text": "space opera"}, app="a")
    assert search.item_id is None


def test_timestamps():
    assert parse_timestamp("2000-01-01T01:00:00+01:00") == 946684800.0
    assert parse_timestamp("2000-01-01t00:00:00.5z") == 946684800.5
    assert parse_timestamp("1998-12-31T23:59:60Z") == 915148800.0  # a leap second
    assert parse_timestamp("946684800") == 946684800.0
    # no instant without an offset; no calendar day that does not exist; nothing JSON Schema's
    # date-time format refuses (the documented schema is the validator's)
    for bad in ("2000-01-01T00:00:00", "2000-01-01", "2000-02-30T00:00:00Z", "2000-01-01 00:00:00Z",
                "2000-01-01T00:00:60Z", " 12", "1e5", "-1", "nan", "\u0661", True, -3, 10**400):
        assert parse_timestamp(bad) is None, bad


# ---- the type vocabulary: every role set comes from the type table ---------------------------

def test_role_sets_are_read_from_the_table():
    table = {
        **DEFAULT_TYPES,
        "report": TypeSpec("negative", -4.0, scoped=True, signal=Feedback.DISLIKE),
        "bookmark": TypeSpec("positive", 2.0, signal=Feedback.ENDORSE),
        "retract": TypeSpec("neutral", 0.0, in_sequence=False, needs_item=False, reverts="event"),
    }
    v = Vocabulary.of(table)
    assert "report" in v.negative and "report" in v.scoped and "report" in v.dislikes
    assert "report" not in v.positive | v.neutral | v.like_like
    assert "bookmark" in v.positive and "bookmark" in v.like_like and "bookmark" not in v.likes
    assert "retract" in v.targeted and "retract" in v.undoes and "retract" not in v.in_sequence | v.needs_item
    # the default table's own sets are untouched by a table built from it
    assert "report" not in VOCABULARY.names and VOCABULARY == Vocabulary.of(DEFAULT_TYPES)


def test_the_default_roles():
    assert events.POSITIVE == {"view", "click", "add_to_cart", "purchase", "rating", "like", "favorite", "share", "review"}
    assert events.NEGATIVE == {"skip", "dislike", "block"}
    assert events.NEUTRAL == {"impression", "tag", "unblock", "search", "undo"}
    assert events.LIKE_LIKE == {"like", "favorite", "share", "purchase"}
    assert events.LIKES == {"like", "favorite"} and events.CLICKS == {"click"}
    assert events.SCOPED == {"block", "unblock", "dislike", "skip"}
    assert events.TARGETED == {"undo", "unblock"} and events.UNDOES == {"undo"} and events.UNBLOCKS == {"unblock"}
    assert events.IN_SEQUENCE == VOCABULARY.names - {"impression", "unblock", "undo"}
    assert events.NEEDS_TEXT == {"review", "tag", "search"} and events.NEEDS_ITEM == VOCABULARY.names - {"search", "undo"}
    assert events.RATED == {"rating"}
    # every role set of the vocabulary is exported under its upper-case name
    for f in dataclass_fields(Vocabulary):
        if f.name != "names":
            assert getattr(events, f.name.upper()) == getattr(VOCABULARY, f.name), f.name


def test_model_type_ids_are_fixed():
    """Trained models hold one embedding row per type id: the default table's order is theirs."""
    from liverec.model.features import EVENT_TYPES, TARGET_TYPES, TYPE_IDS

    assert EVENT_TYPES[:17] == (
        "view", "click", "add_to_cart", "purchase", "rating", "like", "favorite", "share",
        "review", "tag", "skip", "dislike", "block", "search", "impression", "unblock", "undo",
    )
    assert TYPE_IDS["view"] == 1 and TYPE_IDS["undo"] == 17
    assert TARGET_TYPES == events.POSITIVE


def test_a_deployments_polarity_moves_the_types_between_sets():
    table = Settings(type_weights={"view": -0.5, "skip": 0.0}).types()
    v = Vocabulary.of(table)
    assert "view" in v.negative and "view" not in v.positive and "skip" in v.neutral
    # only polarity and weight vary by deployment: what a type means stays
    assert table["skip"].scoped and table["skip"].signal == Feedback.SKIP and "skip" in v.skips


def test_validation_reads_the_roles_from_the_rules_table():
    table = {**DEFAULT_TYPES, "report": TypeSpec("negative", -4.0, scoped=True),
             "retract": TypeSpec("neutral", 0.0, in_sequence=False, needs_item=False, reverts="event")}
    rules = EventRules(types=table)
    e = parse_event({"user_id": "u", "type": "report", "scope": "creator", "target": "c1"}, app="a", rules=rules)
    assert (e.scope, e.target) == ("creator", "c1")
    with pytest.raises(EventValidationError) as info:
        parse_event({"user_id": "u", "type": "retract"}, app="a", rules=rules)
    assert "event_id" in fields(info.value)["target"]
    with pytest.raises(EventValidationError) as info:
        parse_event({"user_id": "u", "type": "like", "scope": "category", "target": "x"}, app="a", rules=rules)
    assert "report" in fields(info.value)["scope"]


def test_telemetry_reads_negative_feedback_from_the_service_table():
    counters = SimpleNamespace(events_accepted=0, recommendations=0, by_type={})
    clock = SimpleNamespace(t=0.0)
    default = Telemetry(counters, clock=lambda: clock.t)
    flipped = Telemetry(counters, clock=lambda: clock.t, types=Settings(type_weights={"view": -1.0}).types())
    counters.by_type = {"view": 3, "skip": 1}
    clock.t = 1.0
    assert default.feedback()["negative_share"] == 0.25
    assert flipped.feedback()["negative_share"] == 1.0


# Modules allowed to spell out several event types together, and why.
LITERAL_TYPE_GROUPS_ALLOWED = {
    "events.py": "the type table itself",
    "demo.py": "the demo's simulated users choose which events to send",
}


def literal_type_groups(source: str) -> list[tuple[int, list[str]]]:
    """(line, names) of each tuple / list / set of string constants naming two or more event types."""
    out = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, (ast.Tuple, ast.List, ast.Set)) and node.elts and all(
            isinstance(e, ast.Constant) and isinstance(e.value, str) for e in node.elts
        ):
            names = sorted({e.value for e in node.elts} & VOCABULARY.names)
            if len(names) >= 2:
                out.append((node.lineno, names))
    return out


def test_the_scan_finds_literal_groups():
    src = 'A = ("like", "share")\nif t in {"skip", "dislike", "x"}: pass\nB = ("like", x)\nC = ["user", "rating"]\n'
    assert literal_type_groups(src) == [(1, ["like", "share"]), (2, ["dislike", "skip"])]


def test_event_type_groups_are_named_in_events_py_only():
    root = Path(liverec.__file__).parent
    found = []
    for path in sorted(root.rglob("*.py")):
        rel = path.relative_to(root).as_posix()
        if rel in LITERAL_TYPE_GROUPS_ALLOWED:
            continue
        found += [f"{rel}:{line} {names}" for line, names in literal_type_groups(path.read_text())]
    assert not found, "spelled-out event type groups; use the role sets of liverec.events:\n" + "\n".join(found)
    for rel in LITERAL_TYPE_GROUPS_ALLOWED.keys() - {"events.py"}:
        path = root / rel
        assert path.exists() and literal_type_groups(path.read_text()), f"{rel} needs no exception any more: drop it"
