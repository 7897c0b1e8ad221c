"""Training losses for draft heads (EAGLE-2 and HASS), as pure functions over masked positions.

All take a `weight` [B, T] (1 = position counts) and average over the counted positions.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def _masked_mean(per_position: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    w = weight.to(per_position.dtype)
    return (per_position * w).sum() / w.sum().clamp(min=1.0)


def feature_regression_loss(pred: torch.Tensor, target: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """EAGLE's SmoothL1 between predicted and target features ([B, T, H])."""
    per = F.smooth_l1_loss(pred.float(), target.float(), reduction="none").mean(-1)
    return _masked_mean(per, weight)


def token_ce_loss(draft_logits: torch.Tensor, target_tokens: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """Cross-entropy of the draft ([B, T, V] logits) against the target's next token ([B, T] ids)."""
    per = F.cross_entropy(draft_logits.float().flatten(0, 1), target_tokens.flatten(), reduction="none")
    return _masked_mean(per.view(target_tokens.shape), weight)


def topk_distillation_loss(target_logits: torch.Tensor, draft_logits: torch.Tensor, k: int, weight: torch.Tensor) -> torch.Tensor:
    """HASS harmonized objective distillation: -sum_{v in TopK(p)} p(v) log q(v), with p the target's
    full softmax and q the draft's (paper: K = 10)."""
    p = torch.softmax(target_logits.float(), dim=-1)
    top_p, top_i = p.topk(k, dim=-1)
    logq = torch.log_softmax(draft_logits.float(), dim=-1).gather(-1, top_i)
    return _masked_mean(-(top_p * logq).sum(-1), weight)


def topk_accuracy(target_tokens: torch.Tensor, draft_logits: torch.Tensor, k: int, weight: torch.Tensor) -> torch.Tensor:
    """Share of counted positions whose target token is in the draft's top-k."""
    hit = (draft_logits.topk(k, dim=-1).indices == target_tokens[..., None]).any(-1)
    return _masked_mean(hit.float(), weight)
