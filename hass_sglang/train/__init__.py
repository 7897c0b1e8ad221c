"""Training a draft for your target: data -> regenerate -> features -> train -> draft folder.

data.py        chat sources -> ShareGPT JSON; chat-template tokens with an assistant-only loss mask
regenerate.py  self-distillation: the target answers the prompts itself (batched, resumable)
features.py    target features + teacher top-K in sharded safetensors + manifest (resumable, torchrun)
losses.py      SmoothL1 regression, CE, HASS top-K distillation, top-k accuracy
align.py       HASS harmonized context alignment: the aligned multi-step forward, per-step objectives
distributed.py rank / world under torchrun, process-group start, gradient averaging
trainer.py     `hass train`: optimiser loop, reduced vocabulary, validation tau, checkpoints, export
"""
