"""Serving: HASS inside an unmodified SGLang, through its extension points only.

plugin.py          the entry point SGLang loads in every process: HASS -> EAGLE resolution hook,
                   model registration, request checks, the CPU backend on CPU hosts
plan.py            what `--speculative-algorithm HASS` means for one launch (no SGLang import)
request_checks.py  request checks SGLang lacks (unknown model names -> 400), as hook-registry hooks
contract.py        every SGLang symbol the plugin touches, checked against the installed SGLang
server.py          the one `sglang.launch_server` command line, and the runner that starts it
models/            draft classes registered with SGLang's model registry (LlamaForCausalLMNextN)
cpu/               CPU backend for SGLang's speculative path (torch ops, sgl_kernel stand-in, T>0 hooks)

Importing this package imports nothing from SGLang.
"""
