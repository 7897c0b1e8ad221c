"""CPU backend for SGLang's speculative (EAGLE / HASS) path, activated from the plugin.

On a CPU-engine host (SGLANG_USE_CPU_ENGINE=1 and no CUDA), `activate()`:

1. registers torch implementations of the `sgl_kernel.*_cpu` ops SGLang's speculative path and
   its intel_amx attention backend call (`registry.py`, `ops.py`, `attention.py`);
2. makes `import sgl_kernel` resolve to a small stand-in package (`shim/sgl_kernel`) when the real
   one cannot be imported. SGLang imports `from sgl_kernel import <op>_cpu` at module level in
   modules that the scheduler subprocess imports *before* it runs `load_plugins()`, so an
   in-process import hook would come too late there. The plugin therefore prepends the shim
   folder to `sys.path` and to the PYTHONPATH environment variable of the launcher; SGLang starts
   its children with `spawn`, which inherits the environment, so every child finds the stand-in;
   `load_plugins()` in the child then runs `activate()` again (idempotent);
4. registers two AROUND hooks (hook registry) so that T>0 verification uses the project's
   SpecInfer (`sampling_verify.py`) instead of SGLang's greedy-only CPU path;
3. declares the platform AMX-capable (`sglang.srt.runtime_context.override_platform(has_amx=True)`)
   so argument resolution keeps the `intel_amx` attention backend, the only CPU backend SGLang's
   draft path supports (speculative/draft_utils.py). Layers that check AMX through
   `cpu_has_amx_support()` (torch's AMX-tile probe) keep their native torch paths.

Nothing happens on CUDA hosts or without SGLANG_USE_CPU_ENGINE=1.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import sys
from pathlib import Path

logger = logging.getLogger(__name__)

SHIM_DIR = str(Path(__file__).resolve().parent / "shim")
_state: dict = {}


def cpu_engine_requested(environ=os.environ) -> bool:
    return environ.get("SGLANG_USE_CPU_ENGINE", "0") == "1"


def project_verifies_on_cpu() -> bool:
    """True where `activate` installs the project's T > 0 verification (sampling_verify.py) instead
    of SGLang's own (GPU) one: the request checks differ by what verification applies exactly."""
    import torch

    return cpu_engine_requested() and not torch.cuda.is_available()


def real_sgl_kernel_loads() -> bool:
    """True when an `sgl_kernel` other than our stand-in imports in this process."""
    if "sgl_kernel" in sys.modules:
        return not getattr(sys.modules["sgl_kernel"], "HASS_CPU_STANDIN", False)
    spec = importlib.util.find_spec("sgl_kernel")
    if spec is None or (spec.origin or "").startswith(SHIM_DIR):
        return False
    try:
        import sgl_kernel  # noqa: F401
    except Exception:  # the CUDA wheel raises ImportError (libcuda.so.1) or OSError on CPU hosts
        for name in [m for m in sys.modules if m == "sgl_kernel" or m.startswith("sgl_kernel.")]:
            del sys.modules[name]
        return False
    return True


def prepend_path(value: str | None, entry: str) -> str:
    parts = [p for p in (value or "").split(os.pathsep) if p and p != entry]
    return os.pathsep.join([entry, *parts])


def install_shim() -> None:
    if SHIM_DIR not in sys.path:
        sys.path.insert(0, SHIM_DIR)
    os.environ["PYTHONPATH"] = prepend_path(os.environ.get("PYTHONPATH"), SHIM_DIR)
    importlib.invalidate_caches()


def override_amx() -> None:
    from sglang.srt.runtime_context import override_platform

    _state["amx"] = override_platform(has_amx=True)
    _state["amx"].install()


def activate() -> dict:
    """Idempotent; returns what was done in this process."""
    if "done" in _state:
        return _state["done"]
    done = {"cpu": False, "shim": False, "ops": [], "amx": False}
    if project_verifies_on_cpu():
        done["cpu"] = True
        if not real_sgl_kernel_loads():
            install_shim()
            done["shim"] = True
        from hass_sglang.serving.cpu.registry import register_ops

        done["ops"] = register_ops()
        override_amx()
        done["amx"] = True
        from hass_sglang.serving.cpu.sampling_verify import register_hooks

        register_hooks()  # T>0: project SpecInfer instead of SGLang's greedy-only CPU verify
        from hass_sglang.serving.cpu.model_hooks import register_hooks as register_model_hooks

        register_model_hooks()  # DeepSeek's set_embed_and_head without its unconditional CUDA sync
        done["hooks"] = True
        logger.info("hass_sglang CPU backend: %s", done)
    _state["done"] = done
    return done
