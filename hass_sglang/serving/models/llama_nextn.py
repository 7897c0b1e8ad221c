"""`LlamaForCausalLMNextN`: the MTP (DeepSeek NextN) draft head for Llama-architecture targets.

The same computation as `hass_sglang.heads.MTPHead`, built from SGLang's layers so that SGLang's
EAGLE worker drives it like its own NextN drafts (one decoder layer with its own one-layer KV pool,
`num_nextn_predict_layers = 1`):

    h = eh_proj([enorm(embed(x_{t+1})); hnorm(f_t)])     # f_t: target feature, spec_info.hidden_states
    f'_{t+1} = shared_head.norm(decoder_layer(h))         # logits = target lm_head (maybe hot rows)

Checkpoint names (hass_sglang/checkpoint.py): `model.layers.{L}.{enorm,hnorm,eh_proj,shared_head.norm}`
and the decoder layer under `model.layers.{L}.` with HF Llama names (q/k/v, gate/up unfused), where
L is the target's layer count. Embedding and lm_head are the target's: SGLang's worker hands them
over through `set_embed_and_head`, slicing the lm_head rows to `hot_token_map` when the draft has a
reduced vocabulary (the lm_head here is sized `hot_vocab_size` for that case, like SGLang's EAGLE
drafts).
"""

from __future__ import annotations

from typing import Iterable, Optional, Tuple

import torch
from torch import nn
from transformers import LlamaConfig

from sglang.srt.layers.layer_boundary import layer_stack
from sglang.srt.layers.layer_boundary.residual import batch as residual_batch
from sglang.srt.layers.layernorm import RMSNorm
from sglang.srt.layers.logits_processor import LogitsProcessor
from sglang.srt.layers.quantization.base_config import QuantizationConfig
from sglang.srt.layers.vocab_parallel_embedding import ParallelLMHead, VocabParallelEmbedding
from sglang.srt.model_executor.forward_batch_info import ForwardBatch, PPProxyTensors
from sglang.srt.model_loader.weight_utils import default_weight_loader
from sglang.srt.models.llama import LlamaDecoderLayer, LlamaForCausalLM
from sglang.srt.runtime_context import get_parallel
from sglang.srt.utils import add_prefix

# HF names of the unfused projections -> (SGLang's fused parameter, shard id).
_FUSED = {
    "self_attn.q_proj": ("self_attn.qkv_proj", "q"),
    "self_attn.k_proj": ("self_attn.qkv_proj", "k"),
    "self_attn.v_proj": ("self_attn.qkv_proj", "v"),
    "mlp.gate_proj": ("mlp.gate_up_proj", 0),
    "mlp.up_proj": ("mlp.gate_up_proj", 1),
}
# Checkpoint tensors the target provides instead (a release may still carry copies).
_SHARED_WITH_TARGET = ("embed_tokens.weight", "shared_head.head.weight", "lm_head.weight")


def checkpoint_to_param_name(name: str, nextn_layer: int) -> Optional[Tuple[str, object]]:
    """Checkpoint tensor name -> (parameter name, shard id or None); None for tensors to skip.

    `nextn_layer` is the config's num_hidden_layers: our format keeps the target's L there, and
    the NextN layer is stored as layer L (DeepSeek's convention).
    """
    prefix = f"model.layers.{nextn_layer}."
    if not name.startswith(prefix):
        return None if name.endswith(_SHARED_WITH_TARGET) else (name, None)
    rest = name[len(prefix):]
    if rest in _SHARED_WITH_TARGET:
        return None
    if rest.split(".")[0] in ("enorm", "hnorm", "eh_proj"):
        return "model." + rest, None
    if rest.startswith("shared_head.norm."):
        return "model.shared_head_norm." + rest[len("shared_head.norm."):], None
    for hf, (fused, shard) in _FUSED.items():
        if rest.startswith(hf + "."):
            return "model.decoder." + fused + rest[len(hf):], shard
    return "model.decoder." + rest, None


