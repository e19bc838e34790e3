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
        targets: torch.Tensor,  # (M,) int64 in [0, N)
        label_smoothing: float,
        bf16: bool,
        chunk: int = DEFAULT_CHUNK,
    ) -> torch.Tensor:
        m_rows, n_items = h.shape[0], e.shape[0]
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
            tgt = targets[s:s + c]
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
            total += nll.sum(dtype=torch.float64)
            # d (sum of row losses) / d logits = softmax - smoothed one-hot
            g[torch.arange(c, device=g.device), tgt] -= 1.0 - eps
            if eps > 0:
                g.sub_(eps / n_items)
            grad_h[s:s + c] = g @ ef
            grad_e.addmm_(g.T, hf[s:s + c])
            grad_bias += g.sum(0)
            grad_src[s:s + c] = g.gather(1, idx)
        ctx.save_for_backward(grad_h, grad_e, grad_bias, grad_src)
        ctx.m_rows = max(m_rows, 1)
        ctx.dtypes = (h.dtype, e.dtype, bias.dtype, rep_src.dtype)
        return (total / ctx.m_rows).to(h.dtype)

    @staticmethod
    def backward(ctx: Any, grad_out: torch.Tensor) -> tuple[Any, ...]:  # type: ignore[override]
        grad_h, grad_e, grad_bias, grad_src = ctx.saved_tensors
        scale = grad_out / ctx.m_rows
        dh, de, db, ds = ctx.dtypes
        return ((grad_h * scale).to(dh), (grad_e * scale).to(de), (grad_bias * scale).to(db), None,
                (grad_src * scale).to(ds), None, None, None, None)


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
) -> torch.Tensor:
    """Mean cross-entropy over all N items; see :class:`FullSoftmaxCE`."""
    return FullSoftmaxCE.apply(h, e, bias, rep_idx, rep_src, targets, label_smoothing, bf16, chunk)


def reference_full_softmax_ce(
    h: torch.Tensor,
    e: torch.Tensor,
    bias: torch.Tensor,
    rep_idx: torch.Tensor,
    rep_src: torch.Tensor,
    targets: torch.Tensor,
    label_smoothing: float = 0.0,
) -> torch.Tensor:
    """Plain-PyTorch reference for :func:`full_softmax_ce` (fp32)."""
    logits = h @ e.T + bias
    logits = logits.scatter_add(1, rep_idx, rep_src)
    return torch.nn.functional.cross_entropy(logits, targets, label_smoothing=label_smoothing)
