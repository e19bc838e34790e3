"""The Transformer behind the service's :class:`~liverec.recommend.scoring.Scorer` seam.

At request time the user's *current* sequence (the online state, including an event that arrived
a moment ago) is encoded and every item the model knows is scored by a dot product with the
cached item vectors (exact, no candidate pre-selection). Items added with text only
(:meth:`TransformerScorer.add_items`: a catalog item the model was not trained on, the moment its
upsert is folded) get a zero ID embedding and their text vector through the model's learned text
projection, so they are scored and have similar items from the first second (cold start). They
extend the scorer's item matrix, not the model: :meth:`TransformerScorer.export` writes a model
with their rows (what training and the online learner register).

A catalog of at least ``AnnConfig.threshold`` items is retrieved approximately instead
(:mod:`liverec.recommend.retrieval`): the user vector ``[h, 1]`` searches an index of the rows
``[E[i], b[i]]`` (so the inner product is the model's score without the repeat term) for a pool a
few times larger than the caller needs; the pool plus the items of the sequence (whose repeat
term can lift them) are then scored exactly, and the pipeline's filters and ranking stages work on
that pool. Similar items come from a second index over the unit item vectors (cosine). Items
added later join both indexes (incremental); a new version builds its own.

Several users can be scored in one forward pass (:meth:`score_many`); it gives the same scores as
one-by-one scoring (tested).

The text of search, tag and review events is encoded on the event path (:meth:`observe`) and at
start (:meth:`warm_texts`), never inside a request: a request only looks the vectors up.
"""

from __future__ import annotations

import copy
import time
import weakref
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
import torch

from liverec.events import Event
from liverec.batching import MicroBatcher
from liverec.model.features import gap_bucket, type_id, value_bucket
from liverec.model.text import TextEncoder, TextVectorMemo
from liverec.model.transformer import FeedbackTransformer, ModelConfig
from liverec.recommend.retrieval import AnnConfig, ItemIndex
from liverec.recommend.scoring import Scored
from liverec.state import ITEM, TEXT, TIMESTAMP, TYPE, VALUE, UserState


