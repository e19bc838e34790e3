"""The chunked full-softmax cross-entropy equals the plain PyTorch reference (values and grads)."""

from __future__ import annotations

import pytest
import torch

from liverec.model.losses import full_softmax_ce, reference_full_softmax_ce


@pytest.mark.parametrize("chunk", [3, 7, 512])
@pytest.mark.parametrize("smoothing", [0.0, 0.1])
def test_fused_ce_matches_reference(smoothing: float, chunk: int) -> None:
    g = torch.Generator().manual_seed(0)
    m, n, d, j = 7, 11, 5, 4
    h = torch.randn(m, d, generator=g, dtype=torch.float64)
    e = torch.randn(n, d, generator=g, dtype=torch.float64)
    b = torch.randn(n, generator=g, dtype=torch.float64)
    idx = torch.randint(0, n, (m, j), generator=g)
    idx[:, 1] = idx[:, 0]  # duplicate index in a row: both contributions add
    src = torch.randn(m, j, generator=g, dtype=torch.float64)
    tgt = torch.randint(0, n, (m,), generator=g)
    args = [t.clone().requires_grad_(True) for t in (h, e, b)]
    src1 = src.clone().requires_grad_(True)
    loss = full_softmax_ce(args[0], args[1], args[2], idx, src1, tgt, smoothing, chunk=chunk)
    (loss * 3.0).backward()  # the incoming gradient scales the stored ones
    ref_args = [t.clone().requires_grad_(True) for t in (h, e, b)]
    src2 = src.clone().requires_grad_(True)
    ref = reference_full_softmax_ce(ref_args[0], ref_args[1], ref_args[2], idx, src2, tgt, smoothing)
    (ref * 3.0).backward()
    assert loss.item() == pytest.approx(ref.item(), rel=1e-10)
    for a, r in zip(args + [src1], ref_args + [src2]):
        assert torch.allclose(a.grad, r.grad, atol=1e-10)


def test_bf16_logits_close_to_fp32() -> None:
    g = torch.Generator().manual_seed(1)
    h, e = torch.randn(32, 16, generator=g), torch.randn(50, 16, generator=g)
    b = torch.zeros(50)
    idx, src = torch.zeros(32, 1, dtype=torch.int64), torch.zeros(32, 1)
    tgt = torch.randint(0, 50, (32,), generator=g)
    a = full_softmax_ce(h, e, b, idx, src, tgt, 0.0, bf16=True)
    r = full_softmax_ce(h, e, b, idx, src, tgt, 0.0, bf16=False)
    assert a.item() == pytest.approx(r.item(), rel=2e-2)
