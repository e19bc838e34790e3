"""The offline protocol: load an interaction log, order it, and split it leave-one-out.

Protocol (ML-1M and any log in the generic import format):

1. Every rating / positive engagement is an interaction; no rating threshold.
2. Each user's events are sorted by timestamp, ties kept in file order (stable sort).
3. Leave-one-out: the user's last target event is the **test** position, the one before it the
   **validation** position (model selection only), everything before that is **training** data.
   A target event is one of the positive-engagement types (see
   :data:`liverec.model.features.TARGET_TYPES`); on ML-1M every event is a rating, so this is the
   plain "last item / second-to-last item" split. Negative feedback and search events before a
   held-out position are model input only; events after the test position are not used.
   Users with fewer than three target events are not evaluated; their events are training data.
4. Model inputs are at most the ``max_len`` (200) most recent events before the predicted
   position; ranking is over ALL catalog items (items that occur in the log).
5. The request time of a held-out position is its event's timestamp (a recommendation is asked
   for when the user comes back); a model may read how long after the newest input event that
   is, never which item it is (see :func:`liverec.model.data.next_gap_buckets`).

Multi-item future (set metrics, :func:`future_split`), a separate split of the same log: each
user's last ``N`` target events (:data:`N_FUTURE` = 5, by time) are the **future set**, the target
event before them the validation position, everything before that training data. Models and
baselines recommend once, from the events before the future set (request time: the first future
event's timestamp), and precision/recall/F1@10 compare that top-10 list with the future set's
distinct items (:func:`liverec.evaluation.metrics.set_metrics`). Users with fewer than ``N + 2``
target events are not evaluated; their events are training data.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from liverec.model.data import Sequences, Windows, input_windows
from liverec.model.features import NON_SEQUENCE_TYPES, TARGET_TYPES, TYPE_IDS, is_target_type, type_id

PROTOCOL = (
    "leave-one-out per user (stable sort by timestamp, ties in file order; last target event = test, "
    "second-to-last = validation); max sequence length 200; full ranking over all items"
)


@dataclass(frozen=True)
class InteractionLog:
    """A sorted interaction log: per-user sequences plus id tables and item texts.

    ``seqs.items`` are 1-based indices into ``item_ids``; ``item_texts[i-1]`` is item i's text
    ("" when unknown); ``event_texts`` holds the text of search/review events (``seqs.text_ids``).
    """

    name: str
    user_ids: np.ndarray  # (U,) object (str)
    item_ids: np.ndarray  # (N,) object (str)
    seqs: Sequences
    item_texts: list[str]
    event_texts: list[str]
    source_fingerprint: str

    @property
    def n_items(self) -> int:
        return len(self.item_ids)


@dataclass(frozen=True)
class Split:
    """Leave-one-out split of an :class:`InteractionLog`."""

    train: Sequences  # every user's events before the validation position
    eval_users: np.ndarray  # (V,) user rows that have validation + test positions
    valid_windows: Windows  # (V, T) inputs before the validation position
    valid_targets: np.ndarray  # (V,) 1-based items
    test_windows: Windows  # (V, T) inputs before the test position (include the validation event)
    test_targets: np.ndarray  # (V,) 1-based items
    test_prefix: Sequences  # every user's events before the test position (for baselines)
    valid_values: np.ndarray | None = None  # (V,) float32 feedback value of the validation event (NaN: none)
    test_values: np.ndarray | None = None  # (V,) float32 feedback value of the test event (NaN: none)

    def seen_items(self) -> np.ndarray:
        """(V, L) every item each evaluated user interacted with before the test position
        (1-based, 0 = padding): what the ``seen_filtered`` variant removes from the ranking."""
        p = self.test_prefix
        lengths = p.lengths()[self.eval_users]
        out = np.zeros((len(self.eval_users), max(int(lengths.max(initial=0)), 1)), dtype=np.int32)
        for r, u in enumerate(self.eval_users):
            items = p.items[p.offsets[u]:p.offsets[u + 1]]
            out[r, :len(items)] = items
        return out


@dataclass(frozen=True)
class FutureSplit(Split):
    """The multi-item-future split: ``test_*`` is the request before the future set (its
    ``test_targets`` the first future item), ``future`` every evaluated user's future items."""

    future: np.ndarray = None  # type: ignore[assignment]  # (V, N) 1-based items, in time order