class LlamaModelNextN(nn.Module):
    def __init__(self, config: LlamaConfig, quant_config: Optional[QuantizationConfig] = None, prefix: str = ""):
        super().__init__()
        self.config = config
        # Placeholder rows: replaced by the target's embedding in set_embed_and_head.
        self.embed_tokens = VocabParallelEmbedding(
            config.vocab_size, config.hidden_size, prefix=add_prefix("embed_tokens", prefix)
        )
        self.enorm = RMSNorm(config.hidden_size, eps=config.rms_norm_eps)
        self.hnorm = RMSNorm(config.hidden_size, eps=config.rms_norm_eps)
        # Replicated like DeepSeek's NextN eh_proj: it is small and runs once per draft step.
        self.eh_proj = nn.Linear(2 * config.hidden_size, config.hidden_size, bias=False)
        with layer_stack():
            # layer_id 0: the draft has its own one-layer KV pool (num_nextn_predict_layers = 1).
            self.decoder = LlamaDecoderLayer(config, 0, quant_config=quant_config, prefix=add_prefix("decoder", prefix))
        self.shared_head_norm = RMSNorm(config.hidden_size, eps=config.rms_norm_eps)

    def forward(
        self,
        input_ids: torch.Tensor,
        positions: torch.Tensor,
        forward_batch: ForwardBatch,
        input_embeds: Optional[torch.Tensor] = None,
        pp_proxy_tensors: Optional[PPProxyTensors] = None,
    ) -> torch.Tensor:
        hidden = self.embed_tokens(input_ids) if input_embeds is None else input_embeds
        if hidden.shape[0] > 0:  # idle DP batches carry no rows and no spec_info features
            features = forward_batch.spec_info.hidden_states
            hidden = self.eh_proj(torch.cat((self.enorm(hidden), self.hnorm(features)), dim=-1))
        residual_batch.start(forward_batch)
        hidden = self.decoder(positions, hidden, forward_batch)
        return residual_batch.final_norm(hidden, forward_batch, self.shared_head_norm)


class LlamaForCausalLMNextN(LlamaForCausalLM):
    """SGLang draft model; forward / get_embed_and_head / set_embed_and_head come from LlamaForCausalLM."""

    def __init__(self, config: LlamaConfig, quant_config: Optional[QuantizationConfig] = None, prefix: str = ""):
        nn.Module.__init__(self)
        self.config = config
        self.quant_config = quant_config
        self.pp_group = get_parallel().pp_group
        self.model = LlamaModelNextN(config, quant_config=quant_config, prefix=add_prefix("model", prefix))
        self.lm_head = ParallelLMHead(
            getattr(config, "hot_vocab_size", None) or config.vocab_size,
            config.hidden_size,
            quant_config=quant_config,
            prefix=add_prefix("lm_head", prefix),
        )
        self.logits_processor = LogitsProcessor(config)
        self.capture_aux_hidden_states = False

    def load_weights(self, weights: Iterable[Tuple[str, torch.Tensor]]) -> set:
        params = dict(self.named_parameters())
        loaded, unknown = set(), []
        for name, tensor in weights:
            target = checkpoint_to_param_name(name, int(self.config.num_hidden_layers))
            if target is None:
                continue
            pname, shard = target
            if pname not in params:
                unknown.append(name)
                continue
            param = params[pname]
            if shard is None:
                getattr(param, "weight_loader", default_weight_loader)(param, tensor)
            else:
                param.weight_loader(param, tensor, shard)
            loaded.add(pname)
        if unknown:
            # `hass check-draft` refuses such folders before launch; fail loudly if one gets here.
            raise ValueError(f"LlamaForCausalLMNextN: unexpected checkpoint tensors {sorted(unknown)}")
        return loaded


EntryClass = [LlamaForCausalLMNextN]
