"""A small synthetic interaction log with a known sequential pattern (tests, smoke runs).

Every user walks the catalog in steps of +1 from a random start (item ``k`` is followed by item
``k + 1``, wrapping around), rating each item 1-5 at random, one event every 60 s. A sequence
model that learns the pattern ranks the true next item first; popularity cannot.

>>> log = sequential_log(n_users=4, n_items=10, seed=0)
>>> log.seqs.n_users, log.n_items <= 10
(4, True)
"""

from __future__ import annotations

import numpy as np

from liverec.evaluation.protocol import InteractionLog, build_log


def sequential_log(n_users: int = 120, n_items: int = 30, min_len: int = 8, max_len: int = 20,
                   seed: int = 0) -> InteractionLog:
    """An :class:`InteractionLog` following the +1 pattern; item texts are "item <k> group <k % 3>"."""
    rng = np.random.default_rng(seed)
    users, items, ts, values = [], [], [], []
    for u in range(n_users):
        start = int(rng.integers(0, n_items))
        n = int(rng.integers(min_len, max_len + 1))
        for k in range(n):
            users.append(f"u{u}")
            items.append(f"i{(start + k) % n_items}")
            ts.append(1_000_000.0 + 60.0 * k)
            values.append(float(rng.integers(1, 6)))
    texts = {f"i{k}": f"item {k} group {k % 3}" for k in range(n_items)}
    return build_log("sequential", np.array(users, dtype=object), np.array(items, dtype=object), np.array(ts),
                     values=np.array(values), item_text=texts)
