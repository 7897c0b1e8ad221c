"""HASS training math: losses against direct computations, context alignment against decoding."""

import pytest
import torch

from hass_sglang.heads import build_head
from hass_sglang.kv_cache import new_cache
from hass_sglang.train.losses import (
    feature_regression_loss,
    token_ce_loss,
    topk_accuracy,
    topk_distillation_from_teacher,
    topk_distillation_loss,
)
from hass_sglang.masks import causal_mask, context_alignment_allowed
from hass_sglang.train.align import aligned_forward, step_weight


def test_topk_loss_equals_direct_sum():
    gen = torch.Generator().manual_seed(0)
    tl, dl = torch.randn(2, 3, 11, generator=gen), torch.randn(2, 3, 11, generator=gen)
    w = torch.tensor([[1.0, 0.0, 1.0], [1.0, 1.0, 0.0]])
    got = topk_distillation_loss(tl, dl, 4, w)
    total, n = 0.0, 0
    for b in range(2):
        for t in range(3):
            if w[b, t]:
                p = torch.softmax(tl[b, t], -1)
                logq = torch.log_softmax(dl[b, t], -1)
                top = sorted(range(11), key=lambda v: -float(p[v]))[:4]
                total += -sum(float(p[v] * logq[v]) for v in top)
                n += 1
    assert abs(float(got) - total / n) < 1e-5


def test_losses_skip_tokens_outside_a_reduced_draft_vocabulary():
    gen = torch.Generator().manual_seed(2)
    dl = torch.randn(1, 2, 5, generator=gen)
    w = torch.ones(1, 2)
    top_p = torch.tensor([[[0.5, 0.3], [0.6, 0.2]]])
    idx = torch.tensor([[[3, -1], [-1, 1]]])  # -1: token not in the draft vocabulary
    logq = torch.log_softmax(dl, -1)
    want = (-(0.5 * logq[0, 0, 3]) - (0.2 * logq[0, 1, 1])) / 2
    assert abs(float(topk_distillation_from_teacher(top_p, idx, dl, w)) - float(want)) < 1e-6
    # CE counts only the position whose greedy token is in the vocabulary
    ce = token_ce_loss(dl, idx[..., 0], w)
    assert abs(float(ce) + float(logq[0, 0, 3])) < 1e-6
    assert float(topk_accuracy(torch.tensor([[-1, -1]]), dl, 5, w)) == 0.0


def test_masked_positions_never_contribute():
    gen = torch.Generator().manual_seed(1)
    pred, tgt = torch.randn(1, 4, 6, generator=gen), torch.randn(1, 4, 6, generator=gen)
    w = torch.tensor([[1.0, 1.0, 0.0, 0.0]])
    a = feature_regression_loss(pred, tgt, w)
    pred2 = pred.clone()
    pred2[:, 2:] += 100.0
    assert torch.equal(a, feature_regression_loss(pred2, tgt, w))
    logits = torch.randn(1, 4, 9, generator=gen)
    toks = torch.tensor([[1, 2, 3, 4]])
    logits2 = logits.clone()
    logits2[:, 3] = -logits2[:, 3]
    assert torch.equal(token_ce_loss(logits, toks, w), token_ce_loss(logits2, toks, w))


def test_alignment_mask_shape_and_padding():
    a = context_alignment_allowed(6, 3, torch.tensor([[1, 1, 1, 1, 0, 0]]))
    assert a.shape == (1, 1, 6, 18)
    assert not a[0, 0, :, 4].any() and not a[0, 0, :, 6 + 5].any()  # padded keys of steps 1 and 2
    assert a[0, 0, 5, 12 + 5]  # a padded query still sees itself
    assert context_alignment_allowed(5, 1).squeeze().equal(causal_mask(5, 0, torch.float32).squeeze() == 0)


def simulate_decoding(head, embeds_next, feats, steps):
    """Loop reference: for every start P, decode as the reference decoder does: committed pairs
    0..P-1 with target features, then pairs at P, P+1, ... fed with the draft's own outputs.
    Returns {(step, position): output}."""
    t = feats.shape[1]
    res = {}
    for start in range(1, t + 1):
        cache = new_cache()
        mask = causal_mask(start, 0, feats.dtype)
        out = head(embeds_next[:, :start], feats[:, :start], torch.arange(start)[None], cache, mask)
        res[(1, start - 1)] = out[0, -1]
        g = out[:, -1:]
        for d in range(1, steps):
            pos = start - 1 + d
            if pos >= t:
                break
            m = torch.zeros(1, 1, 1, start + d)
            out = head(embeds_next[:, pos : pos + 1], g, torch.tensor([[pos]]), cache, m)
            res[(d + 1, pos)] = out[0, 0]
            g = out
    return res


@pytest.mark.parametrize("head_type", ["eagle", "mtp"])
def test_aligned_forward_equals_decoding_loop_in_outputs_loss_and_gradients(target, head_type):
    torch.manual_seed(0)
    head = build_head(head_type, target.config, seed=4).double()
    t, steps = 7, 3
    embeds = torch.randn(1, t, 576, dtype=torch.float64)
    feats = torch.randn(1, t, 576, dtype=torch.float64)
    valid = torch.ones(1, t, dtype=torch.bool)
    outs = aligned_forward(head, embeds, feats, valid, steps)
    ref = simulate_decoding(head, embeds, feats, steps)
    for j in range(1, steps + 1):
        for pos in range(j - 1, t):
            assert torch.allclose(outs[j - 1][0, pos], ref[(j, pos)], atol=1e-9), (j, pos)
    # same loss and gradients as the loop
    probe = torch.randn(576, dtype=torch.float64)
    w = [step_weight(torch.ones(1, t), valid, j) for j in range(1, steps + 1)]
    loss_par = sum(((outs[j - 1][0] @ probe) * w[j - 1][0]).sum() for j in range(1, steps + 1))
    g_par = torch.autograd.grad(loss_par, list(head.parameters()))
    ref = simulate_decoding(head, embeds, feats, steps)
    loss_loop = sum((ref[(j, pos)] @ probe) * w[j - 1][0, pos] for j in range(1, steps + 1) for pos in range(j - 1, t))
    g_loop = torch.autograd.grad(loss_loop, list(head.parameters()))
    assert torch.allclose(loss_par, loss_loop, atol=1e-9)
    # (HF RMSNorm computes in fp32 even for fp64 inputs: hence the relative tolerance)
    assert all(float((a - b).norm()) <= 1e-6 * float(b.norm()) for a, b in zip(g_par, g_loop))


def test_padding_does_not_change_real_positions(target):
    head = build_head("eagle", target.config, seed=5).double()
    gen = torch.Generator().manual_seed(2)
    embeds = torch.randn(2, 6, 576, generator=gen, dtype=torch.float64)
    feats = torch.randn(2, 6, 576, generator=gen, dtype=torch.float64)
    valid = torch.tensor([[1] * 6, [1, 1, 1, 1, 0, 0]], dtype=torch.bool)
    padded = embeds.clone(), feats.clone()
    padded[0][1, 4:] = 1e3  # garbage in the padding must not leak into real positions
    padded[1][1, 4:] = -1e3
    a = aligned_forward(head, embeds, feats, valid, 3)
    b = aligned_forward(head, padded[0], padded[1], valid, 3)
    for j in range(3):
        assert torch.allclose(a[j][1, :4], b[j][1, :4], atol=1e-9)
    w = step_weight(torch.ones(2, 6), valid, 2)
    assert w[1].tolist() == [0, 1, 1, 0, 0, 0] and w[0].tolist() == [0, 1, 1, 1, 1, 0]
