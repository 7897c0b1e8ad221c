"""End to end on a CPU host: a real `sglang.launch_server --speculative-algorithm HASS` (SmolLM2-135M
target; the shipped HASS draft when present, else a random EAGLE head built here) answers chat requests through the `openai` client, and at
T=0 its text equals SGLang's own non-speculative output; at T=1 the tree is verified by the
project's SpecInfer (installed through SGLang's hook registry), which the server log shows. One server at a time, fp32, small tree.
"""

import json
import os
import urllib.request
from pathlib import Path

import pytest

import hass_sglang
from hass_sglang.checkpoint import save_draft
from hass_sglang.eval_sets import load_questions
from hass_sglang.heads import build_head
from hass_sglang.sglang_cpu.serve import cpu_server

pytestmark = pytest.mark.slow

SETS = ("mt_bench", "gsm8k")
PER_SET = 2
MAX_TOKENS = 32
SPECINFER_LOG = "T>0 tree verification by hass_sglang.verify.verify_specinfer"


@pytest.fixture(scope="module")
def prompts():
    return [q.turns[0] for name in SETS for q in load_questions(name, limit=PER_SET)]


SHIPPED_DRAFT = Path(hass_sglang.__file__).parent / "drafts" / "smollm2-135m-hass-eagle"


@pytest.fixture(scope="module")
def draft(tmp_path_factory, target):
    """The shipped HASS draft when the checkout has it (HASS_CPU_E2E_DRAFT overrides), else a random head."""
    chosen = os.environ.get("HASS_CPU_E2E_DRAFT") or (str(SHIPPED_DRAFT) if SHIPPED_DRAFT.is_dir() else None)
    if chosen:
        return chosen, True
    return str(save_draft(build_head("eagle", target.config, seed=0), tmp_path_factory.mktemp("d") / "eagle",
                          target.config)), False


def _chat(client, prompt, stream=False, **kw):
    args = dict(model="default", messages=[{"role": "user", "content": prompt}], max_tokens=MAX_TOKENS,
                temperature=0, **kw)
    if not stream:
        return client.chat.completions.create(**args).choices[0].message.content
    return "".join(c.choices[0].delta.content or "" for c in client.chat.completions.create(stream=True, **args)
                   if c.choices)


def _meta(url, text, temperature=0.0):
    body = {"text": text, "sampling_params": {"max_new_tokens": MAX_TOKENS, "temperature": temperature}}
    req = urllib.request.Request(url + "/generate", json.dumps(body).encode(), {"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=600) as r:
        return json.load(r)["meta_info"]


def _answers(url, prompts):
    import openai

    client = openai.OpenAI(base_url=url + "/v1", api_key="none", timeout=600)
    plain = [_chat(client, p) for p in prompts]
    streamed = _chat(client, prompts[0], stream=True)
    return plain, streamed, _meta(url, prompts[0])


def test_hass_on_cpu_matches_plain_decoding_at_t0_and_samples_with_specinfer_at_t1(target, draft, prompts, tmp_path, record_property):
    draft_path, trained = draft
    with cpu_server(str(target.path), log_path=tmp_path / "vanilla.log") as url:
        ref, ref_stream, _ = _answers(url, prompts)
    with cpu_server(str(target.path), draft_path, log_path=tmp_path / "hass.log") as url:
        got, got_stream, meta = _answers(url, prompts)
        assert SPECINFER_LOG not in (tmp_path / "hass.log").read_text()  # T=0 stays on the greedy verifier
        sampled = _meta(url, prompts[1], temperature=1.0)
    log = (tmp_path / "hass.log").read_text()
    assert SPECINFER_LOG in log, "T=1 verification did not go through hass_sglang.verify.verify_specinfer"
    assert sampled["spec_verify_ct"] > 0 and sampled["completion_tokens"] > 0
    assert all(ref), ref
    assert got == ref
    assert got_stream == ref_stream == ref[0]
    assert meta["spec_verify_ct"] > 0  # the speculative path ran
    if trained:  # drafts are accepted, and the committed text is still exactly plain decoding's
        assert meta["spec_accept_length"] > 1.1, meta
    record_property("spec_accept_length", meta.get("spec_accept_length"))
    print("spec meta_info:", {k: v for k, v in meta.items() if k.startswith("spec")})
