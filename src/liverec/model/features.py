"""Per-event input features of the sequence model: event type, feedback value and time gap.

Every position of a user's sequence is one event. Besides the item it carries three small
categorical features, each with its own learned embedding in the Transformer:

* the event **type** id (``view``, ``rating``, ``skip``, ... see :data:`EVENT_TYPES`);
* the **value** bucket: 0 = no value, otherwise the value rounded to the nearest half star
  of a 0-5 scale (1..11);
* the **gap** bucket: log2-bucketed seconds since the user's previous event (0 = first event).

Which events are *targets* (what the model learns to predict) is a property of the type:
positive engagement (view, click, purchase, rating, like, ...) is a target; negative feedback
(skip, dislike, block) and text-only events (search, tag) are input, and negative feedback gives
the loss items not to recommend (:mod:`liverec.model.negatives`). A rating, whatever its value, is
an interaction (a target); a low one is negative feedback only where a training run says so
(``NegativeFeedback.low_rating``).

>>> gap_bucket(np.array([-1.0, 0.0, 1.0, 3600.0]))
array([ 0,  1,  2, 13], dtype=int8)
>>> value_bucket(np.array([np.nan, 1.0, 4.5]))
array([ 0,  3, 10], dtype=int8)
"""

from __future__ import annotations

import numpy as np

from liverec.events import DEFAULT_TYPES, IN_SEQUENCE, NEGATIVE, POSITIVE

#: Event types the model knows, in the order of the default type table, which is fixed (the id
#: is the index + 1; 0 is padding): trained models hold one embedding row per id.
EVENT_TYPES: tuple[str, ...] = tuple(DEFAULT_TYPES)
TYPE_IDS: dict[str, int] = {name: i + 1 for i, name in enumerate(EVENT_TYPES)}
N_TYPES = len(EVENT_TYPES) + 2  # + padding (0) + unknown type (last id)
UNKNOWN_TYPE = N_TYPES - 1

#: Types the model is trained to predict (positive engagement with an item). The default table's
#: polarity, not a deployment's: what a model predicts is fixed when it is trained.
TARGET_TYPES: frozenset[str] = POSITIVE
#: Types of negative feedback on an item: input, and in the loss items not to recommend.
NEGATIVE_TYPES: frozenset[str] = NEGATIVE & IN_SEQUENCE
#: Types that never enter the sequence (they say nothing about the user's taste).
NON_SEQUENCE_TYPES: frozenset[str] = frozenset(DEFAULT_TYPES) - IN_SEQUENCE

N_VALUE_BUCKETS = 12  # 0 = no value, 1..11 = 0.0, 0.5, ..., 5.0
N_GAP_BUCKETS = 32  # 0 = first event, 1 = same second, 2.. = 2 + floor(log2(gap))


def type_id(name: str) -> int:
    """The type id of an event type name (unknown names share one id)."""
    return TYPE_IDS.get(name, UNKNOWN_TYPE)


def is_target_type(type_ids: np.ndarray) -> np.ndarray:
    """Boolean mask: which type ids are prediction targets."""
    lut = np.zeros(N_TYPES, dtype=bool)
    for name in TARGET_TYPES:
        lut[TYPE_IDS[name]] = True
    return lut[np.asarray(type_ids, dtype=np.int64)]


def is_negative_type(type_ids: np.ndarray) -> np.ndarray:
    """Boolean mask: which type ids are negative feedback on an item (skip, dislike, block): not
    targets, but items not to recommend (:mod:`liverec.model.negatives`)."""
    lut = np.zeros(N_TYPES, dtype=bool)
    for name in NEGATIVE_TYPES:
        lut[TYPE_IDS[name]] = True
    return lut[np.asarray(type_ids, dtype=np.int64)]


def value_bucket(values: np.ndarray) -> np.ndarray:
    """Bucket feedback values (NaN = none) to 0..11: half-star steps of a 0-5 scale."""
    v = np.asarray(values, dtype=np.float64)
    out = np.zeros(v.shape, dtype=np.int8)
    ok = np.isfinite(v)
    out[ok] = (np.clip(np.rint(v[ok] * 2.0), 0, 10) + 1).astype(np.int8)
    return out


def gap_bucket(gaps: np.ndarray) -> np.ndarray:
    """Bucket seconds since the previous event; a negative gap marks the first event (0)."""
    g = np.asarray(gaps, dtype=np.float64)
    out = np.zeros(g.shape, dtype=np.int8)
    out[g == 0] = 1
    pos = g > 0
    out[pos] = np.clip(2 + np.floor(np.log2(np.maximum(g[pos], 1.0))), 2, N_GAP_BUCKETS - 1).astype(np.int8)
    return out


def gaps_from_timestamps(timestamps: np.ndarray, offsets: np.ndarray) -> np.ndarray:
    """Seconds since the previous event of the same user (-1 at each user's first event).

    ``timestamps`` is flat, ``offsets`` (U+1,) delimits the users' runs.
    """
    ts = np.asarray(timestamps, dtype=np.float64)
    gaps = np.empty_like(ts)
    gaps[1:] = ts[1:] - ts[:-1]
    starts = np.asarray(offsets[:-1], dtype=np.int64)
    starts = starts[starts < len(ts)]
    gaps[starts] = -1.0
    return np.maximum(gaps, -1.0) if len(ts) else gaps
