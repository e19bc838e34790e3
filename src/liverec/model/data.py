"""Ragged per-user event sequences as numpy arrays, and the fixed-length windows the model reads.

A :class:`Sequences` holds every user's events flat, in time order, with ``offsets`` delimiting
users (CSR layout). Items are 1-based indices into the model's item vocabulary (0 = no item,
e.g. a search event). Windows are **left-padded** to a fixed length ``T``: the most recent event
is always at index ``T - 1``, so position embeddings count back from the newest event.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np

from liverec.model.features import gap_bucket, gaps_from_timestamps, is_negative_type, is_target_type, value_bucket


@dataclass(frozen=True)
class Sequences:
    """Every user's event sequence, flat (CSR). Arrays share the event axis ``E``.

    Attributes:
        offsets: (U+1,) int64, user ``u`` owns events ``offsets[u]:offsets[u+1]``.
        items: (E,) int32 1-based item index, 0 for events without an item.
        types: (E,) int8 type id (see :mod:`liverec.model.features`).
        values: (E,) float32 feedback value, NaN when none.
        timestamps: (E,) float64 epoch seconds.
        text_ids: (E,) int32 row of an event-text vector table (search/review text), -1 when none.
    """

    offsets: np.ndarray
    items: np.ndarray
    types: np.ndarray
    values: np.ndarray
    timestamps: np.ndarray
    text_ids: np.ndarray

    @property
    def n_users(self) -> int:
        return len(self.offsets) - 1

    @property
    def n_events(self) -> int:
        return int(self.offsets[-1])

    def lengths(self) -> np.ndarray:
        return np.diff(self.offsets)

    def fingerprint(self) -> str:
        """A short content hash (sha256) of the arrays, for manifests."""
        h = hashlib.sha256()
        for arr in (self.offsets, self.items, self.types, self.values, self.timestamps, self.text_ids):
            h.update(np.ascontiguousarray(arr).tobytes())
        return h.hexdigest()[:16]

    def truncate_last(self, k: int) -> Sequences:
        """Drop each user's last ``k`` events (users with fewer keep nothing)."""
        lengths = np.maximum(self.lengths() - k, 0)
        keep = np.zeros(self.n_events, dtype=bool)
        for u in range(self.n_users):
            s = self.offsets[u]
            keep[s:s + lengths[u]] = True
        offsets = np.zeros(self.n_users + 1, dtype=np.int64)
        np.cumsum(lengths, out=offsets[1:])
        return Sequences(
            offsets, self.items[keep], self.types[keep], self.values[keep],
            self.timestamps[keep], self.text_ids[keep],
        )

    @staticmethod
    def from_lists(
        items: list[list[int]],
        types: list[list[int]] | None = None,
        values: list[list[float]] | None = None,
        timestamps: list[list[float]] | None = None,
    ) -> Sequences:
        """Build from per-user python lists (tests, small data).

        Defaults: type id 1 (``view``), no value, one event per second.

        >>> Sequences.from_lists([[3, 1], [2]]).offsets.tolist()
        [0, 2, 3]
        """
        lengths = np.array([len(s) for s in items], dtype=np.int64)
        offsets = np.zeros(len(items) + 1, dtype=np.int64)
        np.cumsum(lengths, out=offsets[1:])
        n = int(offsets[-1])

        def flat(parts: list[list] | None, dtype: type, default: float) -> np.ndarray:
            if parts is None or n == 0:
                return np.full(n, default, dtype=dtype)
            return np.concatenate([np.asarray(p, dtype=dtype) for p in parts])

        if timestamps is None:
            ts = np.concatenate([np.arange(k, dtype=np.float64) for k in lengths]) if n else np.zeros(0)
        else:
            ts = flat(timestamps, np.float64, 0.0)
        return Sequences(
            offsets=offsets,
            items=flat(items, np.int32, 0),
            types=flat(types, np.int8, 1),
            values=flat(values, np.float32, np.nan),
            timestamps=ts,
            text_ids=np.full(n, -1, dtype=np.int32),
        )


@dataclass(frozen=True)
class Windows:
    """Left-padded fixed-length model inputs. All arrays are (N, T).

    ``targets[n, t]`` is the item to predict after reading positions ``..t`` (0 = no target).
    """

    items: np.ndarray  # (N, T) int64
    types: np.ndarray  # (N, T) int64
    values: np.ndarray  # (N, T) int64 value buckets
    gaps: np.ndarray  # (N, T) int64 gap buckets
    text_ids: np.ndarray  # (N, T) int64, -1 = none
    targets: np.ndarray  # (N, T) int64
    #: (N, T) int64 gap bucket from each event to the *next* request: the following event inside
    #: the window, and the time the recommendation is asked for after the newest one (0 = unknown).
    next_gaps: np.ndarray | None = None
    #: (N, T) int64 the item of the event after each position when that event is negative feedback
    #: (skip, dislike, block: no target, but an item not to recommend there), 0 otherwise; and its type
    next_negative: np.ndarray | None = None
    next_negative_type: np.ndarray | None = None

    def __len__(self) -> int:
        return self.items.shape[0]

    def select(self, idx: np.ndarray) -> Windows:
        return Windows(*(None if getattr(self, f) is None else getattr(self, f)[idx] for f in WINDOW_FIELDS))


WINDOW_FIELDS = ("items", "types", "values", "gaps", "text_ids", "targets", "next_gaps", "next_negative",
                 "next_negative_type")


