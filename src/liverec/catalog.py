"""Item records: validation of raw input and the in-memory catalog index the request path reads."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping, Sequence

import numpy as np

from .events import ID_SCHEMA, MAX_ID_LEN, MAX_TEXT_LEN, EventValidationError, FieldError, FieldSpec, id_text, object_schema
from .recommend.scoring import TableMemo
from .store.base import Item


MAX_TITLE_LEN = 1000

ITEM_FIELD_SPECS: dict[str, FieldSpec] = {
    "item_id": FieldSpec(ID_SCHEMA, "The item's id (an integer id is read as its decimal text)", required=True),
    "title": FieldSpec({"type": "string", "maxLength": MAX_TITLE_LEN}, "Shown to users; default empty", nullable=False),
    "text": FieldSpec({"type": "string", "maxLength": MAX_TEXT_LEN}, "Description the text encoder reads; default empty", nullable=False),
    "categories": FieldSpec({"type": "array", "items": {"type": "string", "minLength": 1}},
                            "Category names (scoped feedback and filters use them); default none", nullable=False),
    "attributes": FieldSpec({"type": "object"}, "Any other attributes (creator, ...): each is a scope for feedback", nullable=False),
}


def item_schema(*, omit: tuple[str, ...] = ()) -> dict[str, Any]:
    """The JSON Schema of a raw item: what :func:`parse_item` accepts (``omit``: fields a route
    takes from elsewhere, the URL's ``item_id``).

    >>> item_schema()["required"], item_schema(omit=("item_id",))["required"]
    (['item_id'], [])
    """
    return object_schema(ITEM_FIELD_SPECS, omit=omit, title="Item")


def parse_item(raw: Any, *, app: str, prefix: str = "", item_id: str | None = None, now: float | None = None) -> Item:
    """Validate one raw item object (:data:`ITEM_FIELD_SPECS`). ``item_id`` (from the URL)
    overrides/must match the body."""
    errors: list[FieldError] = []
    if not isinstance(raw, Mapping):
        raise EventValidationError([FieldError(prefix.rstrip(".") or "body", raw, "a JSON object (an item)")])
    for key in raw:
        if key not in ITEM_FIELD_SPECS:
            errors.append(FieldError(prefix + str(key), raw[key], f"no such field; known: {', '.join(ITEM_FIELD_SPECS)}"))
    body_id = raw.get("item_id")
    if item_id is not None and body_id is not None and id_text(body_id) != item_id:
        errors.append(FieldError(prefix + "item_id", body_id, f"'{item_id}' (the id in the URL) or absent"))
    the_id = item_id if item_id is not None else id_text(body_id)
    if the_id is None or len(the_id) > MAX_ID_LEN:
        errors.append(FieldError(prefix + "item_id", body_id if item_id is None else item_id,
                                 f"a string of 1 to {MAX_ID_LEN} characters or a 64-bit integer"))
    title = raw.get("title", "")
    if not isinstance(title, str) or len(title) > MAX_TITLE_LEN:
        errors.append(FieldError(prefix + "title", title, f"a string of at most {MAX_TITLE_LEN} characters"))
    text = raw.get("text", "")
    if not isinstance(text, str) or len(text) > MAX_TEXT_LEN:
        errors.append(FieldError(prefix + "text", text, f"a string of at most {MAX_TEXT_LEN} characters"))
    categories = raw.get("categories", [])
    if not isinstance(categories, list) or not all(isinstance(c, str) and c for c in categories):
        errors.append(FieldError(prefix + "categories", categories, "a list of non-empty strings"))
    attributes = raw.get("attributes", {})
    if not isinstance(attributes, Mapping):
        errors.append(FieldError(prefix + "attributes", attributes, "a JSON object"))
    if errors:
        raise EventValidationError(errors)
    return Item(app, the_id, title, text, tuple(dict.fromkeys(categories)), dict(attributes), now or time.time())  # type: ignore[arg-type]


def encoder_text(item: Item) -> str:
    """The text the model's sentence encoder reads for an item: its title, text and categories
    (empty when it has none). Training, serving and the online learner read the same.

    >>> encoder_text(Item("a", "m1", title="Heat", text="A heist.", categories=("Crime", "Drama")))
    'Heat. A heist. (Crime, Drama)'
    """
    text = ". ".join(p for p in (item.title, item.text) if p)
    if item.categories:
        text = f"{text} ({', '.join(item.categories)})" if text else ", ".join(item.categories)
    return text


def parse_items(raws: Iterable[Any], *, app: str) -> list[Item]:
    """All-or-nothing validation of a batch of items."""
    items: list[Item] = []
    errors: list[FieldError] = []
    for i, raw in enumerate(raws):
        try:
            items.append(parse_item(raw, app=app, prefix=f"items[{i}]."))
        except EventValidationError as exc:
            errors.extend(exc.errors)
    if errors:
        raise EventValidationError(errors[:100])
    return items


@dataclass(frozen=True)
class CategoryMatrix:
    """Which items of an app are in which category: ``member[row[item_id], col[category]]``."""

    row: dict[str, int]
    col: dict[str, int]
    names: list[str]
    member: np.ndarray  # (N, G) bool
    # a scorer's id table -> its rows here, once per table object (see ``of_table``)
    _tables: TableMemo[np.ndarray] = field(init=False, compare=False, repr=False)
    # a scorer's id table -> per category, the table positions of its items (see ``in_table``)
    _columns: TableMemo[list[np.ndarray]] = field(init=False, compare=False, repr=False)

    def __post_init__(self) -> None:
        get = self.row.get
        object.__setattr__(self, "_tables", TableMemo(lambda table: np.array([get(i, -1) for i in table.tolist()], dtype=np.int64)))
        object.__setattr__(self, "_columns", TableMemo(lambda table: [np.flatnonzero(c) for c in self.of_table(table).T]))

    @staticmethod
    def of_items(items: Sequence[Item]) -> CategoryMatrix:
        """The membership of ``items`` (rows in their order, columns in name order)."""
        names = sorted({c for item in items for c in item.categories})
        col = {c: g for g, c in enumerate(names)}
        member = np.zeros((len(items), len(names)), dtype=bool)
        for r, item in enumerate(items):
            for c in item.categories:
                member[r, col[c]] = True
        return CategoryMatrix({item.item_id: r for r, item in enumerate(items)}, col, names, member)

    def in_table(self, table: np.ndarray, category: int) -> np.ndarray:
        """The positions in ``table`` (a scorer's id table) of the items in column ``category``,
        ascending; kept per table object, like :meth:`of_table`'s lookup."""
        return self._columns(table)[category]

    def of(self, item_ids: Sequence[str] | np.ndarray) -> np.ndarray:
        """(K, G) membership of ``item_ids`` in row order (unknown items: no category)."""
        get = self.row.get
        return self._of_rows(np.array([get(i, -1) for i in item_ids], dtype=np.int64))

    def of_table(self, table: np.ndarray, index: np.ndarray | None = None) -> np.ndarray:
        """``of(table[index])`` (``of(table)`` without an index), the table's rows looked up once
        per table object: a scorer's candidates map to categories without a pass over their ids."""
        rows = self._tables(table)
        return self._of_rows(rows if index is None else rows[index])

    def with_item(self, item_id: str, categories: Sequence[str]) -> CategoryMatrix | None:
        """This membership with ``item_id`` (new: the last row; known: its row) in exactly
        ``categories``, as a rebuild from the catalog would have it (columns in name order, rows
        in catalog order); ``None`` when a category loses its last item (rebuild instead). A new
        object: readers keep the one they hold."""
        names, col, member = self.names, self.col, self.member
        new = sorted(set(categories) - col.keys())
        if new:
            names = sorted([*names, *new])
            col = {c: g for g, c in enumerate(names)}
            grown = np.zeros((len(member), len(names)), dtype=bool)  # (N, G')
            grown[:, [col[c] for c in self.names]] = member
            member = grown
        else:
            member = member.copy()
        row = self.row
        r = row.get(item_id)
        if r is None:
            r = len(member)
            row = {**row, item_id: r}
            member = np.vstack([member, np.zeros((1, len(names)), dtype=bool)])
        left = np.flatnonzero(member[r]).tolist()  # its categories before
        member[r] = False
        for c in categories:
            member[r, col[c]] = True
        if left and not member[:, left].any(axis=0).all():
            return None
        return CategoryMatrix(row, col, names, member)

    def _of_rows(self, rows: np.ndarray) -> np.ndarray:
        if len(self.member) == 0 or len(rows) == 0:
            return np.zeros((len(rows), len(self.names)), dtype=bool)
        out = self.member[np.maximum(rows, 0)]
        unknown = rows < 0
        if unknown.any():
            out[unknown] = False
        return out


class CatalogIndex:
    """All apps' items in memory (the request path never waits on storage)."""

    def __init__(self) -> None:
        self._items: dict[str, dict[str, Item]] = {}
        self._lock = threading.Lock()
        self._matrices: dict[str, CategoryMatrix] = {}  # app -> cached membership (dropped on change)
        self._versions: dict[str, int] = {}  # app -> catalog changes so far

    def load(self, items: Iterable[Item]) -> None:
        for item in items:
            self.put(item)

    def put(self, item: Item) -> None:
        with self._lock:
            items = self._items.setdefault(item.app, {})
            before = items.get(item.item_id)
            items[item.item_id] = item
            # the cached membership follows the item (a rebuild walks the whole catalog, and
            # items are upserted while serving)
            cached = self._matrices.pop(item.app, None)
            if cached is not None:
                if before is not None and set(before.categories) == set(item.categories):
                    self._matrices[item.app] = cached
                else:
                    grown = cached.with_item(item.item_id, item.categories)
                    if grown is not None:
                        self._matrices[item.app] = grown
            self._versions[item.app] = self._versions.get(item.app, 0) + 1

    def get(self, app: str, item_id: str) -> Item | None:
        items = self._items.get(app)
        return items.get(item_id) if items is not None else None

    def items(self, app: str) -> list[Item]:
        return list(self._items.get(app, {}).values())

    def count(self, app: str) -> int:
        return len(self._items.get(app, {}))

    def categories(self, app: str) -> dict[str, int]:
        counts: dict[str, int] = {}
        for item in self._items.get(app, {}).values():
            for c in item.categories:
                counts[c] = counts.get(c, 0) + 1
        return counts

    def category_matrix(self, app: str) -> CategoryMatrix:
        """The app's item x category membership, built once per catalog change."""
        cached = self._matrices.get(app)
        if cached is not None:
            return cached
        with self._lock:
            items = list(self._items.get(app, {}).values())
            version = self._versions.get(app, 0)
        built = CategoryMatrix.of_items(items)
        with self._lock:
            if self._versions.get(app, 0) == version:  # no item changed while it was built
                self._matrices[app] = built
        return built
