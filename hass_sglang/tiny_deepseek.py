"""A tiny random DeepSeek-V3 (MLA attention, MoE, yarn RoPE, one MTP layer): DeepSeek-R1's shape at
toy size, built in seconds on a CPU, for tests and benchmarks of the DeepSeek path end to end.

`tiny-deepseek-v3` is a target alias (`target.resolve_target`): the folder is built once under the
model cache (`io.models_cache_dir`) and reused. transformers' `DeepseekV3ForCausalLM` builds and
saves the body (it has no MTP module: `model.layers.<N>.*` is neither created nor saved), so the
target's own MTP layer - randomly initialised here, a trained one in DeepSeek-R1 - is written
beside it as `mtp.safetensors`, in the checkpoint layout of R1's `model.layers.61.*` (SGLang reads
every safetensors file of the folder; transformers ignores the extra one). The tokenizer and chat
template are SmolLM2's (vocabulary 49152), so prompts and answers are real text.

The config is the smallest that SGLang 0.5.23's CPU engine accepts for DeepSeek
(../shared/notes/deepseek-v3-on-sglang-cpu.md): yarn RoPE (the only RoPE its CPU path supports),
and `topk_method`, `scoring_func`, `moe_layer_freq`, `num_nextn_predict_layers` in config.json
(SGLang reads them from the config directly).
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import torch

TINY_DEEPSEEK_V3 = "tiny-deepseek-v3"  # the name `resolve_target` and every command accept
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja", "generation_config.json")
MTP_FILE = "mtp.safetensors"
RESIDUAL_OUTPUTS = ("o_proj.weight", "down_proj.weight", "experts.down_proj")  # what writes into the residual stream
# A random network with every weight at std 0.1 is a poor stand-in for a language model: its
# next-token distribution over 49152 tokens is nearly flat (mean top-1 probability ~0.006), so greedy
# decoding is a chain of near-ties, and the next token is a random function of the whole context
# that no draft learns from thousands of examples (top-1 stayed at 0.000 over 3 epochs here). Three
# scales make it behave like one, measured on random contexts: lm_head std 1.0 (mean top-1
# probability ~0.8), embeddings std 1.0 and the residual-stream writers (attention and MLP outputs)
# x0.05, so the current token decides the next one about 40% of the time (a "bigram" part a draft
# can learn and generalise) and the context the rest.
LM_HEAD_STD = 1.0
EMBED_STD = 1.0
RESIDUAL_SCALE = 0.05

CONFIG = {
    "architectures": ["DeepseekV3ForCausalLM"],
    "model_type": "deepseek_v3",
    "vocab_size": 49152,
    "hidden_size": 256,
    "intermediate_size": 512,
    "moe_intermediate_size": 128,
    "num_hidden_layers": 3,
    "first_k_dense_replace": 1,
    "num_attention_heads": 4,
    "num_key_value_heads": 4,
    "q_lora_rank": 96,
    "kv_lora_rank": 64,
    "qk_nope_head_dim": 32,
    "qk_rope_head_dim": 16,
    "v_head_dim": 32,
    "n_routed_experts": 8,
    "num_experts_per_tok": 2,
    "n_group": 2,
    "topk_group": 1,
    "n_shared_experts": 1,
    "routed_scaling_factor": 2.5,
    "norm_topk_prob": True,
    "topk_method": "noaux_tc",
    "scoring_func": "sigmoid",
    "moe_layer_freq": 1,
    "num_nextn_predict_layers": 1,
    "hidden_act": "silu",
    "rms_norm_eps": 1e-6,
    "max_position_embeddings": 4096,
    "rope_parameters": {"rope_type": "yarn", "rope_theta": 10000.0, "factor": 4.0,
                        "original_max_position_embeddings": 1024, "beta_fast": 32.0, "beta_slow": 1.0,
                        "mscale": 1.0, "mscale_all_dim": 1.0},
    "initializer_range": 0.1,
    "tie_word_embeddings": False,
    "bos_token_id": 1,
    "eos_token_id": 2,
    "pad_token_id": 2,
}


def tiny_deepseek_dir(seed: int = 0) -> Path:
    from hass_sglang.io import models_cache_dir

    key = hashlib.sha256(json.dumps([CONFIG, LM_HEAD_STD, EMBED_STD, RESIDUAL_SCALE, seed],
                                    sort_keys=True).encode()).hexdigest()[:10]
    return models_cache_dir() / f"{TINY_DEEPSEEK_V3}-{key}"


def build_tiny_deepseek_v3(tokenizer_dir: Path, out_dir: str | Path | None = None, seed: int = 0) -> Path:
    """The tiny DeepSeek-V3 as an HF folder (+ its MTP layer, the tokenizer files of
    `tokenizer_dir`); idempotent and atomic."""
    from transformers import DeepseekV3Config, DeepseekV3ForCausalLM

    from hass_sglang.io import atomic_dir

    out = Path(out_dir) if out_dir is not None else tiny_deepseek_dir(seed)
    if (out / MTP_FILE).is_file() and (out / "config.json").is_file():
        return out
    torch.manual_seed(seed)
    config = DeepseekV3Config(**CONFIG)
    model = DeepseekV3ForCausalLM(config).eval()
    with torch.no_grad():
        model.lm_head.weight.normal_(0.0, LM_HEAD_STD)
        model.model.embed_tokens.weight.normal_(0.0, EMBED_STD)
        for name, p in model.named_parameters():
            if name.endswith(RESIDUAL_OUTPUTS):
                p.mul_(RESIDUAL_SCALE)
    with atomic_dir(out) as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
        for name in TOKENIZER_FILES:
            if (tokenizer_dir / name).is_file():
                shutil.copy(tokenizer_dir / name, tmp / name)
        saved = json.loads((tmp / "config.json").read_text())
        (tmp / "config.json").write_text(json.dumps({**saved, **{k: CONFIG[k] for k in (
            "topk_method", "scoring_func", "moe_layer_freq", "num_nextn_predict_layers")}}, indent=2))
        write_target_mtp_layer(tmp, config, seed)
    return out


def write_target_mtp_layer(folder: Path, config, seed: int) -> Path:
    """The target's own MTP layer (`model.layers.<N>.*`, R1's layout), random here."""
    from safetensors.torch import save_file

    from hass_sglang.checkpoint import head_state_to_files
    from hass_sglang.heads import build_head

    head = build_head("mtp", config, seed=seed + 1)
    with torch.no_grad():
        for p in head.parameters():  # the body's scale, as DeepseekV3PreTrainedModel initialises it
            if p.ndim >= 2:
                p.normal_(0.0, config.initializer_range)
    weights = head_state_to_files(head, int(config.num_hidden_layers))
    save_file({k: v.contiguous() for k, v in weights.items()}, str(folder / MTP_FILE), metadata={"format": "pt"})
    return folder / MTP_FILE