def concat_windows(parts: list[Windows]) -> Windows:
    """Stack windows row-wise (``next_gaps`` kept only when every part has it)."""
    def cat(f: str) -> np.ndarray | None:
        arrs = [getattr(p, f) for p in parts]
        return None if any(a is None for a in arrs) else np.concatenate(arrs)
    return Windows(*(cat(f) for f in WINDOW_FIELDS))


def next_gap_buckets(seqs: Sequences, request_times: np.ndarray | None = None) -> np.ndarray:
    """(E,) gap bucket from each event to the user's next event; a user's newest event gets the
    bucket of ``request_times[u] - its timestamp`` (0 = unknown when no request time is given).

    The request time is known when a recommendation is asked for ("now" in the service, the
    held-out event's time offline): it tells a continuing session from a return after months.
    """
    ts = seqs.timestamps
    if seqs.n_events == 0:
        return np.zeros(0, dtype=np.int8)
    nxt = np.empty_like(ts)
    nxt[:-1] = ts[1:] - ts[:-1]
    last = seqs.offsets[1:] - 1
    has = seqs.lengths() > 0
    nxt[last[has]] = -1.0
    out = gap_bucket(np.maximum(nxt, 0.0))
    if request_times is None:
        out[last[has]] = 0
    else:
        rt = np.asarray(request_times, dtype=np.float64)[has]
        out[last[has]] = gap_bucket(np.maximum(rt - ts[last[has]], 0.0))
    return out


def _encoded(seqs: Sequences) -> tuple[np.ndarray, np.ndarray]:
    """Flat value and gap buckets for all events."""
    return value_bucket(seqs.values), gap_bucket(gaps_from_timestamps(seqs.timestamps, seqs.offsets))


def input_windows(
    seqs: Sequences, max_len: int, users: np.ndarray | None = None, request_times: np.ndarray | None = None
) -> Windows:
    """The last ``max_len`` events of each user as one left-padded window (no targets).

    This is what the model reads to recommend *after* the user's last event; ``request_times``
    (one per user of ``seqs``, optional) is when that recommendation is asked for.
    """
    users = np.arange(seqs.n_users) if users is None else np.asarray(users)
    vb, gb = _encoded(seqs)
    nb = next_gap_buckets(seqs, request_times)
    n = len(users)
    out = {k: np.zeros((n, max_len), dtype=np.int64) for k in ("items", "types", "values", "gaps", "targets", "next_gaps")}
    text = np.full((n, max_len), -1, dtype=np.int64)
    for row, u in enumerate(users):
        s, e = int(seqs.offsets[u]), int(seqs.offsets[u + 1])
        s = max(s, e - max_len)
        k = e - s
        if k == 0:
            continue
        out["items"][row, -k:] = seqs.items[s:e]
        out["types"][row, -k:] = seqs.types[s:e]
        out["values"][row, -k:] = vb[s:e]
        out["gaps"][row, -k:] = gb[s:e]
        out["next_gaps"][row, -k:] = nb[s:e]
        text[row, -k:] = seqs.text_ids[s:e]
    return Windows(out["items"], out["types"], out["values"], out["gaps"], text, out["targets"], out["next_gaps"])


def training_windows(seqs: Sequences, max_len: int, stride: int | None = None) -> Windows:
    """Next-event training windows: inputs are events ``j..j+T-1``, targets events ``j+1..j+T``.

    Only target-type events with an item are targets (negative feedback and search are input
    only). With ``stride=None`` each user gives one window (the most recent ``max_len`` + 1
    events); with a stride, earlier parts of long histories give extra windows ending every
    ``stride`` events, so no training event is left unused.
    """
    vb, gb = _encoded(seqs)
    nb = next_gap_buckets(seqs)
    tgt_ok = is_target_type(seqs.types) & (seqs.items > 0)
    neg_ok = is_negative_type(seqs.types) & (seqs.items > 0)
    # (start, end) of each window's input events; its targets are events start+1 .. end.
    # A user's windows are listed newest first; ``first_new`` is the first input index whose
    # target no newer window of the same user has used already (overlaps count once).
    spans: list[tuple[int, int, int]] = []
    for u in range(seqs.n_users):
        s, e = int(seqs.offsets[u]), int(seqs.offsets[u + 1])
        if e - s < 2:
            continue
        end = e - 1
        covered = end
        while True:
            start = max(s, end - max_len)
            spans.append((start, end, min(covered, end)))
            covered = start
            if stride is None or start == s:
                break
            end -= stride
            if end - s < 1:
                break
    n = len(spans)
    items = np.zeros((n, max_len), dtype=np.int64)
    types = np.zeros_like(items)
    values = np.zeros_like(items)
    gaps = np.zeros_like(items)
    next_gaps = np.zeros_like(items)
    text = np.full_like(items, -1)
    targets = np.zeros_like(items)
    next_negative = np.zeros_like(items)
    next_negative_type = np.zeros_like(items)
    for row, (start, end, covered) in enumerate(spans):
        k = end - start
        items[row, -k:] = seqs.items[start:end]
        types[row, -k:] = seqs.types[start:end]
        values[row, -k:] = vb[start:end]
        gaps[row, -k:] = gb[start:end]
        next_gaps[row, -k:] = nb[start:end]
        text[row, -k:] = seqs.text_ids[start:end]
        t = seqs.items[start + 1:end + 1].astype(np.int64) * tgt_ok[start + 1:end + 1]
        t[covered - start:] = 0
        targets[row, -k:] = t
        neg = neg_ok[start + 1:end + 1]
        next_negative[row, -k:] = seqs.items[start + 1:end + 1] * neg
        next_negative_type[row, -k:] = seqs.types[start + 1:end + 1] * neg
    return Windows(items, types, values, gaps, text, targets, next_gaps, next_negative, next_negative_type)
