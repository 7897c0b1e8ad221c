"""Draft heads shared by training and serving.

Both heads map (token embedding of x_{t+1}, feature f_t) at position t to a predicted feature
f'_{t+1}; the target's frozen lm_head turns features into draft logits. The feature is the
target's last hidden state after its final norm (what SGLang hands to EAGLE/NextN drafts).

- EagleHead (EAGLE-1/2, the HASS architecture): fc([e; f]) with bias -> one Llama decoder layer
  whose first input norm is removed -> feature (no final norm).
- MTPHead (DeepSeek NextN): eh_proj([enorm(e); hnorm(f)]) -> one full decoder layer ->
  shared_head.norm -> feature. The decoder layer is the target's own kind: a Llama layer for
  Llama-family targets, transformers' DeepSeek-V3 layer (MLA attention, MoE with a shared expert,
  yarn RoPE) for DeepSeek-V3/R1 targets, where it is exactly the layer DeepSeek ships as its MTP
  module (`model.layers.<N>.*`, always MoE in SGLang's DeepseekV3ForCausalLMNextN).

Embedding and lm_head are never owned by a head: they are the target's (SGLang shares them too).
An optional reduced draft vocabulary (`hot_token_ids`, EAGLE-3 / speculators style) restricts the
draft's lm_head to the most frequent target tokens, which pays when the lm_head dominates a step.
"""

from __future__ import annotations

import copy
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn
from transformers import LlamaConfig
from transformers.models.llama.modeling_llama import LlamaDecoderLayer, LlamaRMSNorm, LlamaRotaryEmbedding

HeadType = Literal["eagle", "mtp"]
HEAD_TYPES: tuple[str, ...] = ("eagle", "mtp")

# Target config fields a draft layer inherits (everything that shapes a decoder layer and RoPE).
_INHERITED_FIELDS = (
    "hidden_size",
    "intermediate_size",
    "num_attention_heads",
    "num_key_value_heads",
    "head_dim",
    "hidden_act",
    "rms_norm_eps",
    "max_position_embeddings",
    "rope_parameters",
    "attention_bias",
    "mlp_bias",
    "vocab_size",
    "bos_token_id",
    "eos_token_id",
    "pad_token_id",
)


DEEPSEEK_MODEL_TYPES = ("deepseek_v3",)


def is_deepseek(config) -> bool:
    return getattr(config, "model_type", None) in DEEPSEEK_MODEL_TYPES


def draft_config_from_target(target_config):
    """A one-layer config for a draft head of this target (untied: SGLang requires it): a
    LlamaConfig for Llama-family targets, the target's own DeepseekV3Config for DeepSeek targets
    (one layer, MoE from the first, as DeepSeek's MTP layer is)."""
    if is_deepseek(target_config):
        cfg = copy.deepcopy(target_config)
        cfg.num_hidden_layers, cfg.first_k_dense_replace, cfg.tie_word_embeddings = 1, 0, False
    else:
        fields = {k: getattr(target_config, k) for k in _INHERITED_FIELDS
                  if getattr(target_config, k, None) is not None}
        cfg = LlamaConfig(**fields, num_hidden_layers=1, tie_word_embeddings=False)
    cfg._attn_implementation = "sdpa"
    return cfg


def layer_classes(config) -> tuple[type, type, type]:
    """(decoder layer, RMSNorm, rotary embedding) of the draft's architecture."""
    if is_deepseek(config):
        from transformers.models.deepseek_v3.modeling_deepseek_v3 import (
            DeepseekV3DecoderLayer,
            DeepseekV3RMSNorm,
            DeepseekV3RotaryEmbedding,
        )

        return DeepseekV3DecoderLayer, DeepseekV3RMSNorm, DeepseekV3RotaryEmbedding
    return LlamaDecoderLayer, LlamaRMSNorm, LlamaRotaryEmbedding


