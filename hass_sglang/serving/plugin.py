"""SGLang entry-point plugin: `--speculative-algorithm HASS` on an unmodified SGLang 0.5.23.

Installed as `[project.entry-points."sglang.srt.plugins"] hass = "hass_sglang.serving.plugin:register"`.
SGLang calls `register()` through `sglang.srt.plugins.load_plugins()` in every process it starts
(launcher, scheduler, detokenizer, DP controller; children are spawned, so nothing set in the
launcher reaches them otherwise). `register()` does two things, both idempotent and CUDA-free:

1. wraps the resolution step `handle_speculative_decoding` (a whitelisted resolution hook): when
   the requested algorithm is HASS (any case) it validates / converts the draft
   (`serving.plan.plan_launch`) and declares SGLang's EAGLE algorithm with the HASS tree defaults,
   then runs SGLang's own step. Declarations leave the raw input untouched, so SGLang keeps
   recording `speculative_algorithm="HASS"` as what was asked for, while every consumer reads
   the resolved "EAGLE".
2. registers `LlamaForCausalLMNextN` (the Llama MTP draft) with SGLang's model registry - lazily:
   importing `sglang.srt.models.registry` imports every SGLang model (seconds, and GPU libraries),
   and SGLang itself imports it only in the processes that build models (the scheduler). So the
   registration runs right after SGLang's own first import of the registry (`after_import`), and
   launcher, detokenizer and DP controller never pay for it.

Why rewrite to EAGLE instead of `SpeculativeAlgorithm.register("HASS", ...)`: a custom algorithm
is a `CustomSpecAlgo`, and ~24 places in SGLang compare the algorithm with "EAGLE"/"EAGLE3"/
"NEXTN" (KV-pool sizing, CUDA-graph capture, draft attention backends, metrics) while the
scheduler calls methods the custom base class lacks. Resolving to EAGLE keeps all of that
machinery - paged KV cache, tree build and verify, CUDA graphs, metrics - exactly as SGLang ships
it, and HASS needs nothing else at inference time.

Every SGLang symbol used here is listed in `serving/contract.py` and checked by its tests.
"""

from __future__ import annotations

import importlib.abc
import importlib.util
import logging
import sys
import threading
from typing import Callable

from hass_sglang.serving.plan import LaunchRequest, is_hass, plan_launch

logger = logging.getLogger(__name__)

RESOLUTION_STEP = "handle_speculative_decoding"
MODEL_PACKAGE = "hass_sglang.serving.models"
MODEL_REGISTRY_MODULE = "sglang.srt.models.registry"
DECLARATION_SOURCE = "hass_sglang.plan_launch"
_registered = False


def sglang_dtype(config, dtype: str) -> str:
    """The dtype SGLang's ModelConfig gives a model with this config under `--dtype dtype`."""
    from sglang.srt.configs.model_config import _get_and_verify_dtype

    return str(_get_and_verify_dtype(config, dtype)).removeprefix("torch.")


def resolve_hass(server_args, previous) -> None:
    """Resolution hook: HASS -> EAGLE plan, then SGLang's own speculative step."""
    from sglang.srt.arg_groups.overrides import declare_resolution, resolving_view

    cfg = resolving_view(server_args)
    if is_hass(cfg.speculative_algorithm):
        plan = plan_launch(
            LaunchRequest(
                target_path=str(cfg.model_path),
                draft_path=cfg.speculative_draft_model_path,
                num_steps=cfg.speculative_num_steps,
                eagle_topk=cfg.speculative_eagle_topk,
                num_draft_tokens=cfg.speculative_num_draft_tokens,
                token_map=cfg.speculative_token_map,
                dtype=str(cfg.dtype),
                tp_size=int(cfg.tp_size or 1),
            ),
            resolve_dtype=lambda config: sglang_dtype(config, str(cfg.dtype)),
        )
        logger.info("HASS: %s", plan.model_dump())
        declare_resolution(server_args, DECLARATION_SOURCE, **plan.server_args_fields())
    previous(server_args)


