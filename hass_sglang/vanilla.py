"""Vanilla autoregressive decoding (the baseline) and what every decoder returns.

Two acceptance metrics, not to be confused:
- `GenerationResult.tau`: generated tokens per target forward, the prefill forward included
  (the EAGLE/HASS papers' tau; 1.0 for vanilla decoding). The reference decoder reports this.
- `GenerationResult.accept_length`: generated tokens per verify cycle, what SGLang reports as
  `spec_accept_length` (completion tokens / `spec_verify_ct`; the token sampled at prefill is
  counted among the completion tokens, its forward is not a verify step).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import torch

from hass_sglang.errors import InvalidRequestError
from hass_sglang.kv_cache import new_cache
from hass_sglang.sampling import SamplingParams, sample_token
from hass_sglang.target import Target


@dataclass
class GenerationResult:
    tokens: list[int]  # generated ids (stops after an EOS token, which is included)
    target_forwards: int  # prefill + one per decode step / verify cycle
    seconds: float
    accept_lengths: list[int] = field(default_factory=list)  # tokens emitted per verify cycle (accepted + bonus)
    draft_seconds: float = 0.0
    verify_seconds: float = 0.0

    @property
    def tau(self) -> float:
        """Generated tokens per target forward, prefill included (1.0 for vanilla decoding)."""
        return len(self.tokens) / max(self.target_forwards, 1)

    @property
    def accept_length(self) -> float:
        """Generated tokens per verify cycle: SGLang's spec_accept_length (1.0 without cycles)."""
        if not self.accept_lengths:
            return 1.0
        return len(self.tokens) / len(self.accept_lengths)

    @property
    def tokens_per_second(self) -> float:
        return len(self.tokens) / self.seconds if self.seconds > 0 else float("inf")


def check_request(prompt_ids, max_new_tokens: int, max_context: int) -> list[int]:
    """Validate a request; returns the prompt as a list of ints."""
    if prompt_ids is None or len(prompt_ids) == 0:
        raise InvalidRequestError("empty prompt")
    if not isinstance(max_new_tokens, int) or max_new_tokens <= 0:
        raise InvalidRequestError(f"max_new_tokens must be a positive integer, got {max_new_tokens!r}")
    ids = [int(t) for t in prompt_ids]
    if len(ids) + max_new_tokens > max_context:
        raise InvalidRequestError(
            f"prompt ({len(ids)} tokens) + max_new_tokens ({max_new_tokens}) exceeds the model's context "
            f"of {max_context} tokens"
        )
    return ids


def stop_ids(target: Target, ignore_eos: bool) -> set[int]:
    """EOS ids that end a generation (none with ignore_eos, as SGLang's sampling param of that name)."""
    return set() if ignore_eos else target.eos_token_ids


def truncate_output(tokens: list[int], max_new_tokens: int, eos: set[int]) -> tuple[list[int], bool]:
    """Cut at max_new_tokens and after the first EOS; returns (tokens, finished)."""
    for i, t in enumerate(tokens[:max_new_tokens]):
        if t in eos:
            return tokens[: i + 1], True
    out = tokens[:max_new_tokens]
    return out, len(out) >= max_new_tokens


@torch.no_grad()
def generate_vanilla(
    target: Target,
    prompt_ids,
    max_new_tokens: int,
    sampling: SamplingParams | None = None,
    generator: torch.Generator | None = None,
    ignore_eos: bool = False,
) -> GenerationResult:
    """One target forward per token: the reference output and the speed baseline."""
    sampling = sampling or SamplingParams()
    ids = check_request(prompt_ids, max_new_tokens, target.max_context)
    eos = stop_ids(target, ignore_eos)
    start = time.perf_counter()
    cache = new_cache()
    x = torch.tensor([ids], device=target.device)
    pos = torch.arange(len(ids), device=target.device)[None]
    out: list[int] = []
    forwards = 0
    while True:
        hidden = target.hidden(x, pos, cache)
        forwards += 1
        token = int(sample_token(target.logits(hidden[:, -1]), sampling, generator)[0])
        out.append(token)
        if token in eos or len(out) >= max_new_tokens:
            break
        x = torch.tensor([[token]], device=target.device)
        pos = pos[:, -1:] + 1
    return GenerationResult(tokens=out, target_forwards=forwards, seconds=time.perf_counter() - start)
