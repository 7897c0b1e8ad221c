"""CPU-host fixes for SGLang model code that assumes a GPU, as hook-registry hooks.

SGLang 0.5.23's `DeepseekV2ForCausalLM.set_embed_and_head` (models/deepseek_v2.py, the method the
EAGLE worker calls to share the target's embedding and lm_head with a DeepSeek NextN draft) ends
with `torch.cuda.empty_cache(); torch.cuda.synchronize()`, which raise without an NVIDIA driver
(Llama's version is device-aware). On CPU-engine hosts the AROUND hook runs it with those two
calls as no-ops; nothing else changes, and GPU hosts never install it.
"""

from __future__ import annotations

import contextlib

import torch

DEEPSEEK_SET_EMBED_AND_HEAD = "sglang.srt.models.deepseek_v2.DeepseekV2ForCausalLM.set_embed_and_head"


@contextlib.contextmanager
def cuda_cache_calls_are_noops():
    saved = torch.cuda.empty_cache, torch.cuda.synchronize
    torch.cuda.empty_cache = torch.cuda.synchronize = lambda *a, **k: None
    try:
        yield
    finally:
        torch.cuda.empty_cache, torch.cuda.synchronize = saved


def around_set_embed_and_head(original, self, embed, head, *args, **kwargs):
    with cuda_cache_calls_are_noops():
        return original(self, embed, head, *args, **kwargs)


def register_hooks() -> None:
    from sglang.srt.plugins.hook_registry import HookRegistry, HookType

    HookRegistry.register(DEEPSEEK_SET_EMBED_AND_HEAD, around_set_embed_and_head, HookType.AROUND)
