"""On the real model at T=1, speculative decoding samples like vanilla decoding.

Per verification method: 150 seeded generations of 3 tokens on one prompt, with top-k 3 so the
vocabulary is small enough for a frequency test; a chi-square homogeneity test on the (token 2,
token 3) pairs against vanilla's must not reject. Tokens 2 and 3 come out of tree verification
(token 1 is sampled from the prefill's logits by both decoders alike). The draft is the shipped
trained HASS head, so drafted tokens are really accepted (checked), not just resampled.
"""

import pytest
import torch

from hass_sglang.checkpoint import load_draft
from hass_sglang.drafts import default_draft
from hass_sglang.errors import InvalidRequestError
from hass_sglang.vanilla import generate_vanilla
from hass_sglang.heads import build_head
from hass_sglang.sampling import SamplingParams
from hass_sglang.speculative import VERIFY_METHODS, SpeculativeDecoder
from hass_sglang.tree import TreeShape

pytestmark = pytest.mark.slow
RUNS = 150  # was 200: 4-6 min per method under CI's load
SP = SamplingParams(temperature=1.0, top_k=3)


def homogeneity_pvalue(a: list[tuple], b: list[tuple]) -> float:
    keys = sorted(set(a) | set(b))
    table = torch.tensor([[a.count(k) for k in keys], [b.count(k) for k in keys]], dtype=torch.float64)
    sparse = table.sum(0) < 10  # pool rare outcomes so the chi-square approximation holds
    table = torch.cat((table[:, ~sparse], table[:, sparse].sum(1, keepdim=True)), dim=1)
    table = table[:, table.sum(0) > 0]
    expected = table.sum(1, keepdim=True) * table.sum(0, keepdim=True) / table.sum()
    stat = ((table - expected) ** 2 / expected).sum()
    df = table.shape[1] - 1
    return float(torch.special.gammaincc(torch.tensor(df / 2.0, dtype=torch.float64), stat / 2.0))


@pytest.fixture(scope="module")
def prompt_and_vanilla(target):
    ids = target.chat_prompt_ids("List three colors.")  # the shipped draft is often accepted on it
    pairs = [tuple(generate_vanilla(target, ids, 3, SP, torch.Generator().manual_seed(s)).tokens[1:]) for s in range(RUNS)]
    return ids, pairs


@pytest.mark.parametrize("method", VERIFY_METHODS)
def test_speculative_sampling_matches_vanilla(target, prompt_and_vanilla, method):
    ids, vanilla = prompt_and_vanilla
    assert default_draft() is not None, "the shipped HASS draft is missing"
    head = load_draft(default_draft(), target.config)
    dec = SpeculativeDecoder(target, head, TreeShape(num_steps=2, topk=3, num_draft_tokens=7))
    spec, accepted = [], 0
    for s in range(RUNS):
        res = dec.generate(ids, 3, SP, verify=method, generator=torch.Generator().manual_seed(10_000 + s))
        assert len(res.tokens) == 3
        spec.append(tuple(res.tokens[1:]))
        accepted += res.target_forwards < 3  # prefill + one cycle: a drafted token was accepted
    assert len(set(vanilla)) > 3  # the test has something to compare
    assert accepted > RUNS // 10, f"only {accepted} of {RUNS} runs accepted a drafted token"
    assert homogeneity_pvalue(spec, vanilla) > 1e-3


def test_bad_sampling_input_is_refused(target):
    dec = SpeculativeDecoder(target, build_head("eagle", target.config, seed=0), TreeShape.chain(2))
    ids = target.chat_prompt_ids("hi")
    with pytest.raises(InvalidRequestError, match="unknown verification method"):
        dec.generate(ids, 4, SamplingParams(temperature=1.0), verify="typical")
