import math

import pytest
import torch

from hass_sglang.errors import InvalidRequestError
from hass_sglang.sampling import SamplingParams, make_sampling, sample_token, target_probs


@pytest.mark.parametrize(
    "kwargs",
    [{"temperature": -0.1}, {"temperature": math.nan}, {"top_p": 0.0}, {"top_p": 1.5}, {"top_k": -1}],
)
def test_invalid_sampling_params_are_rejected(kwargs):
    with pytest.raises(InvalidRequestError):
        make_sampling(**kwargs)


def test_unknown_field_rejected():
    with pytest.raises(Exception):
        SamplingParams(temprature=1.0)


def test_greedy_is_argmax_and_nonfinite_logits_rejected():
    logits = torch.tensor([[0.1, 2.0, -1.0]])
    assert sample_token(logits, SamplingParams()).tolist() == [1]
    with pytest.raises(InvalidRequestError):
        sample_token(torch.tensor([[0.0, math.nan]]), SamplingParams())
    with pytest.raises(InvalidRequestError):
        sample_token(torch.tensor([[0.0, math.inf]]), SamplingParams(temperature=1.0))
    with pytest.raises(InvalidRequestError, match="no allowed token"):
        target_probs(torch.full((2, 3), -math.inf), SamplingParams(temperature=1.0))


def test_masked_logits_are_a_valid_distribution_over_the_allowed_tokens():
    """-inf is a grammar / JSON-mode / logit-bias mask, not an error: the masked tokens get 0 and
    the rest the renormalised distribution, at any temperature."""
    logits = torch.tensor([[1.0, -math.inf, 0.5, -math.inf], [0.2, 0.1, -math.inf, 3.0]])
    for temp in (0.5, 1.0, 2.0):
        p = target_probs(logits, SamplingParams(temperature=temp))
        allowed = torch.isfinite(logits)
        assert torch.equal(p > 0, allowed)
        want = torch.softmax(torch.where(allowed, logits / temp, -math.inf), -1)
        assert torch.allclose(p, want)
    assert sample_token(logits, SamplingParams()).tolist() == [0, 3]


def test_top_k_and_top_p_renormalise_the_kept_tokens():
    logits = torch.log(torch.tensor([0.5, 0.3, 0.15, 0.05]))
    p = target_probs(logits, SamplingParams(temperature=1.0, top_k=2))
    assert torch.allclose(p, torch.tensor([0.625, 0.375, 0.0, 0.0]))
    p = target_probs(logits, SamplingParams(temperature=1.0, top_p=0.79))
    assert torch.allclose(p, torch.tensor([0.625, 0.375, 0.0, 0.0]))  # 0.8 ranks above the 3rd: over 0.79
    p = target_probs(logits, SamplingParams(temperature=1.0, top_p=0.81))
    assert torch.allclose(p, torch.tensor([0.5, 0.3, 0.15, 0.0]) / 0.95)
    p = target_probs(logits, SamplingParams(temperature=2.0))
    want = torch.softmax(logits / 2.0, -1)
    assert torch.allclose(p, want)


def test_sampling_follows_the_distribution():
    logits = torch.log(torch.tensor([0.6, 0.3, 0.1]))
    gen = torch.Generator().manual_seed(0)
    draws = sample_token(logits.expand(40000, 3), SamplingParams(temperature=1.0), gen)
    freq = torch.bincount(draws, minlength=3).float() / draws.numel()
    assert torch.allclose(freq, torch.tensor([0.6, 0.3, 0.1]), atol=0.01)
