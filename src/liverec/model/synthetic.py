"""Synthetic data for tests, smoke runs and benchmarks.

:func:`clustered_catalog`: a Transformer of any catalog size whose item vectors fall into topic
clusters, as trained ones do (retrieval tests and the million-item benchmark).

:func:`sequential_log`: a small interaction log with a known sequential pattern.

Every user walks the catalog in steps of +1 from a random start (item ``k`` is followed by item
``k + 1``, wrapping around), rating each item 1-5 at random, one event every 60 s. A sequence
model that learns the pattern ranks the true next item first; popularity cannot.

>>> log = sequential_log(n_users=4, n_items=10, seed=0)
>>> log.seqs.n_users, log.n_items <= 10
(4, True)
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import torch

from liverec.evaluation.protocol import InteractionLog, build_log
from liverec.model.transformer import FeedbackTransformer, ModelConfig


@dataclass
class ClusteredCatalog:
    """A model over ``n_items`` items and the topic cluster of each item (``labels``, (N,))."""

    model: FeedbackTransformer
    labels: np.ndarray  # (N,) int64 cluster of item position k (model row k + 1)
    item_ids: list[str]
    _by_cluster: list[np.ndarray] | None = field(default=None, init=False, repr=False)

    def history(self, rng: np.random.Generator, length: int, topics: int = 2) -> list[str]:
        """Item ids a user interacted with: ``length`` items from ``topics`` random clusters."""
        members = self._members()
        picked = rng.choice(len(members), size=topics, replace=False)
        pool = np.concatenate([members[c] for c in picked])
        return [self.item_ids[k] for k in rng.choice(pool, size=length)]

    def _members(self) -> list[np.ndarray]:
        cached = self._by_cluster
        if cached is None:
            order = np.argsort(self.labels, kind="stable")
            bounds = np.searchsorted(self.labels[order], np.arange(self.labels.max() + 2))
            cached = [order[bounds[c]:bounds[c + 1]] for c in range(len(bounds) - 1) if bounds[c + 1] > bounds[c]]
            self._by_cluster = cached
        return cached


def clustered_catalog(n_items: int, *, clusters: int = 1000, d_model: int = 64, n_blocks: int = 2, max_len: int = 200,
                      text_dim: int = 0, spread: float = 0.35, seed: int = 0) -> ClusteredCatalog:
    """A :class:`FeedbackTransformer` with untrained blocks (scores do not depend on how the
    weights were learned, only on their shapes) whose item vectors are clustered like trained ones.

    With ``text_dim`` the items get unit text vectors around ``clusters`` random topic directions
    (``spread``: the noise around them) in the model's text buffer, a text projection that keeps
    their structure and small ID embeddings (an item mostly known by its text); without it the ID
    embeddings themselves are clustered (unit vectors: the norm of the ID embeddings'
    initialisation, std 1/sqrt(d) per dimension). The output bias falls with a Zipf-like
    popularity rank. Items are ``"i<k>"``.

    >>> cat = clustered_catalog(500, clusters=10, d_model=16, n_blocks=1, max_len=8)
    >>> cat.model.cfg.n_items, len(set(cat.labels.tolist())), len(cat.history(np.random.default_rng(0), 5))
    (500, 10, 5)
    """
    rng = np.random.default_rng(seed)
    torch.manual_seed(seed)
    labels = rng.integers(0, clusters, n_items)
    cfg = ModelConfig(n_items=n_items, d_model=d_model, n_blocks=n_blocks, max_len=max_len, text_dim=text_dim,
                      use_request_gap=True, dropout=0.0)
    model = FeedbackTransformer(cfg).eval()
    dim = text_dim or d_model
    centres = rng.normal(size=(clusters, dim)).astype(np.float32)
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    with torch.no_grad():
        target = model.item_text if text_dim else model.item_emb.weight
        step = 1 << 16
        for a in range(0, n_items, step):  # in slices: a million 384-d rows are 1.5 GB
            b = min(n_items, a + step)
            v = centres[labels[a:b]] + rng.normal(size=(b - a, dim)).astype(np.float32) * (spread / math.sqrt(dim))
            v /= np.linalg.norm(v, axis=1, keepdims=True)
            target[a + 1:b + 1] = torch.from_numpy(v)
        if text_dim:
            assert model.text_proj is not None
            model.text_proj.weight.normal_(std=1.0 / math.sqrt(text_dim))
            model.item_emb.weight[1:].normal_(std=0.02)
        rank = rng.permutation(n_items)
        model.out_bias.copy_(torch.from_numpy((-0.1 * np.log1p(rank)).astype(np.float32)))
        model.rep_type.fill_(-2.0)  # items already seen move down, as a model trained on ratings learns
    return ClusteredCatalog(model, labels.astype(np.int64), [f"i{k}" for k in range(n_items)])


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
