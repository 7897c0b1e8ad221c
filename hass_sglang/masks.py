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


def context_alignment_allowed(seq_len: int, step: int, valid: torch.Tensor | None = None) -> torch.Tensor:
    """HASS harmonized context alignment (Sec. 3.2), aligning step `step` (1-based), as bool
    [B, 1, T, step*T] over keys [KV of step 1 | KV of step 2 | ... | KV of step `step`].

    At decoding time the pair at position t drafted at depth step-1 sees the committed prefix
    (pairs built from target features: step-1 keys at positions <= t - step + 1, a shifted lower
    triangle) and the pairs the draft itself built at depths 1..step-1 on the way (step-i keys at
    position t - (step - i) only, a shifted diagonal per step). `valid` [B, T] marks real
    (non-padding) positions: padded keys are never attended. Queries at t < step - 1 have no
    decoding counterpart; they see only themselves and must be left out of the loss.
    """
    q = torch.arange(seq_len)[:, None]
    k = torch.arange(seq_len)[None, :]
    blocks = [k <= q - step + 1] + [k == q - (step - i) for i in range(2, step + 1)]
    allowed = torch.cat(blocks, dim=1)[None, None]  # [1, 1, T, step*T]; the last block's diagonal is "itself"
    if valid is not None:
        allowed = allowed & valid.bool().repeat(1, step)[:, None, None, :]
        rows = torch.arange(seq_len)
        allowed[:, :, rows, (step - 1) * seq_len + rows] = True  # padded queries still see themselves
    return allowed


def context_alignment_mask(seq_len: int, step: int, dtype: torch.dtype, valid: torch.Tensor | None = None) -> torch.Tensor:
    allowed = context_alignment_allowed(seq_len, step, valid)
    mask = torch.zeros(allowed.shape, dtype=dtype)
    return mask.masked_fill_(~allowed, float("-inf"))
