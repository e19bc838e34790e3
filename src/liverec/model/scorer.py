"""The Transformer behind the service's :class:`~liverec.recommend.scoring.Scorer` seam.

At request time the user's *current* sequence (the online state, including an event that arrived
a moment ago) is encoded and every item the model knows is scored by a dot product with the
cached item vectors (exact, no candidate pre-selection). Items added with text only
(:meth:`TransformerScorer.add_items`) get a zero ID embedding and their projected text vector, so
they are scored and have similar items from the first second (cold start).

Several users can be scored in one forward pass (:meth:`score_many`); it gives the same scores as
one-by-one scoring (tested).

The text of search, tag and review events is encoded on the event path (:meth:`observe`) and at
start (:meth:`warm_texts`), never inside a request: a request only looks the vectors up.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
import torch

from liverec.events import Event
from liverec.batching import MicroBatcher
from liverec.model.features import gap_bucket, type_id, value_bucket
from liverec.model.text import TextEncoder, TextVectorMemo
from liverec.model.transformer import FeedbackTransformer, ModelConfig
from liverec.recommend.scoring import Scored
from liverec.state import UserState


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
        self.text_misses = 0  # event texts a request found without a vector (read as absent)
        self._lock = threading.Lock()
        # concurrent requests share one forward pass (equal to one at a time: tested)
        self._batched: MicroBatcher[UserState | None, np.ndarray] = MicroBatcher(lambda states: list(self.score_many(states)))
        self._refresh()

    def _refresh(self) -> None:
        with torch.inference_mode():
            self._vecs = self.model.item_vectors().detach().clone()  # (N+1, D)
            self._bias = self.model.bias().detach().clone()  # (N,)
            unit = torch.nn.functional.normalize(self._vecs[1:], dim=1)
            self._unit = unit  # (N, D) for similar items

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
        """Scores of every item for the user's current sequence (popularity-like prior if none)."""
        if app != self.app:
            return Scored.empty()
        return Scored(self.item_ids, self._batched(state))

    def score_many(self, states: Sequence[UserState | None], now: float | None = None) -> np.ndarray:
        """(B, N) float32 scores for several users in one batched forward pass.

        ``now`` (epoch seconds, default the clock) is when the recommendation is asked for; a
        model trained with ``use_request_gap`` reads the time since each user's newest event.
        """
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
            scores = h @ self._vecs[1:].T + self._bias  # (B, N)
            if self.model.cfg.repeat_term:
                idx, src = self.model.repeat_sparse_last(ti, tt, tv)
                scores = scores.scatter_add(1, idx, src)
            empty = torch.from_numpy(np.array([len(a[0]) == 0 for a in arrays]))
            if bool(empty.any()):  # no history: the learned item bias is the prior
                scores[empty] = self._bias
        return scores.numpy().astype(np.float32, copy=False)

    def similar(self, app: str, item_id: str, n: int) -> list[tuple[str, float]]:
        """Items with the most similar item vectors (cosine), excluding the item itself."""
        if app != self.app or item_id not in self.index:
            return []
        j = self.index[item_id] - 1
        with torch.inference_mode():
            sims = self._unit @ self._unit[j]  # (N,)
            sims[j] = -float("inf")
            k = min(n, len(self.item_ids) - 1)
            if k <= 0:
                return []
            top = torch.topk(sims, k)
        return [(str(self.item_ids[i]), float(s)) for s, i in zip(top.values.tolist(), top.indices.tolist())]

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
        seq = [i for i in state.sequence if i.item_id is None or i.item_id in self.index or i.text]
        seq = seq[-self.model.cfg.max_len:]
        items = np.array([self.index.get(i.item_id, 0) if i.item_id is not None else 0 for i in seq], np.int64)
        types = np.array([type_id(i.type) for i in seq], np.int64)
        values = value_bucket(np.array([np.nan if i.value is None else i.value for i in seq], np.float64)).astype(np.int64)
        ts = np.array([i.timestamp for i in seq], np.float64)
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
        if self.model.cfg.text_dim and any(i.text for i in seq):
            text = np.zeros((len(seq), self.model.cfg.text_dim), np.float32)
            for k, i in enumerate(seq):
                if i.text:
                    v = self._event_text(i.text)
                    if v is not None:
                        text[k] = v
        return items, types, values, gap_bucket(gaps).astype(np.int64), text, next_gaps

    # ------------------------------------------------------------------ cold start
    def add_items(self, item_ids: Sequence[str], texts: Sequence[str]) -> TransformerScorer:
        """A new scorer that also knows ``item_ids`` from their text alone (cold start).

        Their ID embeddings start at zero and their output bias at the mean bias, so the score is
        the projected text vector's match with the user's state. The current scorer is unchanged
        (swap it in by assignment).
        """
        if self.text_encoder is None or not self.model.cfg.text_dim:
            raise ValueError("this model has no text features (or no text encoder): cannot add text-only items")
        new = [(i, t) for i, t in zip(item_ids, texts) if str(i) not in self.index]
        if not new:
            return self
        vecs = self.text_encoder.encode([t for _, t in new]).astype(np.float32)
        cfg = ModelConfig.from_dict({**self.model.cfg.to_dict(), "n_items": self.model.cfg.n_items + len(new)})
        model = FeedbackTransformer(cfg)
        old = self.model.state_dict()
        state = model.state_dict()
        k = len(new)
        for name, tensor in old.items():
            if name == "item_emb.weight":
                state[name] = torch.cat([tensor, torch.zeros(k, tensor.shape[1])])
            elif name == "item_text":
                state[name] = torch.cat([tensor, torch.from_numpy(vecs)])
            elif name == "out_bias":
                state[name] = torch.cat([tensor, tensor.mean().expand(k)])
            else:
                state[name] = tensor
        model.load_state_dict(state)
        return TransformerScorer(self.app, model, list(self.item_ids) + [str(i) for i, _ in new], self.version,
                                 self.text_encoder, self.metrics, text_vectors=self.text_vectors)
