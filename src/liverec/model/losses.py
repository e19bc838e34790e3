"""Full-softmax cross-entropy over the whole catalog, written for CPU caches.

The logits of one batch are an (M, N) matrix (M target positions, N items: ~6k x 3.7k floats
on MovieLens-1M, ~94 MB). Materialising it (as ``cross_entropy`` does, with a log-softmax copy
and a gradient of the same size) makes the step memory-bound. :class:`FullSoftmaxCE` instead
walks the rows in chunks of ``chunk`` (default 512: a ~7 MB buffer that stays in cache), and for
each chunk computes the logits, the softmax, the loss *and the gradients* at once: the loss is
the last operation of the graph, so d loss / d logits = (softmax - one-hot) / M is known in the
forward pass. The backward pass only scales the stored gradients by the incoming gradient.
:func:`reference_full_softmax_ce` is the plain PyTorch version it is tested against.

The logits are ``H @ E.T + bias`` plus a sparse *repeat term*: ``rep_src[m, j]`` is added to
item ``rep_idx[m, j]`` of row ``m`` (the items already in that row's prefix; entries with
``rep_src == 0`` and any index are no-ops).

Rows may also carry items *not to recommend* (negative feedback, :mod:`liverec.model.negatives`):
``avoid_w[m, k] * -log(1 - p_m(avoid_idx[m, k]))`` under the same softmax ``p_m``, whose gradient
``a * (onehot - p)`` with ``a = w * p / (1 - p)`` is added in the same pass. A row without a target
(``targets[m] == -1``) carries only that term. The mean is over the rows with a target.
"""

from __future__ import annotations

from typing import Any

import torch

DEFAULT_CHUNK = 512


class FullSoftmaxCE(torch.autograd.Function):
    """Mean cross-entropy (optionally label-smoothed) of ``targets`` under full-catalog logits."""

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: Any,
        h: torch.Tensor,  # (M, D)
        e: torch.Tensor,  # (N, D)
        bias: torch.Tensor,  # (N,)
        rep_idx: torch.Tensor,  # (M, J) int64
        rep_src: torch.Tensor,  # (M, J)
        targets: torch.Tensor,  # (M,) int64 in [0, N), -1 = no target (a row of avoided items only)
        label_smoothing: float,
        bf16: bool,
        chunk: int = DEFAULT_CHUNK,
        avoid_idx: torch.Tensor | None = None,  # (M, K) int64 items not to recommend
        avoid_w: torch.Tensor | None = None,  # (M, K) their weights (0 = an unused slot)
    ) -> torch.Tensor:
        m_rows, n_items = h.shape[0], e.shape[0]
        has_target = targets >= 0  # (M,)
        n_targets = int(has_target.sum())
        eps = float(label_smoothing)
        dt = h.dtype  # float32 in training; float64 in the exactness test
        hf, ef, bias = h, e.to(dt), bias.to(dt)
        hm, em = (hf.to(torch.bfloat16), ef.to(torch.bfloat16)) if bf16 else (hf, ef)
        grad_h = torch.empty_like(hf)
        grad_e = torch.zeros_like(ef)
        grad_bias = torch.zeros(n_items, dtype=dt, device=h.device)
        grad_src = torch.empty(rep_src.shape, dtype=dt, device=h.device)
        total = torch.zeros((), dtype=torch.float64, device=h.device)
        chunk = max(1, int(chunk))
        buf = torch.empty(min(chunk, max(m_rows, 1)), n_items, dtype=dt, device=h.device)
        for s in range(0, m_rows, chunk):
            c = min(chunk, m_rows - s)
            g = buf[:c]
            if bf16:
                g.copy_(hm[s:s + c] @ em.T).add_(bias)
            else:
                torch.addmm(bias, hf[s:s + c], ef.T, out=g)  # (c, N) logits
            idx = rep_idx[s:s + c]
            g.scatter_add_(1, idx, rep_src[s:s + c].to(dt))
            has = has_target[s:s + c]  # (c,)
            tgt = targets[s:s + c].clamp(min=0)
            target_logit = g.gather(1, tgt[:, None]).squeeze(1)
            mean_logit = g.mean(1) if eps > 0 else None
            row_max = g.max(1).values
            g.sub_(row_max[:, None]).exp_()
            denom = g.sum(1)
            g.div_(denom[:, None])  # softmax
            lse = row_max + denom.log()
            nll = lse - target_logit
            if mean_logit is not None:
                nll = (1.0 - eps) * nll + eps * (lse - mean_logit)
            total += nll[has].sum(dtype=torch.float64)
            # d (sum of row losses) / d logits = softmax - smoothed one-hot (rows with a target), plus
            # a * (onehot - softmax) per avoided item (a = w p / (1 - p))
            keep = has.to(dt)  # (c,)
            a = None
            if avoid_idx is not None and avoid_w is not None:
                aidx, aw = avoid_idx[s:s + c], avoid_w[s:s + c].to(dt)  # (c, K)
                p = g.gather(1, aidx).clamp(max=1.0 - 1e-6)  # (c, K)
                total += (aw * -torch.log1p(-p)).sum(dtype=torch.float64)
                a = aw * p / (1.0 - p)
                keep = keep - a.sum(1)
            g.mul_(keep[:, None])
            rows = torch.arange(c, device=g.device)[has]
            g[rows, tgt[has]] -= 1.0 - eps
            if eps > 0:
                g.sub_((eps / n_items) * has.to(dt)[:, None])
            if a is not None:
                g.scatter_add_(1, aidx, a)
            grad_h[s:s + c] = g @ ef
            grad_e.addmm_(g.T, hf[s:s + c])
            grad_bias += g.sum(0)
            grad_src[s:s + c] = g.gather(1, idx)
        ctx.save_for_backward(grad_h, grad_e, grad_bias, grad_src)
        ctx.m_rows = max(n_targets, 1)
        ctx.dtypes = (h.dtype, e.dtype, bias.dtype, rep_src.dtype)
        return (total / ctx.m_rows).to(h.dtype)

    @staticmethod
    def backward(ctx: Any, grad_out: torch.Tensor) -> tuple[Any, ...]:  # type: ignore[override]
        grad_h, grad_e, grad_bias, grad_src = ctx.saved_tensors
        scale = grad_out / ctx.m_rows
        dh, de, db, ds = ctx.dtypes
        return ((grad_h * scale).to(dh), (grad_e * scale).to(de), (grad_bias * scale).to(db), None,
                (grad_src * scale).to(ds), None, None, None, None, None, None)


