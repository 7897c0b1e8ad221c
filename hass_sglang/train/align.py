"""HASS training computation: the multi-step aligned forward and the per-step objectives.

Harmonized context alignment (HASS Sec. 3.2): at aligning step j the pair at position t is the
one the draft builds at depth j-1 during decoding: its input feature is the draft's own step-(j-1)
prediction, and it attends to the committed prefix (step-1 keys, built from target features) plus
the pairs the draft built on the way (one key from each earlier step). One forward per step over
all positions, with `masks.context_alignment_mask` over the concatenated keys of steps 1..j (kept
in a transformers cache between steps), never a Python loop over positions.

Harmonized objective distillation (HASS Sec. 3.1): besides EAGLE's SmoothL1 feature regression and
cross-entropy to the target's greedy token, -sum_{v in TopK(p)} p(v) log q(v) (`losses.py`); the
target's top-K comes precomputed with the features (`features.py`).
"""

from __future__ import annotations

import torch
from transformers import DynamicCache

from hass_sglang.heads import DraftHead, draft_logits
from hass_sglang.train.losses import feature_regression_loss, token_ce_loss, topk_accuracy, topk_distillation_from_teacher
from hass_sglang.masks import context_alignment_mask


def aligned_forward(
    head: DraftHead,
    embeds_next: torch.Tensor,  # [B, T, H] target embeddings of x_{t+1}
    features: torch.Tensor,  # [B, T, H] target features f_t
    valid: torch.Tensor,  # [B, T] bool, False on padding
    steps: int,
) -> list[torch.Tensor]:
    """Outputs [B, T, H] of aligning steps 1..steps (step 1 is plain EAGLE training)."""
    b, t, _ = features.shape
    cache = DynamicCache()
    pos = torch.arange(t, device=features.device)[None].expand(b, t)
    prev = features
    outs = []
    for j in range(1, steps + 1):
        mask = context_alignment_mask(t, j, embeds_next.dtype, valid.cpu()).to(features.device)
        out = head(embeds_next, prev, pos, cache, mask)
        outs.append(out)
        # Step j+1's pair at t takes the step-j prediction of f_t, made by the pair at t-1. Position 0
        # has no such prediction; its rows are never counted (see step_weight).
        prev = torch.cat((features[:, :1], out[:, :-1]), dim=1)
    return outs


def step_weight(loss_mask: torch.Tensor, valid: torch.Tensor, step: int) -> torch.Tensor:
    """[B, T] weight of the pair at t in step `step`: it predicts f_{t+1}, which must exist, be real
    and lie in an assistant span; positions t < step-1 have no decoding counterpart."""
    b, t = loss_mask.shape
    w = torch.zeros(b, t, dtype=torch.float32, device=loss_mask.device)
    w[:, :-1] = (loss_mask[:, 1:].bool() & valid[:, 1:]).float()
    w[:, : step - 1] = 0.0
    return w


def step_losses(
    out: torch.Tensor,  # [B, T, H] one step's predicted features
    features: torch.Tensor,  # [B, T, H] target features
    teacher_p: torch.Tensor,  # [B, T, K] target's top-K probabilities of x_{t+2} (row t), descending
    teacher_idx: torch.Tensor,  # [B, T, K] their draft-vocabulary indices (-1: outside the draft vocabulary)
    draft_lm_weight: torch.Tensor,  # [V_draft, H] frozen lm_head rows the draft scores
    weight: torch.Tensor,  # [B, T]
    with_topk: bool,
    denominators: tuple[torch.Tensor, torch.Tensor] | None = None,  # (positions, CE positions) over all ranks
) -> dict[str, torch.Tensor]:
    nxt = torch.cat((features[:, 1:], features[:, -1:]), dim=1)
    logits = draft_logits(out, draft_lm_weight)
    greedy = teacher_idx[..., 0]
    den, den_ce = denominators if denominators is not None else (None, None)
    res = {
        "regression": feature_regression_loss(out, nxt, weight, den),
        "ce": token_ce_loss(logits, greedy, weight, den_ce),
        "top1": topk_accuracy(greedy, logits, 1, weight, den),
        "top3": topk_accuracy(greedy, logits, 3, weight, den),
    }
    if with_topk:
        res["topk"] = topk_distillation_from_teacher(teacher_p, teacher_idx, logits, weight, den)
    return res


def step_denominators(weights: list[torch.Tensor], greedy: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Per aligning step, (counted positions, positions the CE counts) of this rank's share, as one
    tensor so one all_reduce gives the global batch's counts."""
    from hass_sglang.train.losses import ce_weight

    return [(w.sum(), ce_weight(w, greedy).sum()) for w in weights]


class AlignedDraft(torch.nn.Module):
    """The head and HASS's aligned multi-step forward as one module: one forward and one backward
    per batch, which is what DistributedDataParallel and FSDP2 wrap."""

    def __init__(self, head: DraftHead, steps: int):
        super().__init__()
        self.head, self.steps = head, steps

    def forward(self, embeds_next, features, valid) -> list[torch.Tensor]:
        return aligned_forward(self.head, embeds_next, features, valid, self.steps)
