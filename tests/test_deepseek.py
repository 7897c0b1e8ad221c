"""DeepSeek-V3 with its own MTP (NextN) layer, end to end on a tiny random DeepSeek-V3 (MLA, MoE,
yarn RoPE; built in seconds by `hass_sglang.tiny_deepseek`, never downloaded or committed):

- the MTP head (transformers' DeepSeek-V3 layer) exports in the layout SGLang's
  DeepseekV3ForCausalLMNextN loads, and is checked like every draft (mismatches named);
- the reference decoder is lossless on the DeepSeek target at T=0 (fp32);
- the target's own MTP layer trains with the plain objective and continues with HASS (the seed-002
  recipe), on answers the tiny target wrote itself;
- (slow) SGLang on this CPU: plain, SGLang's own NextN (EAGLE, no draft path) and HASS with the
  trained layer, one server at a time: T=0 text = plain = reference decoder, accept length = the
  reference decoder's, T=1 distributed like plain, the HASS-trained layer accepted more than the
  untrained one.
"""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from hass_sglang.checkpoint import DEEPSEEK_MTP_ARCH, load_draft, load_target_mtp_layer, save_draft
from hass_sglang.errors import CheckpointMismatchError
from hass_sglang.heads import build_head
from hass_sglang.speculative import SpeculativeDecoder
from hass_sglang.target import TINY_DEEPSEEK_V3, load_target
from hass_sglang.tree import CPU_TREE, TreeShape
from hass_sglang.vanilla import generate_vanilla

PROMPTS = ["Write a short story about a lighthouse keeper.", "What is 17 times 23?", "Name three colors.",
           "Explain photosynthesis in one sentence.", "Give me a haiku about rain.", "List the planets.",
           "How do I boil an egg?", "Translate 'good morning' to French."]


@pytest.fixture(scope="module")
def ds():
    return load_target(TINY_DEEPSEEK_V3, dtype=torch.float32)


def test_tiny_deepseek_is_deepseek_v3_with_an_mtp_layer_on_disk(ds):
    cfg = ds.config
    assert cfg.model_type == "deepseek_v3" and cfg.kv_lora_rank and cfg.n_routed_experts > 1
    assert cfg.rope_parameters["rope_type"] == "yarn" and cfg.num_nextn_predict_layers == 1
    names = set(load_file(str(ds.path / "mtp.safetensors")))
    n = cfg.num_hidden_layers
    assert {f"model.layers.{n}.eh_proj.weight", f"model.layers.{n}.mlp.experts.7.down_proj.weight",
            f"model.layers.{n}.self_attn.kv_a_proj_with_mqa.weight", f"model.layers.{n}.shared_head.norm.weight"} <= names
    assert not any(k.startswith(f"model.layers.{n}.") for k in load_file(str(ds.path / "model.safetensors")))


