"""Importers: MovieLens (ML-latest layout, shared copy) and generic files."""

import json

import pytest

from liverec.events import EventValidationError
from liverec.importers import import_events, import_items, import_movielens, read_movielens_ratings
from liverec.store import open_store

from .conftest import shared_data


def test_movielens_latest_small_counts(tmp_path):
    path = shared_data("ml-latest-small")
    store = open_store(f"sqlite:///{tmp_path}/db.sqlite")
    report = import_movielens(store, path, progress=False)
    assert report.items == 9742
    assert report.events_read == 100_836 + 3_683
    assert store.events.count() == 100_836 + 3_683
    again = import_movielens(store, path, progress=False)  # idempotent: ids come from the data
    assert again.events_accepted == 0 and again.events_duplicate == report.events_read
    by_type: dict[str, int] = {}
    last_ts = -1.0
    for _, e in store.events.scan():
        by_type[e.type] = by_type.get(e.type, 0) + 1
        assert e.timestamp >= last_ts  # the log is in time order
        last_ts = e.timestamp
    assert by_type == {"rating": 100_836, "tag": 3_683}
    toy = store.catalog.get("default", "1")
    assert toy.title == "Toy Story (1995)" and "Animation" in toy.categories


def test_movielens_1m_layout_reader():
    path = shared_data("ml-1m")
    frame = read_movielens_ratings(path)
    assert len(frame) == 1_000_072 and frame["user"].nunique() == 6040 and frame["item"].nunique() == 3674


def test_generic_events_jsonl_and_csv(tmp_path):
    store = open_store(f"sqlite:///{tmp_path}/db.sqlite")
    jl = tmp_path / "events.jsonl"
    jl.write_text("\n".join(json.dumps(e) for e in [
        {"user_id": "u", "item_id": "a", "type": "view", "timestamp": 1},
        {"user_id": "u", "type": "search", "text": "jazz", "timestamp": 2},
    ]))
    assert import_events(store, jl, progress=False).events_accepted == 2
    csv = tmp_path / "events.csv"
    csv.write_text("user_id,item_id,timestamp,value\nu,a,3,4.5\nv,b,2001-01-01T00:00:00Z,\n")
    assert import_events(store, csv, progress=False).events_accepted == 2
    types = [e.type for _, e in store.events.scan()]
    assert types == ["view", "search", "rating", "view"]


def test_generic_events_bad_row_names_line_and_stores_nothing(tmp_path):
    store = open_store(f"sqlite:///{tmp_path}/db.sqlite")
    csv = tmp_path / "events.csv"
    csv.write_text("user_id,item_id,timestamp,type\nu,a,3,view\nu,a,3,teleport\n")
    with pytest.raises(EventValidationError) as info:
        import_events(store, csv, progress=False)
    assert info.value.errors[0].field == "line 3: type"
    assert store.events.count() == 0


def test_generic_items_csv(tmp_path):
    store = open_store(f"sqlite:///{tmp_path}/db.sqlite")
    csv = tmp_path / "items.csv"
    csv.write_text("item_id,title,text,categories,creator\na,Alpha,About a,X|Y,ann\n")
    assert import_items(store, csv).items == 1
    item = store.catalog.get("default", "a")
    assert item.categories == ("X", "Y") and item.attributes == {"creator": "ann"}
