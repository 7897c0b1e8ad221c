"""Training a draft for your target: data -> regenerate -> features -> train -> draft folder.

data.py        chat sources -> ShareGPT JSON; chat-template tokens with an assistant-only loss mask
regenerate.py  self-distillation: the target answers the prompts itself (transformers batched, or any
               OpenAI-compatible endpoint such as an SGLang server; resumable, exactly once)
features.py    target features + teacher top-K in sharded safetensors + manifest (resumable, torchrun;
               the target in transformers or in an SGLang server); FeatureSet streams them lazily
losses.py      SmoothL1 regression, CE, HASS top-K distillation, top-k accuracy
align.py       HASS harmonized context alignment: the aligned multi-step forward, per-step objectives
distributed.py device, process group (nccl / gloo), DDP or FSDP2, unsharded checkpoint state
trainer.py     `hass train`: optimiser loop, reduced vocabulary, validation tau, checkpoints, export
plan.py        `--dry-run`: parameters, feature bytes and memory per GPU for big targets, on paper
target_configs/ config.json of Llama-3.1-8B-Instruct and DeepSeek-R1 (for the dry run, offline)
"""
