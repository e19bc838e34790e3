"""The scorer seam of the pipeline: what any model must offer the service.

A scorer sees every committed event (``observe``; incremental models update counters there) and,
at request time, scores candidates for a user's *current* state (``score``). The co-occurrence
baseline (:mod:`liverec.recommend.cooccurrence`) and the Transformer
(:mod:`liverec.model.scorer`) both implement it.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from typing import Callable, Generic, Protocol, Sequence, TypeVar, runtime_checkable

import numpy as np

from ..events import Event
from ..state import UserState
from ..store.base import Item


@dataclass(frozen=True, slots=True)
class Scored:
    """Scores for a candidate set: ``item_ids[k]`` has ``scores[k]`` (higher is better).

    A scorer whose candidates are a subset of an id table it keeps between requests says so with
    ``table`` and ``index`` (``item_ids == table[index]``), so later stages map ids through what
    they derived from that table once (:func:`table_positions`) instead of through every id of
    every request. Without them, ``item_ids`` itself is the table (a scorer that scores all items
    returns the same array each time)."""

    item_ids: np.ndarray  # (K,) object array of str
    scores: np.ndarray  # (K,) float32
    table: np.ndarray | None = None  # (N,) the scorer's id table, the same object between requests
    index: np.ndarray | None = None  # (K,) with ``table``: positions of ``item_ids`` in it
    # (D,) the user vector the scores came from (the Transformer's state after the user's newest
    # event), where the scorer has one: the learned exploration policy reads its cosine with items
    user: np.ndarray | None = None

    @property
    def partial(self) -> bool:
        """Whether the candidates are a part of the scorer's table (retrieved, not every item)."""
        return self.index is not None and self.table is not None and len(self.index) < len(self.table)

    @staticmethod
    def empty() -> "Scored":
        return Scored(np.empty(0, dtype=object), np.empty(0, dtype=np.float32))

    def base(self) -> tuple[np.ndarray, np.ndarray | None]:
        """(table, index) with ``item_ids == table[index]``; index ``None``: ``item_ids`` is the table."""
        return (self.table, self.index) if self.table is not None else (self.item_ids, None)

    def scores_of(self, ids: Sequence[str], default: float) -> np.ndarray:
        """(len(ids),) float64 scores of ``ids``, ``default`` where the scorer gave none."""
        table, index = self.base()
        pos = table_positions(table)
        at = np.fromiter((pos.get(i, -1) for i in ids), dtype=np.int64, count=len(ids))
        if index is not None and len(index):  # table position -> candidate position
            # by search in the sorted candidates: a pool of a large catalog is a small part of it
            order = np.argsort(index, kind="stable")
            ranked = index[order]
            p = np.minimum(np.searchsorted(ranked, at), len(ranked) - 1)
            at = np.where((at >= 0) & (ranked[p] == at), order[p], -1)
        elif index is not None:
            at = np.full(len(at), -1, dtype=np.int64)
        return np.where(at >= 0, self.scores[np.maximum(at, 0)].astype(np.float64), default)


T = TypeVar("T")


class TableMemo(Generic[T]):
    """What ``build`` derives from an id table, kept per table object (a scorer replaces its
    table, never changes it in place; the memo holds the table, so its identity is not reused).
    The ``keep`` most recent tables are kept."""

    def __init__(self, build: Callable[[np.ndarray], T], keep: int = 8) -> None:
        self._build, self._keep = build, keep
        self._memo: OrderedDict[int, tuple[np.ndarray, T]] = OrderedDict()

    def __call__(self, table: np.ndarray) -> T:
        hit = self._memo.get(id(table))
        if hit is not None and hit[0] is table:
            return hit[1]
        value = self._build(table)
        self._memo[id(table)] = (table, value)
        while len(self._memo) > self._keep:
            self._memo.popitem(last=False)
        return value

    def __len__(self) -> int:
        return len(self._memo)


#: ``{item_id: position}`` of an id table
table_positions: TableMemo[dict[str, int]] = TableMemo(lambda table: {str(i): k for k, i in enumerate(table.tolist())}, keep=16)


class Scorer(Protocol):
    """A model behind the pipeline."""

    name: str

    def observe(self, app: str, event: Event) -> None:
        """Called for every committed event, in log order (after the user state was updated)."""

    def forget_user(self, app: str, events: Sequence[Event]) -> None:
        """Remove what ``events`` (one deleted user's, in log order) contributed, where the
        scorer keeps per-event statistics."""

    def serves(self, app: str) -> bool:
        """Whether the scorer has a model for ``app`` (else the pipeline's fallback answers)."""

    def score(self, app: str, state: UserState | None, n: int) -> Scored:
        """Score candidates for a user (``None``: no history). ``n`` is how many the caller will
        show; a scorer may return more (the policy stage filters some out)."""

    def similar(self, app: str, item_id: str, n: int) -> list[tuple[str, float]]:
        """Items most similar to ``item_id``, best first (excluding the item itself)."""


@runtime_checkable
class FollowsCatalog(Protocol):
    """A scorer that serves catalog items it was not trained on (a model that places an item from
    its text): it is handed every item upsert as the process folds it from the log."""

    def items_changed(self, app: str, items: Sequence[Item]) -> None:
        """Items upserted (new, or changed), folded from the log in commit order."""

    def prepare_items(self, app: str, items: Sequence[Item]) -> None:
        """Items about to be upserted by this process (before the upsert commits): work every
        process's :meth:`items_changed` would repeat can be done once here and shared."""
