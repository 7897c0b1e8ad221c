"""Additive attention masks ([B=1, 1, Q, K] float, 0 = attend, -inf = blocked).

Masked logits are -inf, never 0 (the HASS reference's defect: a 0 lets masked keys through
with weight exp(0)). Every query sees at least itself, so no row is fully masked.
"""

from __future__ import annotations

import torch


def additive(allowed: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """bool [Q, K] (True = attend) -> [1, 1, Q, K] additive mask in `dtype`."""
    mask = torch.zeros(allowed.shape, dtype=dtype, device=allowed.device)
    mask.masked_fill_(~allowed, float("-inf"))
    return mask[None, None]


def causal_allowed(q_len: int, past_len: int, device=None) -> torch.Tensor:
    """bool [Q, past+Q]: query i (absolute index past+i) sees keys 0..past+i."""
    q = torch.arange(q_len, device=device)[:, None] + past_len
    k = torch.arange(past_len + q_len, device=device)[None, :]
    return k <= q


def causal_mask(q_len: int, past_len: int, dtype: torch.dtype, device=None) -> torch.Tensor:
    return additive(causal_allowed(q_len, past_len, device), dtype)


def tree_mask(ancestors: torch.Tensor, past_len: int, dtype: torch.dtype) -> torch.Tensor:
    """Tree attention: every node sees the whole committed prefix and its own ancestors (and itself).

    ancestors: bool [N, N] with ancestors[i, j] = node j is node i or one of its ancestors.
    Returns [1, 1, N, past_len + N].
    """
    n = ancestors.shape[0]
    prefix = torch.ones(n, past_len, dtype=torch.bool, device=ancestors.device)
    return additive(torch.cat((prefix, ancestors), dim=1), dtype)