class TransformerScorer:
    """Serves one trained :class:`FeedbackTransformer` for one app.

    Args:
        app: the tenant this model was trained for (other apps get empty results).
        model: the trained model (put in eval mode).
        item_ids: item ids in model row order (row ``k + 1`` is ``item_ids[k]``).
        version: registry version name (reported by the stats endpoint).
        text_encoder: encodes search/review text of events in the sequence and the text of items
            added later (needed only when the model has text features).
        metrics: evaluation metrics of this version (for the dashboard).
        text_cache_dir: directory of the on-disk text vector cache, so that event text encoded
            once is reused after a restart and by other worker processes (None: memory only).
        text_vectors: event text vectors to share with another scorer of the same encoder
            (default: a new, empty store).
        ann: when catalogs are retrieved approximately (None: always exact).
        build_index: build the indexes of a catalog retrieved approximately now (else call
            :meth:`build_index` later, e.g. in the background; requests are exact until then).
    """

    name = "transformer"

    def __init__(
        self,
        app: str,
        model: FeedbackTransformer,
        item_ids: Sequence[str],
        version: str | None = None,
        text_encoder: TextEncoder | None = None,
        metrics: dict | None = None,
        *,
        text_cache_dir: str | Path | None = None,
        text_vectors: TextVectorMemo | None = None,
        ann: AnnConfig | None = None,
        build_index: bool = True,
    ) -> None:
        if len(item_ids) != model.cfg.n_items:
            raise ValueError(f"{len(item_ids)} item ids for a model of {model.cfg.n_items} items")
        self.app = app
        self.model = model.eval()
        self.item_ids = np.asarray([str(i) for i in item_ids], dtype=object)
        self.index = {item: k + 1 for k, item in enumerate(self.item_ids)}
        self.version = version
        self.metrics = metrics or {}
        self.text_encoder = text_encoder
        self.text_vectors: TextVectorMemo | None = None
        if text_encoder is not None and model.cfg.text_dim:
            self.text_vectors = text_vectors if text_vectors is not None else TextVectorMemo(text_encoder, text_cache_dir)
        self.ann = ann
        self.approximate = ann is not None and ann.approximate(len(self.item_ids))
        self._retrieval: ItemIndex | None = None  # rows [E[i], b[i]]: candidates for a user vector [h, 1]
        self._neighbours: ItemIndex | None = None  # rows E[i] / |E[i]|: similar items
        # items added from text beyond the model's rows (add_items): their texts and (K, text_dim) vectors
        self._added_texts: list[str] = []
        self._added_vectors = np.zeros((0, model.cfg.text_dim), np.float32)
        self._start()
        self._refresh()
        if self.approximate and build_index:
            self.build_index()

    def _start(self) -> None:
        """What each scorer object holds for itself, never shared with one it was grown from."""
        self.text_misses = 0  # event texts a request found without a vector (read as absent)
        # concurrent requests share one forward pass (equal to one at a time: tested). The
        # batchers reach this scorer through a weak reference: a bound method would make a cycle,
        # and a scorer replaced on every item upsert (add_items) would then wait, matrices and
        # all, for the cyclic collector (the soak's workers grew ~20 MB a minute that way).
        me = weakref.ref(self)
        self._batched: MicroBatcher[UserState | None, tuple[np.ndarray, np.ndarray | None]] = MicroBatcher(
            lambda states: me()._score_users(states))  # type: ignore[union-attr]  # alive while called
        self._top_batched: MicroBatcher[tuple[UserState | None, int], tuple[np.ndarray, np.ndarray, np.ndarray | None]] = MicroBatcher(
            lambda asks: me()._top_many(asks))  # type: ignore[union-attr]
        self._popular: np.ndarray | None = None  # rows by bias, best first (the prior without history)

    def _refresh(self) -> None:
        with torch.inference_mode():
            vecs = self.model.item_vectors().detach().clone()  # (N+1, D)
            self._bias = self.model.bias().detach().clone()  # (N,)
            # the output bias of an item added from text: the mean of the trained items' (a neutral prior)
            self._cold_bias = float(self._bias.mean()) if len(self._bias) else 0.0
            if self.approximate and self.ann is not None and self.ann.matrix == "bf16":
                # A large catalog's item matrix is read only at the rows of the sequence and of the
                # retrieved pool: bf16 halves it (the recall it costs: docs/benchmarks.md).
                vecs = vecs.to(torch.bfloat16)
            self._vecs = vecs  # (N+1, D); the encoder promotes bf16 rows to float32
            # (N, D) unit vectors for exact similar items; a large catalog searches its index
            self._unit = None if self.approximate else torch.nn.functional.normalize(vecs[1:], dim=1)

    # ------------------------------------------------------------------ seam
    def observe(self, app: str, event: Event) -> None:
        """Encode the event's text now, on the event path, so that requests only look it up.

        Texts that requests found missing are encoded in the same call. The request path reads the
        user's current state; nothing else is kept per event.
        """
        if app == self.app and self.text_vectors is not None:
            self.text_vectors.add([event.text] if event.text else [])

    def warm_texts(self, texts: Iterable[str]) -> int:
        """Make the vectors of ``texts`` known before requests need them (at start, or for a new
        version): read from the on-disk cache, the rest encoded in batches, the cache written
        once. Returns how many texts were not known before (0 without text features)."""
        return self.text_vectors.warm(texts) if self.text_vectors is not None else 0

    def save_texts(self) -> int:
        """Write event text vectors not yet on disk to the on-disk cache (e.g. at shutdown)."""
        return self.text_vectors.save() if self.text_vectors is not None else 0

    def share_text_vectors(self, other: TransformerScorer) -> bool:
        """Use ``other``'s event text vectors (a version replacing it keeps what was encoded)
        when both encode text with the same encoder; returns whether they are shared."""
        mine, theirs = self.text_encoder, other.text_encoder
        if self.text_vectors is None or other.text_vectors is None or mine is None or theirs is None:
            return False
        if (mine.name, mine.dim) != (theirs.name, theirs.dim):
            return False
        self.text_vectors = other.text_vectors
        return True

    def forget_user(self, app: str, events: Sequence[Event]) -> None:
        """The model keeps no per-user statistics."""

    def serves(self, app: str) -> bool:
        return app == self.app

    def score(self, app: str, state: UserState | None, n: int) -> Scored:
        """Scores of every item for the user's current sequence (popularity-like prior if none);
        for a catalog retrieved approximately, of a pool of at least ``AnnConfig.pool(n)``
        retrieved candidates (every item when that is the whole catalog)."""
        if app != self.app:
            return Scored.empty()
        if self._retrieval is None or self.ann is None or self.ann.pool(n) >= len(self.item_ids):
            scores, user = self._batched(state)
            return Scored(self.item_ids, scores, user=user)
        rows, scores, user = self._top_batched((state, self.ann.pool(n)))
        return Scored(self.item_ids[rows], scores, self.item_ids, rows, user)

    def score_many(self, states: Sequence[UserState | None], now: float | None = None) -> np.ndarray:
        """(B, N) float32 scores for several users in one batched forward pass.

        ``now`` (epoch seconds, default the clock) is when the recommendation is asked for; a
        model trained with ``use_request_gap`` reads the time since each user's newest event.
        """
        return self._pass(states, now)[0]

    def _score_users(self, states: Sequence[UserState | None], now: float | None = None) -> list[tuple[np.ndarray, np.ndarray | None]]:
        """Per state: its (N,) scores and its (D,) user vector (``None`` without history)."""
        scores, h, empty = self._pass(states, now)
        return [(scores[b], None if empty[b] else h[b]) for b in range(len(states))]

    def _pass(self, states: Sequence[UserState | None], now: float | None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(B, N) float32 scores, (B, D) float32 user vectors and (B,) whether a state has no history."""
        h, ti, tt, tv, empty = self._encode(states, now)
        with torch.inference_mode():
            scores = self._dot_all(h) + self._bias  # (B, N)
            if self.model.cfg.repeat_term:
                idx, src = self.model.repeat_sparse_last(ti, tt, tv)
                scores = scores.scatter_add(1, idx, src)
            if bool(empty.any()):  # no history: the learned item bias is the prior
                scores[empty] = self._bias
        return scores.numpy().astype(np.float32, copy=False), h.float().numpy(), empty.numpy()

    def _dot_all(self, h: torch.Tensor) -> torch.Tensor:
        """(B, N) ``h @ E[1:].T`` for (B, D) user vectors; a bf16 matrix is read in float32 slices."""
        vecs = self._vecs[1:]  # (N, D)
        if vecs.dtype == h.dtype:
            return h @ vecs.T
        out = torch.empty(h.shape[0], vecs.shape[0], dtype=h.dtype)
        step = 1 << 16
        for a in range(0, vecs.shape[0], step):
            out[:, a:a + step] = h @ vecs[a:a + step].to(h.dtype).T
        return out

    def _encode(self, states: Sequence[UserState | None], now: float | None) -> tuple[torch.Tensor, ...]:
        """The user vectors h (B, D) after each state's newest event, the left-padded (B, T)
        items, types and value buckets, and (B,) whether a state has no history."""
        now = time.time() if now is None else now
        arrays = [self._arrays(s, now) for s in states]
        t = max(max((len(a[0]) for a in arrays), default=1), 1)
        b = len(arrays)
        items = np.zeros((b, t), np.int64)
        types = np.zeros((b, t), np.int64)
        values = np.zeros((b, t), np.int64)
        gaps = np.zeros((b, t), np.int64)
        next_gaps = np.zeros((b, t), np.int64)
        text_dim = self.model.cfg.text_dim
        ev_text = np.zeros((b, t, text_dim), np.float32) if text_dim else None
        any_text = False
        for r, (it, ty, va, ga, tx, ng) in enumerate(arrays):
            k = len(it)
            if k == 0:
                continue
            items[r, t - k:], types[r, t - k:], values[r, t - k:], gaps[r, t - k:] = it, ty, va, ga
            next_gaps[r, t - k:] = ng
            if ev_text is not None and tx is not None:
                ev_text[r, t - k:] = tx
                any_text = True
        with torch.inference_mode():
            ti, tt, tv = torch.from_numpy(items), torch.from_numpy(types), torch.from_numpy(values)
            et = torch.from_numpy(ev_text) if any_text and ev_text is not None else None
            ng = torch.from_numpy(next_gaps) if self.model.cfg.use_request_gap else None
            h = self.model.encode(ti, tt, tv, torch.from_numpy(gaps), et, self._vecs, last_only=True,
                                  next_gaps=ng)[:, -1]  # (B, D)
        empty = torch.from_numpy(np.array([len(a[0]) == 0 for a in arrays], dtype=bool))
        return h, ti, tt, tv, empty

    # ------------------------------------------------------------------ approximate retrieval
    def build_index(self) -> None:
        """Build the retrieval and neighbour indexes of a catalog retrieved approximately (about
        ten seconds a million items on two cores); requests are scored exactly until both are
        in place. Nothing to do for a catalog scored exactly or one whose indexes exist."""
        if not self.approximate or self.ann is None or self._retrieval is not None:
            return
        n = len(self.item_ids)
        with torch.inference_mode():
            neighbours = ItemIndex.train(self._unit_rows, n, self.ann)
            retrieval = ItemIndex.train(self._index_rows, n, self.ann)
            for a in range(0, n, 1 << 16):  # in slices: float32 copies of a slice, not of the matrix
                rows = np.arange(a, min(n, a + (1 << 16)))
                neighbours.add(self._unit_rows(rows))
                retrieval.add(self._index_rows(rows))
        self._neighbours = neighbours
        self._retrieval = retrieval  # set last: score() searches once this is in place

    def _item_rows(self, rows: np.ndarray) -> torch.Tensor:
        """(K, D) float32 item vectors of item positions ``rows`` (0-based)."""
        return self._vecs[torch.from_numpy(np.asarray(rows, dtype=np.int64) + 1)].float()

    def _unit_rows(self, rows: np.ndarray) -> np.ndarray:
        """(K, D) unit item vectors: rows of the neighbour index (inner product = cosine)."""
        return torch.nn.functional.normalize(self._item_rows(rows), dim=1).numpy()

    def _index_rows(self, rows: np.ndarray) -> np.ndarray:
        """(K, D+1) ``[E[i], b[i]]``: rows of the retrieval index (inner product with ``[h, 1]``
        = the model's score without the repeat term)."""
        rows = np.asarray(rows, dtype=np.int64)
        return torch.cat([self._item_rows(rows), self._bias[torch.from_numpy(rows)][:, None]], dim=1).numpy()

    def index_bytes(self) -> dict[str, int]:
        """Bytes of the item matrix and of each index (0 where there is none)."""
        r, nb = self._retrieval, self._neighbours
        return {"item_matrix": self._vecs.element_size() * self._vecs.numel(),
                "retrieval_index": r.nbytes() if r is not None else 0,
                "neighbour_index": nb.nbytes() if nb is not None else 0}

    def _best_by_bias(self, k: int) -> np.ndarray:
        """(k,) item positions with the largest bias, best first, ties in catalog order (what the
        exact scores of a user without history put first)."""
        top = self._popular
        if top is None or len(top) < min(k, len(self.item_ids)):
            bias = self._bias.numpy()
            m = min(len(bias), max(k, 1024))
            part = np.argpartition(-bias, m - 1)[:m] if m < len(bias) else np.arange(len(bias))
            kth = bias[part].min()
            cand = np.flatnonzero(bias >= kth)  # every tie of the m-th value, in catalog order
            top = cand[np.argsort(-bias[cand], kind="stable")][:m]
            self._popular = top
        return top[:k]

    def _top_many(self, requests: Sequence[tuple[UserState | None, int]]) -> list[tuple[np.ndarray, np.ndarray, np.ndarray | None]]:
        """Per (state, k): (K,) item positions, ascending, their exact float32 scores, for the
        ``k`` retrieved candidates plus the sequence's items, and the (D,) user vector (``None``
        without history). One forward pass and one index search for the batch."""
        retrieval = self._retrieval
        if retrieval is None:
            raise RuntimeError("no retrieval index: build_index() first")
        n = len(self.item_ids)
        k = max(k for _, k in requests)
        h, ti, tt, tv, empty = self._encode([s for s, _ in requests], None)
        with torch.inference_mode():
            query = torch.cat([h, torch.ones(h.shape[0], 1)], dim=1).numpy()  # (B, D+1)
            _, found = retrieval.search(query, k)  # (B, k)
            src = self.model.repeat_sparse_last(ti, tt, tv)[1] if self.model.cfg.repeat_term else None  # (B, T)
            out = []
            for b in range(len(requests)):
                if bool(empty[b]):  # no history: the prior, exactly
                    rows = np.sort(self._best_by_bias(k))
                    out.append((rows, self._bias[torch.from_numpy(rows)].numpy().astype(np.float32), None))
                    continue
                seq = ti[b][ti[b] > 0].numpy() - 1  # the sequence's items: the repeat term may lift them
                got = found[b]
                # ascending positions: equal scores keep catalog order, as in the exact scores; an
                # index shared with a larger catalog (add_items) may return rows beyond this one
                rows = np.unique(np.concatenate([got[(got >= 0) & (got < n)], seq]))
                r = torch.from_numpy(rows)
                scores = self._item_rows(rows) @ h[b] + self._bias[r]  # (K,)
                if src is not None:
                    active = ti[b] > 0
                    at = torch.from_numpy(np.searchsorted(rows, ti[b][active].numpy() - 1))
                    scores = scores.index_add(0, at, src[b][active])
                out.append((rows, scores.numpy().astype(np.float32, copy=False), h[b].float().numpy()))
        return out

    def similar(self, app: str, item_id: str, n: int) -> list[tuple[str, float]]:
        """Items with the most similar item vectors (cosine), excluding the item itself; for a
        catalog retrieved approximately, the best of the neighbour index's candidates."""
        if app != self.app or item_id not in self.index:
            return []
        j = self.index[item_id] - 1
        k = min(n, len(self.item_ids) - 1)
        if k <= 0:
            return []
        if self.approximate:
            return self._similar_approximate(j, k)
        with torch.inference_mode():
            sims = self._unit @ self._unit[j]  # (N,)
            sims[j] = -float("inf")
            top = torch.topk(sims, k)
        return [(str(self.item_ids[i]), float(s)) for s, i in zip(top.values.tolist(), top.indices.tolist())]

    def _similar_approximate(self, j: int, k: int) -> list[tuple[str, float]]:
        """The ``k`` best of ``2k + 16`` neighbour-index candidates of item position ``j`` by exact
        cosine (a slice-wise exact pass while the index is being built)."""
        with torch.inference_mode():
            q = self._unit_rows(np.array([j]))  # (1, D)
            neighbours = self._neighbours
            if neighbours is not None:
                found = neighbours.search(q, 2 * k + 17)[1][0]
                rows = np.unique(found[(found >= 0) & (found < len(self.item_ids)) & (found != j)])
                sims = self._unit_rows(rows) @ q[0]  # (K,)
            else:
                sims = np.concatenate([self._unit_rows(np.arange(a, min(len(self.item_ids), a + (1 << 16)))) @ q[0]
                                       for a in range(0, len(self.item_ids), 1 << 16)])
                sims[j] = -np.inf
                rows = np.arange(len(self.item_ids))
            best = np.argsort(-sims, kind="stable")[:k]
        return [(str(self.item_ids[rows[i]]), float(sims[i])) for i in best]

    def item_embeddings(self, app: str) -> tuple[list[str], np.ndarray] | None:
        """(item ids, (N, D) float32 item vectors) of ``app`` (the vectors the scores use)."""
        if app != self.app:
            return None
        with torch.inference_mode():
            return self.item_ids.tolist(), self._vecs[1:].float().numpy()

    # ------------------------------------------------------------------ inputs
    def _event_text(self, text: str) -> np.ndarray | None:
        """The event text's vector, or None (read as an event without text); never encodes."""
        memo = self.text_vectors
        if memo is None:
            return None
        vec = memo.get(text)
        if vec is None:
            # Encoded by the next observe/warm call on the event path rather than by a thread of
            # its own: nothing to start, stop or race with a version swap, and misses are rare
            # (texts that predate this scorer, which warm_texts covers at start).
            self.text_misses += 1
            memo.note_miss(text)
        return vec

    def _arrays(self, state: UserState | None, now: float) -> tuple[np.ndarray, ...]:
        """(T,) items, types, value buckets, gap buckets, (T, text_dim) event text (or None) and
        next-gap buckets (to the following event; the newest one to ``now``) of a state."""
        if state is None:
            z = np.zeros(0, np.int64)
            return z, z, z, z, None, z
        seq = [i for i in state.sequence if i[ITEM] is None or i[ITEM] in self.index or i[TEXT]]
        seq = seq[-self.model.cfg.max_len:]
        items = np.array([self.index.get(i[ITEM], 0) if i[ITEM] is not None else 0 for i in seq], np.int64)
        types = np.array([type_id(i[TYPE]) for i in seq], np.int64)
        values = value_bucket(np.array([np.nan if i[VALUE] is None else i[VALUE] for i in seq], np.float64)).astype(np.int64)
        ts = np.array([i[TIMESTAMP] for i in seq], np.float64)
        gaps = np.full(len(seq), -1.0)
        nxt = np.zeros(len(seq))
        if len(seq) > 1:
            gaps[1:] = np.maximum(ts[1:] - ts[:-1], 0.0)
            nxt[:-1] = gaps[1:]
        if len(seq):
            nxt[-1] = max(now - ts[-1], 0.0)
        # a request gap longer than any seen in training reads as the longest seen
        next_gaps = np.minimum(gap_bucket(nxt).astype(np.int64), self.model.cfg.request_gap_max)
        text = None
        if self.model.cfg.text_dim and any(i[TEXT] for i in seq):
            text = np.zeros((len(seq), self.model.cfg.text_dim), np.float32)
            for k, i in enumerate(seq):
                if i[TEXT]:
                    v = self._event_text(i[TEXT])
                    if v is not None:
                        text[k] = v
        return items, types, values, gap_bucket(gaps).astype(np.int64), text, next_gaps

    # ------------------------------------------------------------------ cold start
    @property
    def can_add_items(self) -> bool:
        """Whether items can be added from their text (the model has text features and the
        scorer an encoder)."""
        return self.text_encoder is not None and bool(self.model.cfg.text_dim) and self.model.text_proj is not None

    def add_items(self, item_ids: Sequence[str], texts: Sequence[str]) -> TransformerScorer:
        """A new scorer that also knows ``item_ids`` from their text alone (cold start).

        An item's vector is its text vector through the model's learned text projection (its ID
        embedding is zero: it has none yet), its output bias the mean of the trained items', so
        its score is the projected text's match with the user's state. An item added before
        (not one of the model's own) whose text changed takes the new text; the model's items,
        items without text and unchanged ones are left as they are (``self`` when nothing
        changes). The rows extend the item matrix (and the indexes of a catalog retrieved
        approximately), not the model: this is cheap enough for every upsert. The current scorer
        is unchanged (swap the new one in by assignment).
        """
        if not self.can_add_items:
            raise ValueError("this model has no text features (or no text encoder): cannot add text-only items")
        wanted, new, changed = self._to_place(item_ids, texts)
        base = self.model.cfg.n_items
        if not new and not changed:
            return self
        vectors = self._text_vectors([wanted[i] for i in new + changed])  # (K, text_dim)
        with torch.inference_mode():
            proj = self.model.text_proj  # type: ignore[union-attr]  # can_add_items checked it
            rows = proj(torch.from_numpy(vectors)).to(self._vecs.dtype)  # (K, D): zero ID embedding + projected text
            k = len(new)
            at = torch.tensor([self.index[i] for i in changed], dtype=torch.int64)  # (C,) 1-based rows replaced
            vecs = torch.cat([self._vecs, rows[:k]])  # (N+K+1, D): a copy, so the rows can be replaced
            vecs[at] = rows[k:]
            unit = None
            if self._unit is not None:
                unit = torch.cat([self._unit, torch.nn.functional.normalize(rows[:k], dim=1)])  # (N+K, D)
                unit[at - 1] = torch.nn.functional.normalize(rows[k:], dim=1)
            bias = torch.cat([self._bias, torch.full((k,), self._cold_bias, dtype=self._bias.dtype)])  # (N+K,)
        grown = copy.copy(self)  # shares the model, encoder, text vectors and (for now) the indexes
        grown._start()
        grown._vecs, grown._unit, grown._bias = vecs, unit, bias
        grown.item_ids = np.concatenate([self.item_ids, np.array(new, dtype=object)]) if new else self.item_ids
        grown.index = {**self.index, **{item: len(self.item_ids) + j + 1 for j, item in enumerate(new)}}
        grown._added_texts = self._added_texts + [wanted[i] for i in new]
        grown._added_vectors = np.concatenate([self._added_vectors, vectors[:k]])
        for j, item in enumerate(changed):
            grown._added_texts[self.index[item] - base - 1] = wanted[item]
            grown._added_vectors[self.index[item] - base - 1] = vectors[k + j]
        grown._extend_indexes(self)
        return grown

    def _to_place(self, item_ids: Sequence[str], texts: Sequence[str]) -> tuple[dict[str, str], list[str], list[str]]:
        """(item -> text, the items new here, the added items whose text changed): what
        :meth:`add_items` places from text."""
        wanted = {str(i): t for i, t in zip(item_ids, texts) if t}  # an id given twice: its last text
        base = self.model.cfg.n_items
        new = [i for i in wanted if i not in self.index]
        changed = [i for i in wanted if self.index.get(i, 0) > base and self._added_texts[self.index[i] - base - 1] != wanted[i]]
        return wanted, new, changed

    def texts_to_place(self, item_ids: Sequence[str], texts: Sequence[str]) -> list[str]:
        """The texts :meth:`add_items` would need vectors of for these items (none for the
        model's own items, nor for added items whose text is unchanged)."""
        if not self.can_add_items:
            return []
        wanted, new, changed = self._to_place(item_ids, texts)
        return list(dict.fromkeys(wanted[i] for i in new + changed))

    def _text_vectors(self, texts: list[str]) -> np.ndarray:
        """(K, text_dim) vectors of item texts: those the scorer's text memo knows, or the
        on-disk cache (many at once: one read), the rest encoded (and remembered)."""
        memo, encoder = self.text_vectors, self.text_encoder
        assert encoder is not None
        if memo is None or memo.encoder is not encoder:
            return np.asarray(encoder.encode(texts), dtype=np.float32)
        if len(texts) >= 256:  # a catalog at start or a large batch: one read of the on-disk cache
            memo.warm(texts)
        else:  # an upsert or a few: encoded now (the cache file is read and written in bulk later)
            memo.add(texts)
        out = np.zeros((len(texts), self.model.cfg.text_dim), np.float32)
        missing = []
        for k, text in enumerate(texts):
            v = memo.get(text)
            if v is None:  # dropped again by the memo's bound
                missing.append(k)
            else:
                out[k] = v
        if missing:
            out[missing] = encoder.encode([texts[k] for k in missing])
        return out

    def export(self) -> tuple[FeedbackTransformer, list[str]]:
        """A copy of the model with a row for every item this scorer serves, and the item ids in
        row order (what a version registered from this scorer holds). Items added from text get
        a zero ID embedding, their text vector and the bias they are served with, so a scorer of
        the exported model scores them as this one does (tested)."""
        ids = [str(i) for i in self.item_ids]
        k = len(self._added_texts)
        if k == 0:
            return copy.deepcopy(self.model), ids
        cfg = ModelConfig.from_dict({**self.model.cfg.to_dict(), "n_items": self.model.cfg.n_items + k})
        model = FeedbackTransformer(cfg)
        state = model.state_dict()
        for name, tensor in self.model.state_dict().items():
            if name == "item_emb.weight":
                state[name] = torch.cat([tensor, torch.zeros(k, tensor.shape[1], dtype=tensor.dtype)])
            elif name == "item_text":
                state[name] = torch.cat([tensor, torch.from_numpy(self._added_vectors).to(tensor.dtype)])
            elif name == "out_bias":
                state[name] = torch.cat([tensor, torch.full((k,), self._cold_bias, dtype=tensor.dtype)])
            else:
                state[name] = tensor.clone()
        model.load_state_dict(state)
        return model.eval(), ids

    def _extend_indexes(self, base: TransformerScorer) -> None:
        """Take over ``base``'s indexes and add the rows this scorer has beyond it (incremental:
        its first rows are ``base``'s, unchanged); build new ones when ``base`` has none to give
        (exact below the threshold, or indexes that already hold rows of another scorer)."""
        if not self.approximate:
            return
        start = len(base.item_ids)
        retrieval, neighbours = base._retrieval, base._neighbours
        if retrieval is None or neighbours is None or retrieval.ntotal != start or neighbours.ntotal != start:
            self.build_index()
            return
        with torch.inference_mode():
            rows = np.arange(start, len(self.item_ids))
            neighbours.add(self._unit_rows(rows))
            retrieval.add(self._index_rows(rows))
        # the base scorer, still serving until this one is swapped in, skips rows beyond its own
        self._neighbours, self._retrieval = neighbours, retrieval