class _AfterImport(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Runs `callback(module)` right after the first import of module `name` (a post-import hook)."""

    def __init__(self, name: str, callback: Callable):
        self.name, self.callback, self.loader = name, callback, None
        self.lock = threading.Lock()

    def find_spec(self, fullname, path=None, target=None):
        if fullname != self.name or self.loader is not None:
            return None
        with self.lock:
            sys.meta_path.remove(self)  # the real spec, from the finders after us
            try:
                spec = importlib.util.find_spec(fullname)
            finally:
                sys.meta_path.insert(0, self)
        if spec is None or spec.loader is None:
            return None
        self.loader, spec.loader = spec.loader, self
        return spec

    def create_module(self, spec):
        return self.loader.create_module(spec)

    def exec_module(self, module):
        self.loader.exec_module(module)
        if self in sys.meta_path:
            sys.meta_path.remove(self)
        self.callback(module)


def after_import(name: str, callback: Callable) -> None:
    """`callback(module)` now if `name` is imported, else right after its first import."""
    if name in sys.modules:
        callback(sys.modules[name])
    else:
        sys.meta_path.insert(0, _AfterImport(name, callback))


def _register_models(registry_module) -> None:
    # overwrite=True: re-registering our own package (e.g. a second loader) must not fail.
    registry_module.ModelRegistry.register(MODEL_PACKAGE, overwrite=True, strict=True)


def register() -> None:
    """Entry point called by SGLang's plugin loader; safe to call more than once."""
    global _registered
    if _registered:
        return
    from sglang.srt.arg_groups.resolution_hooks import register_resolution_hook

    # CPU hosts only (SGLANG_USE_CPU_ENGINE=1, no CUDA): torch `sgl_kernel.*_cpu` ops, the
    # `sgl_kernel` stand-in for spawned children, and the AMX platform flag (serving/cpu/__init__.py).
    from hass_sglang.serving.cpu import activate as activate_cpu_backend

    activate_cpu_backend()
    from hass_sglang.serving.request_checks import register_hooks as register_request_checks

    register_request_checks()  # unknown `model` names -> 400 instead of an answer from this model
    from hass_sglang.serving.phase_timing import register_hooks as register_phase_timing

    register_phase_timing()  # only with HASS_PHASE_TIMING set: wall time per SGLang phase, for benchmarks
    register_resolution_hook(RESOLUTION_STEP)(resolve_hass)
    after_import(MODEL_REGISTRY_MODULE, _register_models)
    _registered = True


SPECULATIVE_FIELDS = (
    "speculative_algorithm",
    "speculative_draft_model_path",
    "speculative_num_steps",
    "speculative_eagle_topk",
    "speculative_num_draft_tokens",
    "speculative_token_map",
)


def resolved_speculative_args(server_args) -> dict:
    """What SGLang will run (resolved values) and what was asked for (`requested_algorithm`)."""
    from sglang.srt.arg_groups.overrides import resolution_result

    out = {f: resolution_result(server_args, f) for f in SPECULATIVE_FIELDS}
    out["dtype"] = resolution_result(server_args, "dtype")
    out["requested_algorithm"] = server_args.speculative_algorithm  # the raw field is never rewritten
    return out


def resolve_launch_flags(argv: list[str]) -> dict:
    """Resolve `sglang.launch_server` flags the way its launcher does (plugins, then resolve_once).

    For checks and debugging; serves nothing. Runs SGLang's plugin loader, so it behaves the same in a
    fresh process as in SGLang's own spawned children.
    """
    from sglang.srt.plugins import load_plugins
    from sglang.srt.server_args import prepare_server_args

    load_plugins()
    server_args = prepare_server_args(list(argv))
    server_args.resolve_once()
    return resolved_speculative_args(server_args)
