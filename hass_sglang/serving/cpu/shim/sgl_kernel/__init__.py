"""hass_sglang's CPU stand-in for `sgl_kernel` (not the real package).

Put on sys.path / PYTHONPATH by `hass_sglang.serving.cpu.activate()` only on CPU-engine hosts where
the real `sgl_kernel` cannot load (PyPI's sglang-kernel is CUDA-only). `from sgl_kernel import X`
returns `torch.ops.sgl_kernel.X` when hass_sglang registered that op; any other name raises
ImportError exactly as a build without that op would, so SGLang's own fallbacks apply.
"""

import torch

from hass_sglang.serving.cpu.registry import register_ops

register_ops()

HASS_CPU_STANDIN = True
__version__ = "0.0.0+hass_sglang.cpu"


def __getattr__(name):
    if name.startswith("__"):
        raise AttributeError(name)
    if hasattr(torch.ops.sgl_kernel, name):
        return getattr(torch.ops.sgl_kernel, name)
    raise AttributeError(f"hass_sglang's CPU sgl_kernel stand-in has no {name!r}")