def full_softmax_ce(
    h: torch.Tensor,
    e: torch.Tensor,
    bias: torch.Tensor,
    rep_idx: torch.Tensor,
    rep_src: torch.Tensor,
    targets: torch.Tensor,
    label_smoothing: float = 0.0,
    bf16: bool = False,
    chunk: int = DEFAULT_CHUNK,
    avoid_idx: torch.Tensor | None = None,
    avoid_w: torch.Tensor | None = None,
) -> torch.Tensor:
    """Mean cross-entropy over all N items (plus the not-to-recommend term of ``avoid_idx`` /
    ``avoid_w``); see :class:`FullSoftmaxCE`."""
    return FullSoftmaxCE.apply(h, e, bias, rep_idx, rep_src, targets, label_smoothing, bf16, chunk, avoid_idx, avoid_w)


def reference_full_softmax_ce(
    h: torch.Tensor,
    e: torch.Tensor,
    bias: torch.Tensor,
    rep_idx: torch.Tensor,
    rep_src: torch.Tensor,
    targets: torch.Tensor,
    label_smoothing: float = 0.0,
    avoid_idx: torch.Tensor | None = None,
    avoid_w: torch.Tensor | None = None,
) -> torch.Tensor:
    """Plain-PyTorch reference for :func:`full_softmax_ce` (fp32)."""
    logits = h @ e.T + bias
    logits = logits.scatter_add(1, rep_idx, rep_src)
    has = targets >= 0
    ce = torch.nn.functional.cross_entropy(logits[has], targets[has], label_smoothing=label_smoothing, reduction="sum")
    if avoid_idx is not None and avoid_w is not None:
        p = torch.softmax(logits, 1).gather(1, avoid_idx)
        ce = ce + (avoid_w * -torch.log1p(-p)).sum()
    return ce / max(int(has.sum()), 1)
