"""Bulk import of standard file formats into a store (run while no server holds the data dir).

- MovieLens, both official layouts: ML-1M/10M (``ratings.dat``, ``movies.dat``, ``::``-separated,
  latin-1) and ML-latest/20M/25M (``ratings.csv``, ``movies.csv``, ``tags.csv``). Ratings become
  ``rating`` events, tags ``tag`` text events, movies items (genres as categories). Events are
  written in global time order with ties kept in file order (a stable sort), so the log order is
  the order the evaluation protocol uses. Event ids are derived from the data, so importing the
  same files twice stores nothing new.
- Generic events: JSON lines (one event object per line) or CSV with a header row naming event
  fields (``user_id,item_id,timestamp[,type,value,text,...]``; no ``type`` column: ``rating`` where
  a value is given, else ``view``).
- Generic items: JSON lines or CSV (``item_id,title[,text,categories,...]``; categories separated by
  ``|``).
"""

from __future__ import annotations

import csv
import gzip
import io
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import pandas as pd

from .catalog import parse_item
from .events import Event, EventRules, EventValidationError, FieldError, parse_event
from .store.base import Item, Store

CHUNK = 50_000


@dataclass
class ImportReport:
    events_read: int = 0
    events_accepted: int = 0
    events_duplicate: int = 0
    items: int = 0
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def _progress(total: int, desc: str, enabled: bool):
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit="ev", unit_scale=True, disable=not enabled)


def _append_chunks(store: Store, events: list[Event], report: ImportReport, progress: bool, desc: str) -> None:
    with _progress(len(events), desc, progress) as bar:
        for start in range(0, len(events), CHUNK):
            chunk = events[start:start + CHUNK]
            result = store.events.append(chunk)
            report.events_accepted += len(result.accepted)
            report.events_duplicate += result.duplicates
            bar.update(len(chunk))
    report.events_read += len(events)


def _open_text(path: Path, encoding: str = "utf-8") -> io.TextIOBase:
    if path.suffix == ".gz":
        return io.TextIOWrapper(gzip.open(path, "rb"), encoding=encoding)
    return open(path, encoding=encoding, newline="")


# ---- MovieLens -------------------------------------------------------------------------------

def movielens_layout(path: Path) -> str:
    """``"dat"`` (ML-1M/10M) or ``"csv"`` (ML-latest/20M/25M), from the files present."""
    if (path / "ratings.dat").exists():
        return "dat"
    if (path / "ratings.csv").exists():
        return "csv"
    raise FileNotFoundError(f"{path}: no ratings.dat (ML-1M/10M layout) or ratings.csv (ML-latest/20M/25M layout)")


def read_movielens_ratings(path: Path) -> pd.DataFrame:
    """Ratings as a frame with columns user, item, rating, ts (strings for ids), in file order."""
    layout = movielens_layout(path)
    if layout == "dat":
        frame = _read_dat(path / "ratings.dat", ["user", "item", "rating", "ts"])
    else:
        frame = pd.read_csv(path / "ratings.csv", dtype={"userId": str, "movieId": str, "rating": float, "timestamp": "int64"})
        frame.columns = ["user", "item", "rating", "ts"]
    return frame


def _read_dat(path: Path, names: list[str]) -> pd.DataFrame:
    """A ``::``-separated MovieLens file (fast path: '::' -> one-char separator)."""
    raw = path.read_bytes().decode("latin-1").replace("::", "\t")
    frame = pd.read_csv(io.StringIO(raw), sep="\t", header=None, names=names, dtype=str, quoting=csv.QUOTE_NONE)
    if "rating" in frame:
        frame["rating"] = frame["rating"].astype(float)
    if "ts" in frame:
        frame["ts"] = frame["ts"].astype("int64")
    return frame


def read_movielens_items(path: Path, app: str) -> list[Item]:
    layout = movielens_layout(path)
    if layout == "dat":
        movies = _read_dat(path / "movies.dat", ["item", "title", "genres"])
    else:
        movies = pd.read_csv(path / "movies.csv", dtype=str)
        movies.columns = ["item", "title", "genres"]
    items = []
    for item, title, genres in movies.itertuples(index=False):
        categories = tuple(g for g in str(genres).split("|") if g and g != "(no genres listed)")
        year = title[-5:-1] if title.endswith(")") and title[-5:-1].isdigit() else None
        text = f"{title}. Genres: {', '.join(categories)}." if categories else title
        items.append(Item(app, item, title, text, categories, {"year": year} if year else {}))
    return items