def _file_hash(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()[:16]


def build_log(
    name: str,
    users: np.ndarray,
    items: np.ndarray,
    timestamps: np.ndarray,
    types: np.ndarray | None = None,
    values: np.ndarray | None = None,
    event_texts: np.ndarray | None = None,
    item_text: dict[str, str] | None = None,
    fingerprint: str = "",
) -> InteractionLog:
    """Order raw parallel arrays (in file order) into an :class:`InteractionLog`.

    ``items`` entries may be empty/None for item-less events (search). ``types`` are type names
    (default ``rating`` when values are given, else ``view``).
    """
    n = len(users)
    users = np.asarray(users).astype(str)
    ts = np.asarray(timestamps, dtype=np.float64)
    if types is None:
        types = np.full(n, "rating" if values is not None else "view", dtype=object)
    types = np.asarray(types).astype(str)
    keep = ~np.isin(types, list(NON_SEQUENCE_TYPES)) & np.isfinite(ts)
    item_col = pd.Series(items, dtype=object)
    has_item = item_col.notna().to_numpy() & (item_col.astype(str).str.len() > 0).to_numpy()
    keep &= has_item | (types == "search")
    users, ts, types = users[keep], ts[keep], types[keep]
    item_str = item_col.astype(str).to_numpy()[keep]
    has_item = has_item[keep]
    vals = np.full(len(users), np.nan, np.float32) if values is None else np.asarray(values, np.float64)[keep].astype(np.float32)
    etext = None if event_texts is None else np.asarray(event_texts, dtype=object)[keep]

    user_codes, user_ids = pd.factorize(pd.Series(users), sort=False)
    uniq_items = np.unique(item_str[has_item])
    # numeric ids sort numerically (ML-1M movie ids), others lexicographically
    try:
        uniq_items = uniq_items[np.argsort(uniq_items.astype(np.int64), kind="stable")]
    except ValueError:
        pass
    item_index = {s: i + 1 for i, s in enumerate(uniq_items)}
    item_codes = np.array([item_index[s] if h else 0 for s, h in zip(item_str, has_item)], dtype=np.int32)
    # stable: user (first appearance order), then timestamp, ties in file order
    order = np.lexsort((np.arange(len(users)), ts, user_codes))
    uc = user_codes[order]
    lengths = np.bincount(uc, minlength=len(user_ids))
    offsets = np.zeros(len(user_ids) + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    texts: list[str] = []
    text_ids = np.full(len(order), -1, dtype=np.int32)
    if etext is not None:
        et = etext[order]
        for j, s in enumerate(et):
            if isinstance(s, str) and s:
                text_ids[j] = len(texts)
                texts.append(s)
    seqs = Sequences(
        offsets=offsets,
        items=item_codes[order],
        types=np.array([type_id(t) for t in types[order]], dtype=np.int8),
        values=vals[order],
        timestamps=ts[order],
        text_ids=text_ids,
    )
    item_text = item_text or {}
    return InteractionLog(
        name=name,
        user_ids=np.asarray(user_ids, dtype=object),
        item_ids=np.asarray(uniq_items, dtype=object),
        seqs=seqs,
        item_texts=[item_text.get(str(s), "") for s in uniq_items],
        event_texts=texts,
        source_fingerprint=fingerprint or seqs.fingerprint(),
    )


def load_movielens(path: str | Path) -> InteractionLog:
    """Load ML-1M (``ratings.dat`` + optional ``movies.dat``, latin-1) from a directory."""
    root = Path(path)
    ratings = root / "ratings.dat" if root.is_dir() else root
    root = ratings.parent
    # "::" separated: read with ":" and keep every second column (C parser, fast)
    df = pd.read_csv(ratings, sep=":", header=None, usecols=[0, 2, 4, 6], engine="c",
                     names=["u", "_a", "i", "_b", "r", "_c", "t"], dtype={"u": np.int64, "i": np.int64, "r": np.float64, "t": np.float64})
    item_text: dict[str, str] = {}
    movies = root / "movies.dat"
    if movies.exists():
        with open(movies, encoding="latin-1") as f:
            for line in f:
                parts = line.rstrip("\n").split("::")
                if len(parts) >= 3:
                    item_text[parts[0]] = f"{parts[1]}. {parts[2].replace('|', ', ')}"
    return build_log(
        "ml-1m", df["u"].to_numpy(), df["i"].astype(str).to_numpy(), df["t"].to_numpy(),
        types=None, values=df["r"].to_numpy(), item_text=item_text, fingerprint=_file_hash(ratings),
    )


def _parse_times(col: pd.Series) -> np.ndarray:
    num = pd.to_numeric(col, errors="coerce")
    if num.notna().all():
        return num.to_numpy(dtype=np.float64)
    dt = pd.to_datetime(col, utc=True, errors="coerce")
    if dt.isna().any():
        bad = col[dt.isna()].iloc[0]
        raise ValueError(f"timestamp {bad!r}: expected epoch seconds or an ISO-8601 time")
    return (dt.astype("int64") / 1e9).to_numpy()


def log_name(events: str | Path) -> str:
    """A log's name from its file: the stem without ``.csv``/``.gz``, or the folder's name when
    the file has a generic name (``genrec-food/interactions.csv.gz`` -> ``genrec-food``).

    >>> log_name("data/genrec-food/interactions.csv.gz"), log_name("shop.csv")
    ('genrec-food', 'shop')
    """
    p = Path(events)
    stem = p.name
    for suffix in (".gz", ".bz2", ".zst", ".xz", ".zip", ".csv"):
        stem = stem.removesuffix(suffix)
    if stem in ("interactions", "events", "ratings") and p.parent.name:
        return p.parent.name
    return stem


#: MovieLens CSV column names read as the generic format's (``ratings.csv``, ``movies.csv``).
EVENT_COLUMN_ALIASES = {"userId": "user_id", "movieId": "item_id", "rating": "value"}
ITEM_COLUMN_ALIASES = {"movieId": "item_id", "genres": "categories"}


def load_events_csv(events: str | Path, items: str | Path | None = None) -> InteractionLog:
    """Load the generic import format.

    events CSV: ``user_id, item_id, timestamp[, type, value, text]`` (timestamp: epoch seconds or
    ISO-8601); items CSV: ``item_id, title[, text, categories]``. MovieLens CSVs (``userId,
    movieId, rating, timestamp``; ``movieId, title, genres``) read as they are. Either may be compressed
    (``.gz``, ``.bz2``, ``.zip``, ``.xz``, ``.zst``: read as they are, by the file's suffix).
    """
    head = pd.read_csv(events, nrows=0).columns
    names = {c: EVENT_COLUMN_ALIASES.get(c, c) for c in head if EVENT_COLUMN_ALIASES.get(c, c) not in head}
    ids = {c for c in head if names.get(c, c) in ("user_id", "item_id")}
    df = pd.read_csv(events, dtype={c: str for c in ids}, keep_default_na=False,
                     na_values={c: [""] for c in head if names.get(c, c) == "value"}).rename(columns=names)
    missing = {"user_id", "item_id", "timestamp"} - set(df.columns)
    if missing:
        raise ValueError(f"{events}: missing columns {sorted(missing)}; expected user_id, item_id, timestamp[, type, value]")
    types = df["type"].astype(str).to_numpy() if "type" in df.columns else None
    if types is not None:
        unknown = sorted(set(types) - set(TYPE_IDS))
        if unknown:
            raise ValueError(f"{events}: unknown event types {unknown[:5]}; expected one of {sorted(TYPE_IDS)}")
    values = pd.to_numeric(df["value"], errors="coerce").to_numpy() if "value" in df.columns else None
    if types is None and values is not None:
        types = np.where(np.isfinite(values), "rating", "view")
    item_text: dict[str, str] = {}
    if items is not None:
        it = pd.read_csv(items, dtype=str, keep_default_na=False)
        it = it.rename(columns={c: ITEM_COLUMN_ALIASES[c] for c in it.columns
                                if c in ITEM_COLUMN_ALIASES and ITEM_COLUMN_ALIASES[c] not in it.columns})
        if "categories" in it.columns:
            it["categories"] = it["categories"].str.replace("|", ", ", regex=False)
        if "item_id" not in it.columns:
            raise ValueError(f"{items}: missing column item_id; expected item_id, title[, text, categories]")
        for row in it.itertuples(index=False):
            d = row._asdict()
            parts = [d.get("title", ""), d.get("text", "")]
            text = ". ".join(p for p in parts if p)
            if d.get("categories"):
                text = f"{text} ({d['categories']})" if text else d["categories"]
            item_text[str(d["item_id"])] = text
    etext = df["text"].to_numpy() if "text" in df.columns else None
    return build_log(
        log_name(events), df["user_id"].to_numpy(), df["item_id"].replace("", None).to_numpy(),
        _parse_times(df["timestamp"]), types=types, values=values, event_texts=etext,
        item_text=item_text, fingerprint=_file_hash(Path(events)),
    )


def _select(seqs: Sequences, keep: np.ndarray) -> Sequences:
    user_of = np.repeat(np.arange(seqs.n_users), seqs.lengths())
    lengths = np.bincount(user_of[keep], minlength=seqs.n_users)
    offsets = np.zeros(seqs.n_users + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    return Sequences(offsets, seqs.items[keep], seqs.types[keep], seqs.values[keep],
                     seqs.timestamps[keep], seqs.text_ids[keep])


def _at(values: np.ndarray, pos: np.ndarray) -> np.ndarray:
    """values[pos] per user, NaN where pos is -1 (user not evaluated)."""
    return np.where(pos >= 0, values[np.maximum(pos, 0)], np.nan)


def _held_out(seqs: Sequences, n_held: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per user: the validation position, the first held-out position (-1 where the user has
    fewer than ``n_held + 2`` target events) and the (U, n_held) held-out items, in time order."""
    tgt = is_target_type(seqs.types) & (seqs.items > 0)
    n_users = seqs.n_users
    first_held = np.full(n_users, -1, dtype=np.int64)
    valid_pos = np.full(n_users, -1, dtype=np.int64)
    held = np.zeros((n_users, n_held), dtype=np.int64)
    for u in range(n_users):
        s, e = int(seqs.offsets[u]), int(seqs.offsets[u + 1])
        pos = np.nonzero(tgt[s:e])[0]
        if len(pos) >= n_held + 2:
            first_held[u], valid_pos[u] = s + pos[-n_held], s + pos[-n_held - 1]
            held[u] = seqs.items[s + pos[-n_held:]]
    return valid_pos, first_held, held


def _cut(seqs: Sequences, valid_pos: np.ndarray, test_pos: np.ndarray, max_len: int) -> dict:
    """The fields of a :class:`Split` whose validation and test requests are at these positions."""
    idx = np.arange(seqs.n_events)
    user_of = np.repeat(np.arange(seqs.n_users), seqs.lengths())
    evaluated = test_pos >= 0
    big = np.iinfo(np.int64).max
    train = _select(seqs, idx < np.where(evaluated, valid_pos, big)[user_of])
    before_test = _select(seqs, idx < np.where(evaluated, test_pos, big)[user_of])
    eval_users = np.nonzero(evaluated)[0]
    return dict(
        train=train,
        eval_users=eval_users,
        valid_windows=input_windows(train, max_len, eval_users, request_times=_at(seqs.timestamps, valid_pos)),
        valid_targets=seqs.items[valid_pos[eval_users]].astype(np.int64),
        test_windows=input_windows(before_test, max_len, eval_users, request_times=_at(seqs.timestamps, test_pos)),
        test_targets=seqs.items[test_pos[eval_users]].astype(np.int64),
        test_prefix=before_test,
    )


def leave_one_out(log: InteractionLog, max_len: int = 200) -> Split:
    """Split ``log`` as described in the module docstring."""
    seqs = log.seqs
    valid_pos, test_pos, _ = _held_out(seqs, 1)
    fields = _cut(seqs, valid_pos, test_pos, max_len)
    users = fields["eval_users"]
    return Split(**fields, valid_values=seqs.values[valid_pos[users]], test_values=seqs.values[test_pos[users]])


N_FUTURE = 5


def future_split(log: InteractionLog, n_future: int = N_FUTURE, max_len: int = 200) -> FutureSplit:
    """Split ``log`` for set metrics: each user's last ``n_future`` target events are the future
    set (see the module docstring)."""
    if n_future < 1:
        raise ValueError(f"n_future={n_future}: expected at least 1")
    valid_pos, first_future, future = _held_out(log.seqs, n_future)
    fields = _cut(log.seqs, valid_pos, first_future, max_len)
    return FutureSplit(**fields, future=future[fields["eval_users"]])


__all__ = ["PROTOCOL", "N_FUTURE", "FutureSplit", "future_split", "log_name", "InteractionLog", "Split", "build_log", "load_movielens", "load_events_csv", "leave_one_out", "TARGET_TYPES"]