def test_mtp_export_is_what_sglang_loads_and_mismatches_are_named(ds, tmp_path):
    head = load_target_mtp_layer(ds.path, ds.config)
    folder = save_draft(head, tmp_path / "mtp", ds.config)
    cfg = json.loads((folder / "config.json").read_text())
    n = ds.config.num_hidden_layers
    assert cfg["architectures"] == [DEEPSEEK_MTP_ARCH] and cfg["num_hidden_layers"] == n
    assert cfg["num_nextn_predict_layers"] == 1 and cfg["kv_lora_rank"] == ds.config.kv_lora_rank
    weights = load_file(str(folder / "model.safetensors"))
    assert all(k.startswith(f"model.layers.{n}.") for k in weights)
    assert f"model.layers.{n}.mlp.experts.0.gate_proj.weight" in weights  # per expert, R1's layout
    reloaded = load_draft(folder, ds.config)
    for (k, a), b in zip(head.state_dict().items(), reloaded.state_dict().values()):
        assert torch.equal(a, b), k
    r = subprocess.run([sys.executable, "-m", "hass_sglang.cli", "check-draft", str(folder), "--target", TINY_DEEPSEEK_V3],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0 and f"ok: mtp head ({DEEPSEEK_MTP_ARCH})" in r.stdout, r.stderr
    del weights[f"model.layers.{n}.mlp.experts.5.up_proj.weight"]
    save_file(weights, str(folder / "model.safetensors"))
    with pytest.raises(CheckpointMismatchError, match=r"experts.5.up_proj.weight"):
        load_draft(folder, ds.config)
    llama_mtp = tmp_path / "llama-mtp"
    save_draft(build_head("mtp", load_target().config, seed=0), llama_mtp, load_target().config)
    with pytest.raises(CheckpointMismatchError, match="architecture LlamaForCausalLMNextN does not fit a deepseek_v3"):
        load_draft(llama_mtp, ds.config)
    with pytest.raises(ValueError, match="EAGLE heads are built for Llama-family targets"):
        build_head("eagle", ds.config)


@pytest.mark.parametrize("tree", [TreeShape.chain(3), TreeShape(3, 3, 8)], ids=["chain", "tree"])
def test_reference_decoder_is_lossless_on_deepseek(ds, tree):
    heads = {"target-mtp": load_target_mtp_layer(ds.path, ds.config), "random": build_head("mtp", ds.config, seed=3)}
    for name, head in heads.items():
        dec = SpeculativeDecoder(ds, head, tree)
        for p in PROMPTS[:3]:
            ids = ds.chat_prompt_ids(p)
            want = generate_vanilla(ds, ids, 40, ignore_eos=True).tokens
            got = dec.generate(ids, 40, ignore_eos=True)
            assert got.tokens == want, (name, p)
            assert got.target_forwards == 1 + len(got.accept_lengths)


# --- training: the seed-002 recipe on answers the tiny target wrote itself -------------------------


@pytest.fixture(scope="module")
def trained(ds, tmp_path_factory):  # ~2-3 min on one core: once per session, not once per worker
    """The target's own MTP layer trained with the plain objective, then continued with HASS."""
    from support.shared import built_once

    out = built_once(tmp_path_factory, "deepseek-train", lambda root: _train(ds, root))
    return {name: Path(path) for name, path in out.items()}


def _train(ds, root):
    from hass_sglang.eval_sets import shared_data_dir
    from hass_sglang.train.data import convert
    from hass_sglang.train.features import FeatureConfig, extract_features
    from hass_sglang.train.regenerate import RegenerateConfig, regenerate
    from hass_sglang.train.trainer import TrainConfig, train

    prompts = root / "prompts.jsonl"  # the test prompts themselves, plus ShareGPT first turns
    prompts.write_text("".join(json.dumps({"conversations": [{"from": "human", "value": p}, {"from": "gpt", "value": "-"}]})
                               + "\n" for p in PROMPTS))
    convert(str(shared_data_dir() / "sharegpt_sample" / "sharegpt_v3_sample_first_exchange.json"), "sharegpt",
            root / "sharegpt.json", limit=TRAIN_CONVERSATIONS)
    convert(str(prompts), "sharegpt", root / "prompts.json")
    regenerate(ds, RegenerateConfig(data=[str(root / "prompts.json"), str(root / "sharegpt.json")], max_new_tokens=48,
                                    batch_size=32, max_prompt_tokens=160), root / "regen.json", progress=False)
    extract_features(ds, FeatureConfig(data=str(root / "regen.json"), target=TINY_DEEPSEEK_V3, max_length=224),
                     root / "features", progress=False)
    common = dict(features=str(root / "features"), head="mtp", lr=2e-3, batch_size=8, seed=0)
    plain = train(TrainConfig(**common, out=str(root / "mtp"), objective="eagle2", init_from="target",
                              epochs=TRAIN_EPOCHS), ds, progress=False)
    hass = train(TrainConfig(**common, out=str(root / "hass-mtp"), objective="hass", init_from=str(plain), epochs=1),
                 ds, progress=False)
    return {"mtp": str(plain), "hass-mtp": str(hass), "root": str(root)}


TRAIN_CONVERSATIONS, TRAIN_EPOCHS = 64, 3


@pytest.mark.slow
def test_hass_continues_the_targets_mtp_layer_and_exports_it(ds, trained):
    for name in ("mtp", "hass-mtp"):
        cfg = json.loads((trained[name] / "config.json").read_text())
        assert cfg["architectures"] == [DEEPSEEK_MTP_ARCH] and cfg["hass"]["objective"] == ("hass" if name == "hass-mtp" else "eagle2")
        load_draft(trained[name], ds.config)
    meta = json.loads((trained["hass-mtp"] / "config.json").read_text())["hass"]
    assert meta["init_from"] == str(trained["mtp"]) and meta["history"][-1]["step3/top1"] >= 0
    first = json.loads((trained["mtp"] / "config.json").read_text())["hass"]
    assert json.loads((trained["root"] / "mtp" / "train_config.json").read_text())["init_from"] == "target"
    assert first["history"][-1]["step1/top1"] > first["history"][0]["step1/top1"]


# --- SGLang on this CPU: one server at a time, the same prompts and tree everywhere ----------------

MAX_TOKENS, T1_PROMPT, T1_SAMPLES, T1_TOKENS = 32, "Name three colors.", 200, 3


def _serve(ds, draft, log):
    """T=0 answers (ids) to PROMPTS, (completion tokens, verify steps), and T=1 samples of T1_PROMPT."""
    from hass_sglang.serving.server import ServerSpec, running_server
    from support.serving import generate_ids

    spec = ServerSpec(model=str(ds.path), draft=None if draft is None else str(draft), device="cpu")
    out = {"ids": [], "tokens": 0, "verify": 0}
    with running_server(spec, log_path=log) as url:
        for p in PROMPTS:
            [ids], (tokens, verify) = generate_ids(url, ds.chat_prompt_ids(p), 1, MAX_TOKENS, 0.0)
            out["ids"].append(ids)
            out["tokens"] += tokens
            out["verify"] += verify
        out["t1"], out["t1_counts"] = generate_ids(url, ds.chat_prompt_ids(T1_PROMPT), T1_SAMPLES, T1_TOKENS, 1.0)
    return out


@pytest.fixture(scope="module")
def served(ds, trained, tmp_path_factory):
    logs = tmp_path_factory.mktemp("deepseek-servers")
    return {name: _serve(ds, draft, logs / f"{name}.log")
            for name, draft in (("plain", None), ("nextn", "target"), ("hass", trained["hass-mtp"]))}


def _reference(ds, head):
    """The reference decoder on the same prompts, tree and length: ids and SGLang's accept length."""
    dec = SpeculativeDecoder(ds, head, CPU_TREE, draft_dtype=torch.float32)
    runs = [dec.generate(ds.chat_prompt_ids(p), MAX_TOKENS, ignore_eos=True) for p in PROMPTS]
    return [r.tokens for r in runs], sum(len(r.tokens) for r in runs) / sum(len(r.accept_lengths) for r in runs)


@pytest.mark.slow
def test_sglang_serves_deepseek_with_its_nextn_and_with_the_hass_trained_layer(ds, trained, served, record_property):
    vanilla = [generate_vanilla(ds, ds.chat_prompt_ids(p), MAX_TOKENS, ignore_eos=True).tokens for p in PROMPTS]
    assert served["plain"]["ids"] == vanilla  # SGLang's DeepSeek on CPU = transformers, token for token
    lengths = {}
    for name, head in (("nextn", load_target_mtp_layer(ds.path, ds.config)), ("hass", load_draft(trained["hass-mtp"], ds.config))):
        got = served[name]
        ref_ids, ref_accept = _reference(ds, head)
        assert got["ids"] == served["plain"]["ids"] == ref_ids, name  # lossless on 8 prompts, both NextN servers
        lengths[name] = got["tokens"] / got["verify"]
        record_property(f"{name}_accept_length", {"sglang": lengths[name], "reference": ref_accept})
        print(f"{name}: SGLang accept length {lengths[name]:.3f}, reference decoder {ref_accept:.3f}")
        assert lengths[name] == pytest.approx(ref_accept, rel=0.05)
    assert lengths["hass"] > lengths["nextn"] + 0.2  # the HASS-trained layer is accepted, the random one is not


@pytest.mark.slow
def test_t1_through_the_hass_trained_layer_is_distributed_like_plain_sglang(served):
    from support.serving import chi2_same_distribution

    plain, spec = served["plain"]["t1"], served["hass"]["t1"]
    tokens, verify = served["hass"]["t1_counts"]
    assert tokens / verify > 1.1, "drafts were hardly accepted at T=1: the test would be vacuous"
    for pos in (1, 2):  # the tokens speculative verification decides
        p = chi2_same_distribution([o[pos] for o in plain], [o[pos] for o in spec])
        assert p > 0.0005, f"token {pos + 1} is not distributed like plain SGLang's (p={p:.2e})"
