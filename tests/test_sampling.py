import math

import pytest
import torch

from hass_sglang.errors import InvalidRequestError
from hass_sglang.sampling import SamplingParams, draw, logits_problem, make_sampling, sample_token, target_probs


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


def test_draw_follows_unnormalised_weights_and_never_draws_a_zero_weight():
    """Inverse-CDF draws (one uniform per row): frequencies match the weights, zero weights (masked
    tokens, rejected siblings) never come out, the same seed gives the same tokens."""
    w = torch.tensor([0.0, 3.0, 0.0, 1.0, 0.0])  # sums to 4, not 1
    draws = draw(w.expand(40000, 5), torch.Generator().manual_seed(1))
    freq = torch.bincount(draws, minlength=5).float() / draws.numel()
    assert torch.allclose(freq, torch.tensor([0.0, 0.75, 0.0, 0.25, 0.0]), atol=0.01)
    assert freq[[0, 2, 4]].sum() == 0
    again = draw(w.expand(40000, 5), torch.Generator().manual_seed(1))
    assert torch.equal(draws, again) and draw(torch.rand(2, 3, 7)).shape == (2, 3)


def test_draw_at_the_top_of_the_cdf_takes_the_last_weighted_token(monkeypatch):
    """A uniform that rounds up to the row's total would run past the vocabulary: it gets the last
    token of non-zero weight, never a trailing zero-weight one."""
    monkeypatch.setattr(torch, "rand", lambda shape, **kw: torch.ones(shape, dtype=kw.get("dtype")))
    assert draw(torch.tensor([[0.2, 0.0, 0.5, 0.0, 0.0], [1.0, 0.0, 0.0, 0.0, 0.0]])).tolist() == [2, 0]


def test_draw_refuses_rows_without_weight():
    for bad in ([0.0, 0.0], [1.0, math.nan], [math.inf, 1.0]):
        with pytest.raises(ValueError, match="positive finite"):
            draw(torch.tensor([[0.5, 0.5], bad]))


def test_logits_problem_names_nan_inf_and_fully_masked_rows():
    x = torch.zeros(5, 6)
    x[1, 2], x[2, 5], x[3] = math.nan, math.inf, -math.inf
    x[4, :5] = -math.inf  # one allowed token: fine
    for dtype in (torch.float32, torch.bfloat16):
        assert logits_problem(x.to(dtype)).tolist() == [False, True, True, True, False]
