"""Sampling parameters and logit processing, shared by vanilla and speculative decoding.

One definition of "the target distribution" for every decoder: SGLang's (its pytorch sampler, and
flashinfer's with `filter_apply_order="joint"`): temperature, then a token is kept when it is among
the top-k AND the probability mass ranked above it is at most top-p — top-p measured on the full
distribution, not on the top-k renormalised one (HF transformers' order). Temperature 0 means greedy.
"""

from __future__ import annotations

import math

import torch
from pydantic import BaseModel, ConfigDict, field_validator

from hass_sglang.errors import InvalidRequestError


class SamplingParams(BaseModel):
    """Validated sampling settings (unknown fields are rejected)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    temperature: float = 0.0
    top_p: float = 1.0
    top_k: int = 0  # 0 = off

    @field_validator("temperature")
    @classmethod
    def _temperature(cls, v: float) -> float:
        if not math.isfinite(v) or v < 0:
            raise ValueError(f"temperature must be a finite number >= 0, got {v}")
        return v

    @field_validator("top_p")
    @classmethod
    def _top_p(cls, v: float) -> float:
        if not (0.0 < v <= 1.0):
            raise ValueError(f"top_p must be in (0, 1], got {v}")
        return v

    @field_validator("top_k")
    @classmethod
    def _top_k(cls, v: int) -> int:
        if v < 0:
            raise ValueError(f"top_k must be >= 0 (0 disables it), got {v}")
        return v

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0


def make_sampling(temperature: float = 0.0, top_p: float = 1.0, top_k: int = 0) -> SamplingParams:
    """SamplingParams from user values, with pydantic's errors turned into InvalidRequestError."""
    try:
        return SamplingParams(temperature=temperature, top_p=top_p, top_k=top_k)
    except Exception as exc:
        raise InvalidRequestError(str(exc)) from exc


def logits_problem(logits: torch.Tensor) -> torch.Tensor:
    """[..., V] -> [...] bool: rows no distribution can come from. -inf is a valid logit (a grammar
    / JSON-mode mask, a logit bias, a top-k or top-p cut: the token is not allowed); NaN, +inf or
    a row with no allowed token is not."""
    # One pass: a row's max is NaN if it holds a NaN, +inf if it holds +inf, -inf if nothing is allowed.
    return ~torch.isfinite(logits.amax(-1))


def check_finite(logits: torch.Tensor) -> None:
    """Refuse logits no distribution can come from (`logits_problem`); masked (-inf) entries pass."""
    bad = logits_problem(logits)
    if bool(bad.any()):
        kind = "NaN" if torch.isnan(logits).any() else "+inf" if torch.isposinf(logits).any() else "no allowed token"
        raise InvalidRequestError(f"logits contain {kind} in {int(bad.sum())} row(s)")


def target_probs(logits: torch.Tensor, sp: SamplingParams) -> torch.Tensor:
    """[..., V] logits -> [..., V] probabilities of the sampling distribution (non-greedy)."""
    check_finite(logits)
    probs = torch.softmax(logits.float() / sp.temperature, dim=-1)
    top_k = sp.top_k if 0 < sp.top_k < logits.shape[-1] else 0
    if sp.top_p < 1.0:
        sorted_p, order = probs.sort(dim=-1, descending=True)
        # SGLang's rule: drop a token when the mass ranked above it exceeds top_p (the top token
        # always stays), and when its rank is top_k or later; both on the same full ranking.
        drop_sorted = (sorted_p.cumsum(-1) - sorted_p) > sp.top_p
        if top_k:
            drop_sorted[..., top_k:] = True
        probs = probs.masked_fill(torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted), 0.0)
    elif top_k:
        kth = torch.topk(probs, top_k, dim=-1).values[..., -1:]
        probs = probs.masked_fill(probs < kth, 0.0)
    else:
        return probs
    return probs / probs.sum(-1, keepdim=True)


def draw(probs: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """[..., V] non-negative weights (rows need not sum to 1) -> [...] one token per row, drawn by
    inverse CDF: one uniform number per row in float64. torch.multinomial draws V exponentials per
    row instead (~1 ms for a 49k vocabulary on CPU, per token). A token of weight 0 is never drawn."""
    flat = probs.reshape(-1, probs.shape[-1])
    cdf = flat.double().cumsum(-1)
    total = cdf[:, -1:]
    if not bool((total > 0).all() & total.isfinite().all()):
        raise ValueError("cannot draw from a row whose weights do not sum to a positive finite number")
    u = torch.rand((flat.shape[0], 1), generator=generator, dtype=torch.float64, device=flat.device) * total
    idx = torch.searchsorted(cdf, u, right=True).squeeze(-1)  # first token whose cdf passes u
    over = idx >= flat.shape[-1]  # u rounded up to the total: take the last token of non-zero weight
    if bool(over.any()):
        last = flat.shape[-1] - 1 - (flat.flip(-1) > 0).int().argmax(-1)
        idx = torch.where(over, last, idx)
    return idx.reshape(probs.shape[:-1])


def sample_token(logits: torch.Tensor, sp: SamplingParams, generator: torch.Generator | None = None) -> torch.Tensor:
    """[..., V] logits -> [...] token ids: argmax at temperature 0, else one draw."""
    if sp.greedy:
        check_finite(logits)
        return logits.argmax(dim=-1)
    return draw(target_probs(logits, sp), generator)
