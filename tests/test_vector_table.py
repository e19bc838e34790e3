"""VectorTable neighbours: cached per table, carried to a table that appends rows, and always
equal to a fresh exact search."""

from __future__ import annotations

import numpy as np

from liverec.ranking.vectors import VectorTable, _normalise


def _table(matrix: np.ndarray, carry: VectorTable | None = None) -> VectorTable:
    return VectorTable({f"i{r}": r for r in range(len(matrix))}, _normalise(matrix), "model", carry=carry)


def _exact(table: VectorTable, item: str, k: int) -> list[str]:
    sims = table.matrix @ table.matrix[table.index[item]]
    sims[table.index[item]] = -np.inf
    return [table.ids[j] for j in np.argsort(-sims, kind="stable")[:k]]


def test_neighbours_are_cached_and_exact():
    rng = np.random.default_rng(0)
    table = _table(rng.normal(size=(300, 16)).astype(np.float32))
    first = table.neighbours("i7", 10)
    assert [i for i, _ in first] == _exact(table, "i7", 10)
    assert table.neighbours("i7", 10) is first  # the second ask is the cached list
    assert [i for i, _ in table.neighbours("i7", 3)] == _exact(table, "i7", 3)


def test_appended_rows_join_the_carried_lists():
    rng = np.random.default_rng(1)
    base = rng.normal(size=(200, 8)).astype(np.float32)
    old = _table(base)
    before = [i for i, _ in old.neighbours("i5", 10)]
    # a new item almost identical to i5, and one unrelated
    grown_m = np.vstack([base, base[5] + 0.01, rng.normal(size=(1, 8))]).astype(np.float32)
    grown = _table(grown_m, carry=old)
    assert grown._near is old._near  # same rows first: the cache carries over
    after = [i for i, _ in grown.neighbours("i5", 10)]
    assert after == _exact(grown, "i5", 10)
    assert after[0] == "i200" and after[1:] == before[:9]
    # the old table, still serving in-flight requests, never uses the longer table's list
    assert [i for i, _ in old.neighbours("i5", 10)] == before


def test_changed_rows_start_a_fresh_cache():
    rng = np.random.default_rng(2)
    base = rng.normal(size=(50, 8)).astype(np.float32)
    old = _table(base)
    old.neighbours("i1", 5)
    changed = base.copy()
    changed[3] = -changed[3]
    fresh = _table(changed, carry=old)
    assert fresh._near is not old._near
    assert [i for i, _ in fresh.neighbours("i1", 5)] == _exact(fresh, "i1", 5)
