import json

import pytest
import torch
from safetensors.torch import load_file, save_file

from hass_sglang.checkpoint import EAGLE_ARCH, MTP_ARCH, import_reference, load_draft, save_draft
from hass_sglang.errors import CheckpointMismatchError
from hass_sglang.heads import build_head


def head_outputs(head, target, seed=0):
    gen = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, target.config.vocab_size, (1, 7), generator=gen)
    prev = torch.randn(1, 7, target.config.hidden_size, generator=gen)
    with torch.no_grad():
        return head(target.embed_tokens(ids), prev, torch.arange(7)[None])


@pytest.mark.parametrize("head_type", ["eagle", "mtp"])
def test_round_trip_in_sglang_naming_gives_identical_outputs(tmp_path, target, head_type):
    head = build_head(head_type, target.config, seed=3)
    out = save_draft(head, tmp_path / "draft", target.config, metadata={"note": "test"})
    cfg = json.loads((out / "config.json").read_text())
    weights = load_file(str(out / "model.safetensors"))
    assert cfg["tie_word_embeddings"] is False and cfg["hass"]["head_type"] == head_type
    if head_type == "eagle":
        assert cfg["architectures"] == [EAGLE_ARCH] and cfg["num_hidden_layers"] == 1
        assert {"fc.weight", "fc.bias", "layers.0.self_attn.q_proj.weight", "layers.0.post_attention_layernorm.weight"} <= set(weights)
        assert not any("input_layernorm" in k or "embed_tokens" in k or "lm_head" in k for k in weights)
    else:
        assert cfg["architectures"] == [MTP_ARCH] and cfg["num_nextn_predict_layers"] == 1
        p = "model.layers.30."
        assert {p + "enorm.weight", p + "hnorm.weight", p + "eh_proj.weight", p + "shared_head.norm.weight",
                p + "input_layernorm.weight", p + "mlp.down_proj.weight"} <= set(weights)
        assert all(k.startswith(p) for k in weights)
    loaded = load_draft(out, target.config)
    assert type(loaded) is type(head)
    assert torch.equal(head_outputs(loaded, target), head_outputs(head, target))
    assert not list(tmp_path.glob(".draft.tmp-*"))  # atomic write leaves no temp folder


def test_hot_vocabulary_round_trip(tmp_path, target):
    hot = torch.tensor([5, 0, 17, 49151])
    head = build_head("eagle", target.config, hot_token_ids=hot, seed=0)
    loaded = load_draft(save_draft(head, tmp_path / "d", target.config), target.config)
    assert loaded.hot_token_ids.tolist() == hot.tolist()
    w = loaded.draft_lm_head_weight(target.lm_head.weight)
    assert torch.equal(w, target.lm_head.weight[hot])
    assert loaded.to_target_ids(torch.tensor([3, 1])).tolist() == [49151, 0]


def write_reference(folder, target, head, bias=True, fmt="bin", extra=None, drop=None, config_over=None):
    """A tiny HASS reference release: config saying LlamaForCausalLM, EAGLE-named weights (+ embed_tokens)."""
    folder.mkdir(parents=True)
    cfg = target.config.to_dict()
    cfg.update(architectures=["LlamaForCausalLM"], num_hidden_layers=1, bias=bias)
    cfg.update(config_over or {})
    (folder / "config.json").write_text(json.dumps(cfg))
    sd = {k: v.clone() for k, v in head.state_dict().items()}
    sd["embed_tokens.weight"] = target.embed_tokens.weight.detach().clone()
    if not bias:
        del sd["fc.bias"]
    for k in drop or ():
        del sd[k]
    sd.update(extra or {})
    if fmt == "bin":
        torch.save(sd, folder / "pytorch_model.bin")
    else:
        save_file(sd, str(folder / "model.safetensors"))


@pytest.mark.parametrize("fmt", ["bin", "safetensors"])
def test_reference_release_is_imported(tmp_path, target, fmt):
    head = build_head("eagle", target.config, seed=5)
    write_reference(tmp_path / "HASS-ref", target, head, fmt=fmt)
    direct = load_draft(tmp_path / "HASS-ref", target.config)
    assert torch.equal(head_outputs(direct, target), head_outputs(head, target))
    out = import_reference(tmp_path / "HASS-ref", tmp_path / "converted", target.config)
    assert json.loads((out / "config.json").read_text())["architectures"] == [EAGLE_ARCH]
    assert "embed_tokens.weight" not in load_file(str(out / "model.safetensors"))
    assert torch.equal(head_outputs(load_draft(out, target.config), target), head_outputs(head, target))


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"bias": False}, r"missing weights \['fc.bias'\]"),
        ({"drop": ["layers.0.mlp.up_proj.weight"]}, "missing weights.*up_proj"),
        ({"extra": {"layers.0.input_layernorm.weight": torch.ones(576)}}, "unexpected weights.*input_layernorm"),
        ({"extra": {"fc.weight": torch.zeros(576, 1000)}}, r"wrong shapes \['fc.weight \(576, 1000\)"),
        ({"config_over": {"hidden_size": 4096}}, "hidden_size: draft 4096 != target 576"),
        ({"config_over": {"vocab_size": 32000}}, "vocab_size: draft 32000 != target 49152"),
        ({"extra": {"embed_tokens.weight": torch.zeros(32000, 576)}}, r"embed_tokens.weight \(32000, 576\)"),
    ],
)
def test_mismatched_reference_checkpoint_is_refused(tmp_path, target, kwargs, match):
    write_reference(tmp_path / "bad", target, build_head("eagle", target.config, seed=0), **kwargs)
    with pytest.raises(CheckpointMismatchError, match=match):
        load_draft(tmp_path / "bad", target.config)


def test_tied_sglang_draft_and_unknown_architecture_are_refused(tmp_path, target):
    out = save_draft(build_head("eagle", target.config, seed=0), tmp_path / "d", target.config)
    cfg = json.loads((out / "config.json").read_text())
    (out / "config.json").write_text(json.dumps({**cfg, "tie_word_embeddings": True}))
    with pytest.raises(CheckpointMismatchError, match="tie_word_embeddings"):
        load_draft(out, target.config)
    (out / "config.json").write_text(json.dumps({**cfg, "architectures": ["GPT2LMHeadModel"]}))
    with pytest.raises(CheckpointMismatchError, match="unrecognised draft architecture 'GPT2LMHeadModel'"):
        load_draft(out, target.config)


def test_mtp_layer_index_must_match_target(tmp_path, target):
    out = save_draft(build_head("mtp", target.config, seed=0), tmp_path / "m", target.config)
    cfg = json.loads((out / "config.json").read_text())
    (out / "config.json").write_text(json.dumps({**cfg, "num_hidden_layers": 61}))
    with pytest.raises(CheckpointMismatchError, match="num_hidden_layers 61 != target's 30"):
        load_draft(out, target.config)


def test_hot_tokens_out_of_range_are_refused(tmp_path, target):
    out = save_draft(build_head("eagle", target.config, seed=0), tmp_path / "d", target.config)
    torch.save([1, 2, 60000], out / "hot_token_map.pt")
    with pytest.raises(CheckpointMismatchError, match="out of range"):
        load_draft(out, target.config)