def import_movielens(store: Store, path: str | Path, app: str = "default", progress: bool = True) -> ImportReport:
    """Import a MovieLens folder (either layout). Returns counts."""
    import time

    start = time.perf_counter()
    path = Path(path)
    report = ImportReport()
    items = read_movielens_items(path, app)
    report.items = store.catalog.upsert(items)

    ratings = read_movielens_ratings(path)
    frames = [pd.DataFrame({
        "user": ratings["user"], "item": ratings["item"], "ts": ratings["ts"].astype("int64"),
        "value": ratings["rating"], "text": None, "kind": "rating",
        "eid": "ml-r:" + ratings["user"] + ":" + ratings["item"],
    })]
    if movielens_layout(path) == "csv" and (path / "tags.csv").exists():
        tags = pd.read_csv(path / "tags.csv", dtype={"userId": str, "movieId": str, "tag": str, "timestamp": "int64"})
        tags = tags.dropna(subset=["tag"])
        frames.append(pd.DataFrame({
            "user": tags["userId"], "item": tags["movieId"], "ts": tags["timestamp"], "value": np.nan,
            "text": tags["tag"], "kind": "tag", "eid": "ml-t:" + tags.index.astype(str),
        }))
    frame = pd.concat(frames, ignore_index=True)
    frame = frame.sort_values("ts", kind="stable")  # ties keep file order
    events = [
        Event(app=app, event_id=eid, user_id=user, type=kind, timestamp=float(ts), item_id=item,
              value=None if value != value else float(value), text=text)
        for user, item, ts, value, text, kind, eid in frame.itertuples(index=False)
    ]
    _append_chunks(store, events, report, progress, "importing MovieLens")
    report.seconds = time.perf_counter() - start
    return report


# ---- generic files ---------------------------------------------------------------------------

def _rows(path: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    """(line number, object) from JSON lines or a CSV with a header."""
    name = path.name[:-3] if path.name.endswith(".gz") else path.name
    with _open_text(path) as handle:
        if name.endswith((".jsonl", ".ndjson", ".json")):
            for line_no, line in enumerate(handle, start=1):
                if line.strip():
                    try:
                        yield line_no, json.loads(line)
                    except json.JSONDecodeError as exc:
                        raise EventValidationError([FieldError(f"line {line_no}", line.strip()[:80], f"a JSON object ({exc})")]) from None
        elif name.endswith((".csv", ".tsv")):
            reader = csv.DictReader(handle, delimiter="\t" if name.endswith(".tsv") else ",")
            for line_no, row in enumerate(reader, start=2):
                yield line_no, {k: v for k, v in row.items() if k is not None and v not in (None, "")}
        else:
            raise ValueError(f"{path}: expected .jsonl, .csv or .tsv (optionally .gz)")


def _csv_event(row: dict[str, Any]) -> dict[str, Any]:
    """Coerce CSV strings to the JSON types the event schema expects."""
    out = dict(row)
    if "value" in out:
        try:
            out["value"] = float(out["value"])
        except ValueError:
            pass
    if "timestamp" in out:
        try:
            out["timestamp"] = float(out["timestamp"])
        except ValueError:
            pass  # ISO-8601 strings are parsed by the schema
    if "context" in out:
        try:
            out["context"] = json.loads(out["context"])
        except json.JSONDecodeError:
            pass
    if "type" not in out:
        out["type"] = "rating" if "value" in out else "view"
    return out


def import_events(store: Store, path: str | Path, app: str = "default", rules: EventRules | None = None,
                  progress: bool = True) -> ImportReport:
    """Import an events file; every row is validated first, and a bad row aborts the import
    (nothing stored) with its line number."""
    import time

    start = time.perf_counter()
    path = Path(path)
    is_csv = ".csv" in path.name or ".tsv" in path.name
    events: list[Event] = []
    for line_no, row in _rows(path):
        raw = _csv_event(row) if is_csv else row
        try:
            events.append(parse_event(raw, app=app, rules=rules, now=time.time()))
        except EventValidationError as exc:
            raise EventValidationError([FieldError(f"line {line_no}: {e.field}", e.value, e.expected) for e in exc.errors]) from None
    report = ImportReport()
    _append_chunks(store, events, report, progress, f"importing {path.name}")
    report.seconds = time.perf_counter() - start
    return report


def import_items(store: Store, path: str | Path, app: str = "default") -> ImportReport:
    """Import an items file (JSON lines or CSV); categories in CSV are ``|``-separated."""
    import time

    start = time.perf_counter()
    path = Path(path)
    is_csv = ".csv" in path.name or ".tsv" in path.name
    items: list[Item] = []
    for line_no, row in _rows(path):
        raw = dict(row)
        if is_csv:
            if "categories" in raw:
                raw["categories"] = [c for c in str(raw["categories"]).split("|") if c]
            attributes = {k: raw.pop(k) for k in list(raw) if k not in ("item_id", "title", "text", "categories")}
            if attributes:
                raw["attributes"] = attributes
        try:
            items.append(parse_item(raw, app=app))
        except EventValidationError as exc:
            raise EventValidationError([FieldError(f"line {line_no}: {e.field}", e.value, e.expected) for e in exc.errors]) from None
    report = ImportReport(items=store.catalog.upsert(items))
    report.seconds = time.perf_counter() - start
    return report
