"""The feedback-aware causal Transformer over a user's event sequence.

Each position is one event. Its input vector is the sum of

* the item vector ``E[i]`` = learned ID embedding + learned projection of the item's text vector
  (all-MiniLM-L6-v2, 384-d) when the item has text: the same vector scores the item at the
  output (tied), so an item with text but no interactions is still scorable (cold start);
* embeddings of the event type, the feedback value bucket and the time-gap bucket;
* a projection of the event's own text (search queries, reviews) when it has one;
* a learned position embedding counted back from the newest event.

A stack of pre-LayerNorm causal self-attention blocks turns it into one hidden state per
position; the state after the last event scores every item in the catalog:

    score(i) = <h, E[i]> + b[i] + repeat(i)

``repeat(i)`` is a learned term for items already in the sequence: the sum of a per-type and a
per-value scalar of the latest event on that item. The model learns it from the data: on
MovieLens (nobody rates a movie twice) it becomes strongly negative and pushes seen items down;
on repeat-heavy shop data it would become positive.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from liverec.model.features import N_GAP_BUCKETS, N_TYPES, N_VALUE_BUCKETS


@dataclass
class ModelConfig:
    """Architecture of :class:`FeedbackTransformer` (stored in every artifact manifest)."""

    n_items: int
    max_len: int = 200
    d_model: int = 64
    n_blocks: int = 2
    n_heads: int = 1
    ffn_mult: int = 4
    dropout: float = 0.2
    use_types: bool = True
    use_values: bool = True
    use_gaps: bool = True
    use_request_gap: bool = False  # embed the time from each event to the next request (see data.next_gap_buckets)
    request_gap_max: int = N_GAP_BUCKETS - 1  # largest request-gap bucket seen in training (serving clips to it)
    text_dim: int = 0  # 0 = no item/event text features
    repeat_term: bool = True
    item_bias: bool = True
    id_dropout: float = 0.0  # training only: share of items whose ID embedding is dropped per step (text carries them)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelConfig:
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})


def fast_dropout(x: torch.Tensor, p: float, training: bool = True) -> torch.Tensor:
    """Inverted dropout with masks cut from random bytes (a quarter of the time of ``F.dropout``
    on CPU, where drawing one Bernoulli float per element dominates small models' steps).

    ``p`` is rounded to a multiple of 1/256 (0.2 -> 51/256 = 0.199); the kept values are scaled by
    256 / (256 - 51). Uses the default generator, so ``torch.manual_seed`` makes it reproducible.
    """
    if not training or p <= 0:
        return x
    thr = int(round(p * 256))
    if thr <= 0:
        return x
    if thr >= 256:
        return torch.zeros_like(x)
    n = x.numel()
    k = -(-n // 7)
    words = torch.empty(k, dtype=torch.int64, device=x.device).random_()  # [0, 2**63): 7 uniform low bytes each
    keep = words.view(torch.uint8).view(k, 8)[:, :7].reshape(-1)[:n].view(x.shape) >= thr
    return x.mul(keep).mul_(256.0 / (256 - thr))


class FastDropout(nn.Module):
    """:func:`fast_dropout` as a module (active in training mode only)."""

    def __init__(self, p: float) -> None:
        super().__init__()
        self.p = p

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return fast_dropout(x, self.p, self.training)


class Block(nn.Module):
    """Pre-LN Transformer block: causal self-attention + GELU feed-forward."""

    def __init__(self, d: int, n_heads: int, ffn_mult: int, dropout: float) -> None:
        super().__init__()
        self.n_heads = n_heads
        self.ln1 = nn.LayerNorm(d)
        self.qkv = nn.Linear(d, 3 * d)
        self.proj = nn.Linear(d, d)
        self.ln2 = nn.LayerNorm(d)
        self.ff1 = nn.Linear(d, ffn_mult * d)
        self.ff2 = nn.Linear(ffn_mult * d, d)
        self.drop = FastDropout(dropout)
        self.attn_dropout = dropout

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        """x: (B, T, D); mask: (B, 1, T, T) bool, True = may attend; None = plain causal (no padding)."""
        b, t, d = x.shape
        q, k, v = self.qkv(self.ln1(x)).view(b, t, 3, self.n_heads, d // self.n_heads).unbind(2)
        # (B, H, T, Dh) each
        q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)
        if self.training and self.attn_dropout > 0:
            # Written out so the attention weights get the fast dropout mask (SDPA's math path
            # draws a Bernoulli float per weight); same computation as SDPA with dropout.
            att = (q @ k.transpose(-2, -1)) * (1.0 / math.sqrt(q.shape[-1]))  # (B, H, T, T)
            allowed = mask if mask is not None else torch.ones(t, t, dtype=torch.bool, device=x.device).tril()
            att = att.masked_fill(~allowed, float("-inf")).softmax(-1)
            a = fast_dropout(att, self.attn_dropout) @ v
        else:
            a = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=mask is None)  # (B, H, T, Dh)
        x = x + self.drop(self.proj(a.transpose(1, 2).reshape(b, t, d)))
        x = x + self.drop(self.ff2(self.drop(F.gelu(self.ff1(self.ln2(x))))))
        return x

    def forward_last(self, x: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        """The block's output at the last position only (inference): x (B, T, D) -> (B, 1, D).

        The last query may attend to every real event, so no causal mask is needed; this skips
        the other T-1 queries and feed-forward rows (tested equal to ``forward(...)[:, -1:]``).
        """
        b, t, d = x.shape
        hd = d // self.n_heads
        h = self.ln1(x)
        k, v = F.linear(h, self.qkv.weight[d:], self.qkv.bias[d:]).view(b, t, 2, self.n_heads, hd).unbind(2)
        q = F.linear(h[:, -1:], self.qkv.weight[:d], self.qkv.bias[:d]).view(b, 1, self.n_heads, hd)
        q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)  # (B, H, 1|T, Dh)
        mask = None if bool(valid.all()) else (valid | (torch.arange(t, device=x.device) == t - 1))[:, None, None, :]
        a = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)  # (B, H, 1, Dh)
        y = x[:, -1:] + self.proj(a.transpose(1, 2).reshape(b, 1, d))
        return y + self.ff2(F.gelu(self.ff1(self.ln2(y))))


class FeedbackTransformer(nn.Module):
    """Sequence encoder + full-catalog scorer. Items are 1-based (0 = padding / no item)."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.cfg = cfg
        d = cfg.d_model
        self.item_emb = nn.Embedding(cfg.n_items + 1, d, padding_idx=0)
        nn.init.normal_(self.item_emb.weight, std=1.0 / math.sqrt(d))
        with torch.no_grad():
            self.item_emb.weight[0].zero_()
        self.pos_emb = nn.Embedding(cfg.max_len, d)
        nn.init.normal_(self.pos_emb.weight, std=0.02)
        self.type_emb = nn.Embedding(N_TYPES, d) if cfg.use_types else None
        self.value_emb = nn.Embedding(N_VALUE_BUCKETS, d) if cfg.use_values else None
        self.gap_emb = nn.Embedding(N_GAP_BUCKETS, d) if cfg.use_gaps else None
        self.next_gap_emb = nn.Embedding(N_GAP_BUCKETS, d) if cfg.use_request_gap else None
        for emb in (self.type_emb, self.value_emb, self.gap_emb, self.next_gap_emb):
            if emb is not None:
                nn.init.normal_(emb.weight, std=0.02)
        if cfg.text_dim > 0:
            self.text_proj: nn.Linear | None = nn.Linear(cfg.text_dim, d, bias=False)
            nn.init.normal_(self.text_proj.weight, std=0.02)
            self.event_text_proj: nn.Linear | None = nn.Linear(cfg.text_dim, d, bias=False)
            nn.init.normal_(self.event_text_proj.weight, std=0.02)
        else:
            self.text_proj = None
            self.event_text_proj = None
        # Item text vectors (N+1, text_dim); row 0 and rows of items without text are zero.
        self.register_buffer("item_text", torch.zeros(cfg.n_items + 1, max(cfg.text_dim, 0)), persistent=True)
        self.emb_drop = FastDropout(cfg.dropout)
        self.blocks = nn.ModuleList(Block(d, cfg.n_heads, cfg.ffn_mult, cfg.dropout) for _ in range(cfg.n_blocks))
        self.final_ln = nn.LayerNorm(d)
        self.out_bias = nn.Parameter(torch.zeros(cfg.n_items)) if cfg.item_bias else None
        if cfg.repeat_term:
            self.rep_type = nn.Parameter(torch.zeros(N_TYPES))
            self.rep_value = nn.Parameter(torch.zeros(N_VALUE_BUCKETS))
        self.input_scale = math.sqrt(d)

    # ----------------------------------------------------------------------------- items
    def item_vectors(self) -> torch.Tensor:
        """(N+1, D) item vectors: ID embedding + projected text (row 0 = padding)."""
        e = self.item_emb.weight
        if self.text_proj is not None:
            if self.training and self.cfg.id_dropout > 0:
                # Items seen only through their text in this step: teaches the text projection to
                # stand on its own, which is what a new (cold-start) item has.
                keep = torch.rand(e.shape[0], 1, device=e.device) >= self.cfg.id_dropout
                e = e * keep
            e = e + self.text_proj(self.item_text)
        return e

    def bias(self) -> torch.Tensor:
        """(N,) per-item output bias (zeros when disabled)."""
        if self.out_bias is None:
            return torch.zeros(self.cfg.n_items, device=self.item_emb.weight.device)
        return self.out_bias

    def set_item_text(self, vectors: torch.Tensor) -> None:
        """Install (N+1, text_dim) item text vectors (row 0 and text-less items zero)."""
        if self.cfg.text_dim <= 0:
            raise ValueError("model was built with text_dim=0; it has no text features")
        expected = (self.cfg.n_items + 1, self.cfg.text_dim)
        if tuple(vectors.shape) != expected:
            raise ValueError(f"item text vectors: shape {tuple(vectors.shape)}, expected {expected}")
        self.item_text.copy_(vectors)

    # ----------------------------------------------------------------------------- encoder
    def encode(
        self,
        items: torch.Tensor,  # (B, T) int64
        types: torch.Tensor,  # (B, T)
        values: torch.Tensor,  # (B, T)
        gaps: torch.Tensor,  # (B, T)
        event_text: torch.Tensor | None = None,  # (B, T, text_dim) or None
        item_vecs: torch.Tensor | None = None,  # (N+1, D) precomputed
        last_only: bool = False,
        next_gaps: torch.Tensor | None = None,  # (B, T) gap bucket to the next event / the request
    ) -> torch.Tensor:
        """Hidden state after every position: (B, T, D). Windows are left-padded and their
        last column is the newest event; T may be shorter than ``max_len``. With ``last_only``
        (eval mode) only the newest position is computed in the last block: (B, 1, D)."""
        b, t = items.shape
        e = self.item_vectors() if item_vecs is None else item_vecs
        valid = types > 0  # (B, T) a real event (search events have item 0 but a type)
        x = F.embedding(items, e) * self.input_scale  # (B, T, D)
        pos = torch.arange(self.cfg.max_len - t, self.cfg.max_len, device=items.device)
        x = x + self.pos_emb(pos)[None]
        if self.type_emb is not None:
            x = x + self.type_emb(types)
        if self.value_emb is not None:
            x = x + self.value_emb(values)
        if self.gap_emb is not None:
            x = x + self.gap_emb(gaps)
        if self.next_gap_emb is not None and next_gaps is not None:
            x = x + self.next_gap_emb(next_gaps)
        if event_text is not None and self.event_text_proj is not None:
            x = x + self.event_text_proj(event_text)
        x = self.emb_drop(x) * valid[..., None]
        mask: torch.Tensor | None = None  # no padding (e.g. one user at request time): fast causal path
        if not bool(valid.all()):
            causal = torch.ones(t, t, dtype=torch.bool, device=items.device).tril()
            eye = torch.eye(t, dtype=torch.bool, device=items.device)
            mask = ((causal[None] & valid[:, None, :]) | eye[None])[:, None]  # (B, 1, T, T)
        blocks = list(self.blocks)
        if last_only and not self.training and blocks:
            for blk in blocks[:-1]:
                x = blk(x, mask)
            return self.final_ln(blocks[-1].forward_last(x, valid))  # (B, 1, D)
        for blk in blocks:
            x = blk(x, mask)
        return self.final_ln(x)

    # ----------------------------------------------------------------------------- repeat term
    def repeat_values(self, types: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
        """(B, T) learned repeat scalar of each event (per type + per value)."""
        return self.rep_type[types] + self.rep_value[values]

    @staticmethod
    def latest_occurrence_mask(items: torch.Tensor) -> torch.Tensor:
        """(B, T) int64 index of the next event on the same item after each position (T if none).

        An item at position s is "in the prefix with its latest feedback" for query positions
        ``s <= t < next[s]``.
        """
        b, t = items.shape
        same = (items[:, :, None] == items[:, None, :]) & (items[:, :, None] > 0)  # (B, T, T)
        later = torch.ones(t, t, dtype=torch.bool, device=items.device).triu(1)
        idx = torch.arange(t, device=items.device).expand(b, t, t)
        big = torch.full_like(idx, t)
        return torch.where(same & later[None], idx, big).min(-1).values

    def repeat_sparse_last(
        self, items: torch.Tensor, types: torch.Tensor, values: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Sparse repeat term for scoring after the newest event: idx (B, T), src (B, T)."""
        t = items.shape[1]
        nxt = self.latest_occurrence_mask(items)  # (B, T)
        active = (items > 0) & (nxt >= t)
        src = self.repeat_values(types, values) * active
        idx = (items - 1).clamp(min=0)
        return idx, src

    # ----------------------------------------------------------------------------- scoring
    def score_last(
        self,
        items: torch.Tensor,
        types: torch.Tensor,
        values: torch.Tensor,
        gaps: torch.Tensor,
        event_text: torch.Tensor | None = None,
        next_gaps: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """(B, N) scores of every item after each window's newest event (item i at column i-1)."""
        e = self.item_vectors()
        h = self.encode(items, types, values, gaps, event_text, e, last_only=True, next_gaps=next_gaps)[:, -1]  # (B, D)
        scores = h @ e[1:].T + self.bias()  # (B, N)
        if self.cfg.repeat_term:
            idx, src = self.repeat_sparse_last(items, types, values)
            scores = scores.scatter_add(1, idx, src)
        return scores