class DraftHead(nn.Module):
    """Common interface: features = head(embeds, prev_features, position_ids, cache, mask)."""

    head_type: str = ""

    def __init__(self, config: LlamaConfig, hot_token_ids: torch.Tensor | None = None):
        super().__init__()
        config._attn_implementation = config._attn_implementation or "sdpa"
        self.config = config
        self.rotary_emb = layer_classes(config)[2](config)
        if hot_token_ids is not None:
            hot_token_ids = torch.as_tensor(hot_token_ids, dtype=torch.long, device="cpu")
            check_hot_token_ids(hot_token_ids, config.vocab_size)
        self.register_buffer("hot_token_ids", hot_token_ids, persistent=False)

    @property
    def hidden_size(self) -> int:
        return self.config.hidden_size

    def fuse_inputs(self, embeds: torch.Tensor, prev_features: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def finish(self, hidden: torch.Tensor) -> torch.Tensor:
        return hidden

    def forward(
        self,
        embeds: torch.Tensor,  # [B, T, H] target embeddings of the next tokens
        prev_features: torch.Tensor,  # [B, T, H] features of the current positions
        position_ids: torch.Tensor,  # [B, T]
        cache=None,  # transformers Cache holding this head's K/V, or None (training)
        attention_mask: torch.Tensor | None = None,  # [B, 1, T, S] additive float mask
    ) -> torch.Tensor:  # [B, T, H] predicted next features
        hidden = self.fuse_inputs(embeds, prev_features.to(embeds.dtype))
        cos_sin = self.rotary_emb(hidden, position_ids)
        for layer in self.layers:
            hidden = layer(
                hidden,
                attention_mask=attention_mask,
                position_ids=position_ids,
                past_key_values=cache,
                use_cache=cache is not None,
                position_embeddings=cos_sin,
            )
        return self.finish(hidden)

    def draft_lm_head_weight(self, target_lm_head_weight: torch.Tensor) -> torch.Tensor:
        """[V_draft, H] rows of the target lm_head this head scores (all of them without hot tokens)."""
        if self.hot_token_ids is None:
            return target_lm_head_weight
        return target_lm_head_weight[self.hot_token_ids.to(target_lm_head_weight.device)]

    def to_target_ids(self, draft_ids: torch.Tensor) -> torch.Tensor:
        """Map draft-vocabulary indices to target token ids (identity without hot tokens)."""
        if self.hot_token_ids is None:
            return draft_ids
        return self.hot_token_ids.to(draft_ids.device)[draft_ids]


class EagleHead(DraftHead):
    head_type = "eagle"

    def __init__(self, config: LlamaConfig, hot_token_ids: torch.Tensor | None = None):
        if is_deepseek(config):
            raise ValueError("EAGLE heads are built for Llama-family targets; a DeepSeek target's draft is "
                             "its MTP layer: use head type 'mtp'")
        super().__init__(config, hot_token_ids)
        h = config.hidden_size
        self.fc = nn.Linear(2 * h, h, bias=True)
        self.layers = nn.ModuleList([LlamaDecoderLayer(config, layer_idx=0)])
        # EAGLE feeds fc's output straight into attention: the first layer has no input norm.
        self.layers[0].input_layernorm = nn.Identity()

    def fuse_inputs(self, embeds, prev_features):
        return self.fc(torch.cat((embeds, prev_features), dim=-1))


class MTPHead(DraftHead):
    head_type = "mtp"

    def __init__(self, config: LlamaConfig, hot_token_ids: torch.Tensor | None = None):
        super().__init__(config, hot_token_ids)
        layer_cls, norm_cls, _ = layer_classes(config)
        h, eps = config.hidden_size, config.rms_norm_eps
        self.enorm = norm_cls(h, eps=eps)
        self.hnorm = norm_cls(h, eps=eps)
        self.eh_proj = nn.Linear(2 * h, h, bias=False)
        self.layers = nn.ModuleList([layer_cls(config, layer_idx=0)])
        self.shared_head_norm = norm_cls(h, eps=eps)
        if is_deepseek(config):
            _init_routed_experts(self.layers[0], config.initializer_range)

    def fuse_inputs(self, embeds, prev_features):
        return self.eh_proj(torch.cat((self.enorm(embeds), self.hnorm(prev_features)), dim=-1))

    def finish(self, hidden):
        return self.shared_head_norm(hidden)


@torch.no_grad()
def _init_routed_experts(layer: nn.Module, std: float) -> None:
    """transformers builds a DeepSeek MoE with its router zeroed and its fused expert matrices
    uninitialised (its models' `_init_weights` fills them); a layer built alone must do it, or a
    fresh head's experts never get a gradient."""
    for module in layer.modules():
        kind = type(module).__name__
        if kind.endswith("TopkRouter"):
            nn.init.normal_(module.weight, std=std)
        elif kind.endswith("Experts"):
            for param in module.parameters(recurse=False):
                nn.init.normal_(param, std=std)


_HEAD_CLASSES: dict[str, type[DraftHead]] = {"eagle": EagleHead, "mtp": MTPHead}


def build_head(
    head_type: str, target_config, hot_token_ids: torch.Tensor | None = None, seed: int | None = None
) -> DraftHead:
    """A freshly initialised head for this target (random init with `seed` if given)."""
    if head_type not in _HEAD_CLASSES:
        raise ValueError(f"unknown head type {head_type!r}; expected one of {HEAD_TYPES}")
    if seed is not None:
        torch.manual_seed(seed)
    return _HEAD_CLASSES[head_type](draft_config_from_target(target_config), hot_token_ids)


def check_hot_token_ids(hot_token_ids: torch.Tensor, vocab_size: int) -> None:
    if hot_token_ids.ndim != 1 or hot_token_ids.numel() == 0:
        raise ValueError("hot_token_ids must be a non-empty 1-D tensor of target token ids")
    if int(hot_token_ids.min()) < 0 or int(hot_token_ids.max()) >= vocab_size:
        raise ValueError(f"hot_token_ids out of range for target vocab size {vocab_size}")
    if hot_token_ids.unique().numel() != hot_token_ids.numel():
        raise ValueError("hot_token_ids contains duplicates")


def draft_logits(features: torch.Tensor, lm_head_weight: torch.Tensor) -> torch.Tensor:
    """[..., H] features -> [..., V_draft] fp32 logits with an already-selected lm_head weight."""
    return F.linear(features.to(lm_head_weight.dtype), lm_head_weight).float()
