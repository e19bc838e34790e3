import math

import pytest

from liverec.events import EventRules, EventValidationError, parse_batch, parse_event, parse_timestamp


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
    assert parse_timestamp("2000-01-01T00:00:00") == 946684800.0
    assert parse_timestamp("2000-01-01T01:00:00+01:00") == 946684800.0
    assert parse_timestamp("946684800") == 946684800.0
    assert parse_timestamp(True) is None
