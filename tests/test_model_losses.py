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


@pytest.mark.parametrize("chunk", [3, 512])
@pytest.mark.parametrize("smoothing", [0.0, 0.1])
def test_not_to_recommend_term_matches_reference(smoothing: float, chunk: int) -> None:
    """Rows with items not to recommend (one without a target, a duplicate item, unused slots):
    the chunked loss and its gradients equal the plain PyTorch version."""
    g = torch.Generator().manual_seed(3)
    m, n, d, k = 8, 13, 5, 4
    h = torch.randn(m, d, generator=g, dtype=torch.float64)
    e = torch.randn(n, d, generator=g, dtype=torch.float64)
    b = torch.randn(n, generator=g, dtype=torch.float64)
    idx, src = torch.randint(0, n, (m, 2), generator=g), torch.randn(m, 2, generator=g, dtype=torch.float64)
    tgt = torch.randint(0, n, (m,), generator=g)
    tgt[[2, 5]] = -1  # rows that only push items down
    avoid = torch.randint(0, n, (m, k), generator=g)
    avoid[:, 1] = avoid[:, 0]
    weights = torch.rand(m, k, generator=g, dtype=torch.float64)
    weights[0] = 0.0
    weights[3, 2:] = 0.0
    grads = []
    for fn in (lambda *a: full_softmax_ce(*a, smoothing, chunk=chunk, avoid_idx=avoid, avoid_w=weights),
               lambda *a: reference_full_softmax_ce(*a, smoothing, avoid_idx=avoid, avoid_w=weights)):
        args = [t.clone().requires_grad_(True) for t in (h, e, b)]
        s = src.clone().requires_grad_(True)
        loss = fn(args[0], args[1], args[2], idx, s, tgt)
        (loss * 2.0).backward()
        grads.append((loss.item(), [a.grad for a in args + [s]]))
    (fused, fg), (ref, rg) = grads
    assert fused == pytest.approx(ref, rel=1e-10)
    for a, r in zip(fg, rg):
        assert torch.allclose(a, r, atol=1e-10)
    without = full_softmax_ce(h, e, b, idx, src, tgt, smoothing, chunk=chunk)
    assert fused > without.item()  # the term adds to the loss


def test_dislikes_in_training_lower_the_disliked_item_against_a_control() -> None:
    """A tiny training run with and without the not-to-recommend term, same seed and data: each
    group has one polarising item that half of its users view after four of the group's items and
    the other half dislike there. The cross-entropy alone learns from the views only (a dislike is
    no target), so it ranks the item first in that state; with the term the dislikes push it down."""
    import numpy as np

    from liverec.model.data import Sequences, input_windows
    from liverec.model.features import TYPE_IDS
    from liverec.model.negatives import NegativeFeedback
    from liverec.model.train import TrainConfig, train
    from liverec.model.transformer import ModelConfig

    torch.set_num_threads(1)
    rng = np.random.default_rng(0)
    groups, per = 4, 6  # items 1..24; item g * 6 + 1 is group g's polarising one
    view, dislike = TYPE_IDS["view"], TYPE_IDS["dislike"]
    seq_items, seq_types = [], []
    for _ in range(400):
        g = int(rng.integers(groups))
        seq_items.append([g * per + 2 + k for k in rng.permutation(per - 1)[:4]] + [g * per + 1])
        seq_types.append([view] * 4 + [view if rng.random() < 0.5 else dislike])
    seqs = Sequences.from_lists(seq_items, seq_types, None, [[1000.0 + 60 * k for k in range(5)]] * len(seq_items))
    probe_items = [[g * per + 2 + k for k in range(4)] for g in range(groups)]
    probe = input_windows(Sequences.from_lists(probe_items, [[view] * 4] * groups, None,
                                               [[1000.0 + 60 * k for k in range(4)]] * groups), 8)
    polarising = torch.arange(groups) * per  # 0-based
    mc = ModelConfig(n_items=groups * per, d_model=16, n_blocks=1, max_len=8, dropout=0.0)

    def p_polarising(negatives: NegativeFeedback | None) -> float:
        tc = TrainConfig(epochs=20, batch_size=32, lr=3e-3, warmup_steps=10, seed=0, negatives=negatives)
        model = train(mc, tc, seqs, progress=False).model
        with torch.no_grad():
            t = {k: torch.from_numpy(getattr(probe, k)) for k in ("items", "types", "values", "gaps")}
            p = torch.softmax(model.score_last(t["items"], t["types"], t["values"], t["gaps"]), 1)  # (G, N)
        return float(p.gather(1, polarising[:, None]).mean())

    control = p_polarising(None)
    pushed = p_polarising(NegativeFeedback(weight=1.0, neighbours=2, neighbour_weight=0.5, horizon=2))
    assert control > 0.5, f"the cross-entropy alone gives the polarising item {control:.3f}"
    assert pushed < 0.5 * control, f"p(polarising item): {pushed:.4f} with the term, {control:.4f} without"
