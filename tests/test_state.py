"""Online state is a pure fold: live application == rebuild from the log (after a restart)."""

import gc

from hypothesis import given, settings
from hypothesis import strategies as st

from liverec.config import Settings
from liverec.runtime.compose import build_service
from liverec.service import Service
from liverec.events import Event
from liverec.state import StateStore, export_states, states_from_columns

USERS = ["u1", "u2", "u3"]
ITEMS = ["i1", "i2", "i3", "i4", "i5"]
TYPES = ["view", "click", "purchase", "rating", "like", "dislike", "skip", "block", "unblock", "impression", "search", "undo"]


@st.composite
def raw_events(draw):
    kind = draw(st.sampled_from(TYPES))
    raw = {"user_id": draw(st.sampled_from(USERS)), "type": kind, "timestamp": draw(st.integers(0, 10_000)),
           "event_id": f"e{draw(st.integers(0, 60))}"}
    if kind == "search":
        raw["text"] = "query"
    elif kind == "undo":
        raw["target"] = f"e{draw(st.integers(0, 60))}"
    elif kind in ("block", "unblock", "dislike") and draw(st.booleans()):
        raw["scope"], raw["target"] = "category", draw(st.sampled_from(["A", "B"]))
    else:
        raw["item_id"] = draw(st.sampled_from(ITEMS))
    if kind == "rating":
        raw["value"] = draw(st.sampled_from([1.0, 3.5, 5.0]))
    return raw


@settings(max_examples=40, deadline=None)
@given(batches=st.lists(st.lists(raw_events(), min_size=1, max_size=8), min_size=1, max_size=8),
       apps=st.lists(st.sampled_from(["default", "other"]), min_size=8, max_size=8))
def test_live_apply_equals_rebuild_after_restart(tmp_path_factory, batches, apps):
    data_dir = tmp_path_factory.mktemp("fold")
    config = Settings(data_dir=data_dir, sequence_length=4)
    live = build_service(config)
    live.start()
    for batch, app in zip(batches, apps):
        live.ingest(app, batch)
    expected = live.state.snapshot()
    live.close()

    restarted = build_service(config)
    restarted.start()
    assert restarted.state.snapshot() == expected
    restarted.close()


def test_reads_never_create_state():
    store = StateStore()
    assert store.get("default", "ghost") is None
    assert store.count() == 0


def test_sequences_leave_the_collectors_walk():
    """Sequence entries are exact tuples of atoms, which the cyclic collector stops tracking after
    one pass: a full pass of a serving process must not walk every event its users have made."""
    store = StateStore()
    store.apply_batch([Event("default", f"e{k}", f"u{k % 3}", "rating" if k % 2 else "search", float(k),
                             item_id=f"i{k}" if k % 2 else None, value=4.0 if k % 2 else None,
                             text=None if k % 2 else "a query") for k in range(30)])
    rebuilt = states_from_columns(export_states(store.items()), 200)
    gc.collect()
    for states in (dict(store.items()), rebuilt):
        sequences = [state.sequence for state in states.values()]
        assert sum(map(len, sequences)) == 30
        assert not any(gc.is_tracked(entry) for seq in sequences for entry in seq)
