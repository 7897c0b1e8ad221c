"""How the CPU backend is switched on: only for the CPU engine, and in SGLang's spawned children."""

import os
import subprocess
import sys

import pytest

from hass_sglang.serving.cpu import SHIM_DIR, cpu_engine_requested, prepend_path


def test_cpu_engine_requested_only_by_the_sglang_switch():
    assert cpu_engine_requested({"SGLANG_USE_CPU_ENGINE": "1"})
    assert not cpu_engine_requested({})
    assert not cpu_engine_requested({"SGLANG_USE_CPU_ENGINE": "0"})


def test_prepend_path_puts_the_shim_first_once():
    assert prepend_path(None, "/s") == "/s"
    assert prepend_path(os.pathsep.join(["/a", "/s", "/b"]), "/s") == os.pathsep.join(["/s", "/a", "/b"])


CHILD = """
import multiprocessing as mp, sys

def child(q):
    # A spawned child imports SGLang's CPU modules (which do `from sgl_kernel import *_cpu`)
    # before any plugin runs in it, like SGLang's scheduler does.
    try:
        import sglang.kernels.ops.speculative.cache_locs as cl
        import sgl_kernel
        q.put((getattr(sgl_kernel, "HASS_CPU_STANDIN", False), cl.assign_extend_cache_locs_cpu.__name__))
    except Exception as exc:  # e.g. the CUDA-only sgl_kernel on a GPU-less host
        q.put((False, type(exc).__name__))

if __name__ == "__main__":
    from sglang.srt.plugins import load_plugins
    from sglang.srt.runtime_context import get_platform
    load_plugins()  # what sglang.launch_server does first
    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    p = ctx.Process(target=child, args=(q,))
    p.start()
    print("RESULT", q.get(timeout=120), get_platform().has_amx)
    p.join()
"""


@pytest.mark.slow
@pytest.mark.parametrize("cpu", [True, False])
def test_plugin_makes_sgl_kernel_importable_in_spawned_children_only_on_cpu_engine(tmp_path, cpu):
    script = tmp_path / "launch.py"
    script.write_text(CHILD)
    env = {k: v for k, v in os.environ.items() if k != "SGLANG_USE_CPU_ENGINE"}
    if cpu:
        env["SGLANG_USE_CPU_ENGINE"] = "1"
    out = subprocess.run([sys.executable, str(script)], env=env, capture_output=True, text=True, timeout=600)
    if cpu:
        assert "RESULT (True, 'assign_extend_cache_locs_cpu') True" in out.stdout, out.stderr[-3000:]
    else:  # not the CPU engine: nothing installed, SGLang's own (GPU) imports apply
        assert "RESULT" in out.stdout and "(True," not in out.stdout, out.stderr[-3000:]
        assert SHIM_DIR not in out.stdout
