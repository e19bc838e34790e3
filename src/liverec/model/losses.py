"""Full-softmax cross-entropy over the whole catalog, written for CPU memory traffic.

The logits of one batch are an (M, N) matrix (M target positions, N items: ~13k x 3.7k floats
on MovieLens-1M). The built-in ``cross_entropy`` keeps the logits, a log-softmax copy and a
zero-filled gradient of the same size. :class:`FullSoftmaxCE` turns the logits buffer into the
softmax *in place* during the forward pass and reuses it as the gradient in the backward pass,
so one (M, N) buffer is alive per step. :func:`reference_full_softmax_ce` is the plain PyTorch
version it is tested against.

The logits are ``H @ E.T + bias`` plus a sparse *repeat term*: ``rep_src[m, j]`` is added to
item ``rep_idx[m, j]`` of row ``m`` (the items already in that row's prefix; entries with
``rep_src == 0`` and any index are no-ops).
"""

from __future__ import annotations

from typing import Any

import torch


def _logits(h: torch.Tensor, e: torch.Tensor, bias: torch.Tensor, bf16: bool) -> torch.Tensor:
    """(M, D) x (N, D) -> (M, N) float32 logits plus bias."""
    if bf16:
        out = (h.to(torch.bfloat16) @ e.to(torch.bfloat16).T).float()
    else:
        out = h @ e.T
    return out.add_(bias)


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
    ) -> torch.Tensor:
        m_rows, n_items = h.shape[0], e.shape[0]
        logits = _logits(h, e, bias, bf16)  # (M, N)
        logits.scatter_add_(1, rep_idx, rep_src.to(logits.dtype))
        target_logit = logits.gather(1, targets[:, None]).squeeze(1)  # (M,)
        mean_logit = logits.mean(1) if label_smoothing > 0 else None
        row_max = logits.max(1).values  # (M,)
        p = logits.sub_(row_max[:, None]).exp_()  # in place: exp(logit - max)
        denom = p.sum(1)  # (M,)
        p.div_(denom[:, None])  # in place: softmax
        lse = row_max + denom.log()
        nll = lse - target_logit
        if mean_logit is not None:
            loss = ((1.0 - label_smoothing) * nll + label_smoothing * (lse - mean_logit)).mean()
        else:
            loss = nll.mean()
        ctx.save_for_backward(h, e, p, rep_idx, targets)
        ctx.label_smoothing = label_smoothing
        ctx.bf16 = bf16
        ctx.n_items = n_items
        ctx.m_rows = m_rows
        return loss

    @staticmethod
    def backward(ctx: Any, grad_out: torch.Tensor) -> tuple[Any, ...]:  # type: ignore[override]
        h, e, g, rep_idx, targets = ctx.saved_tensors
        eps = ctx.label_smoothing
        # g is the saved softmax; turn it into d loss / d logits in place.
        rows = torch.arange(g.shape[0])
        g[rows, targets] -= 1.0 - eps
        if eps > 0:
            g.sub_(eps / ctx.n_items)
        g.mul_(grad_out / ctx.m_rows)
        if ctx.bf16:
            gb = g.to(torch.bfloat16)
            grad_h = (gb @ e.to(torch.bfloat16)).float()
            grad_e = (gb.T @ h.to(torch.bfloat16)).float()
        else:
            grad_h = g @ e
            grad_e = g.T @ h
        grad_bias = g.sum(0)
        grad_src = g.gather(1, rep_idx)
        return grad_h, grad_e, grad_bias, None, grad_src, None, None, None


def full_softmax_ce(
    h: torch.Tensor,
    e: torch.Tensor,
    bias: torch.Tensor,
    rep_idx: torch.Tensor,
    rep_src: torch.Tensor,
    targets: torch.Tensor,
    label_smoothing: float = 0.0,
    bf16: bool = False,
) -> torch.Tensor:
    """Mean cross-entropy over all N items; see :class:`FullSoftmaxCE`."""
    return FullSoftmaxCE.apply(h, e, bias, rep_idx, rep_src, targets, label_smoothing, bf16)


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
