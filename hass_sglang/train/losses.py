"""Training losses for draft heads (EAGLE-2 and HASS), as pure functions over masked positions.

All take a `weight` [B, T] (1 = position counts) and average over the counted positions; a
`denominator` replaces this batch's count (data parallelism: the count over every rank's share of
the global batch, so the mean is the one a single process would take over the whole batch).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def _masked_mean(per_position: torch.Tensor, weight: torch.Tensor, denominator: torch.Tensor | None = None) -> torch.Tensor:
    w = weight.to(per_position.dtype)
    den = w.sum() if denominator is None else denominator
    return (per_position * w).sum() / den.clamp(min=1.0)


def feature_regression_loss(pred: torch.Tensor, target: torch.Tensor, weight: torch.Tensor,
                            denominator: torch.Tensor | None = None) -> torch.Tensor:
    """EAGLE's SmoothL1 between predicted and target features ([B, T, H])."""
    per = F.smooth_l1_loss(pred.float(), target.float(), reduction="none").mean(-1)
    return _masked_mean(per, weight, denominator)


def token_ce_loss(draft_logits: torch.Tensor, target_tokens: torch.Tensor, weight: torch.Tensor,
                  denominator: torch.Tensor | None = None) -> torch.Tensor:
    """Cross-entropy of the draft ([B, T, V] logits) against the target's next token ([B, T] indices
    into the draft vocabulary; -1 = not in a reduced draft vocabulary, no loss there)."""
    per = F.cross_entropy(draft_logits.float().flatten(0, 1), target_tokens.flatten(), reduction="none", ignore_index=-1)
    return _masked_mean(per.view(target_tokens.shape), ce_weight(weight, target_tokens), denominator)


def ce_weight(weight: torch.Tensor, target_tokens: torch.Tensor) -> torch.Tensor:
    """The positions the cross-entropy counts: those whose target token the draft can propose."""
    return weight * (target_tokens >= 0)


def teacher_topk(target_logits: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The target's top-k probabilities and token ids ([..., k] each, descending; index 0 is the
    greedy token). Computed once per feature set, so training never runs the 49152-row lm_head."""
    p = torch.softmax(target_logits.float(), dim=-1)
    top_p, top_i = p.topk(k, dim=-1)
    return top_p, top_i


def topk_distillation_from_teacher(
    top_p: torch.Tensor, top_idx: torch.Tensor, draft_logits: torch.Tensor, weight: torch.Tensor,
    denominator: torch.Tensor | None = None,
) -> torch.Tensor:
    """HASS harmonized objective distillation: -sum_{v in TopK(p)} p(v) log q(v), with the target's
    top-K (`teacher_topk`) given as draft-vocabulary indices; an index of -1 (a token outside a
    reduced draft vocabulary, which the draft can never propose) contributes nothing."""
    inside = top_idx >= 0
    logq = torch.log_softmax(draft_logits.float(), dim=-1).gather(-1, top_idx.clamp(min=0))
    return _masked_mean(-(top_p * logq * inside).sum(-1), weight, denominator)


def topk_distillation_loss(target_logits: torch.Tensor, draft_logits: torch.Tensor, k: int, weight: torch.Tensor) -> torch.Tensor:
    """The same loss from full target logits (full draft vocabulary); paper: K = 10."""
    top_p, top_i = teacher_topk(target_logits, k)
    return topk_distillation_from_teacher(top_p, top_i, draft_logits, weight)


def topk_accuracy(target_tokens: torch.Tensor, draft_logits: torch.Tensor, k: int, weight: torch.Tensor,
                  denominator: torch.Tensor | None = None) -> torch.Tensor:
    """Share of counted positions whose target token is in the draft's top-k (a token outside a
    reduced draft vocabulary, index -1, is a miss)."""
    hit = (draft_logits.topk(k, dim=-1).indices == target_tokens[..., None]).any(-1)
    return _masked_mean(hit.float(), weight, denominator)
