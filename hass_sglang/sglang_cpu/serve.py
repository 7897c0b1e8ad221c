"""Start and stop a real `sglang.launch_server` on a CPU host (tests, benchmarks).

`cpu_server_argv` is the command (a pure function); `cpu_server` runs it on 127.0.0.1, waits until
`/health_generate` answers, yields the base URL and kills the whole process group afterwards.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

# A small tree: on 2 CPU cores verifying 60 tokens per step (the HASS paper's GPU setting) costs
# far more than it can save. A 3-step chain (4 tokens per verify) was the fastest of the sweep in
# docs/sglang-cpu.md (0.80x plain vs 0.67x for 3 x top-2 x 6 at T=0, same run).
CPU_TREE = ("--speculative-num-steps", "3", "--speculative-eagle-topk", "1", "--speculative-num-draft-tokens", "4")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def cpu_server_argv(model_path: str, port: int, draft_path: str | None = None, tree: tuple[str, ...] = CPU_TREE,
                    max_total_tokens: int = 16384, extra: tuple[str, ...] = ()) -> list[str]:
    argv = [sys.executable, "-m", "sglang.launch_server", "--model-path", model_path, "--device", "cpu",
            "--dtype", "float32", "--max-total-tokens", str(max_total_tokens), "--host", "127.0.0.1",
            "--port", str(port), "--skip-server-warmup"]
    if draft_path is not None:
        argv += ["--speculative-algorithm", "HASS", "--speculative-draft-model-path", draft_path, *tree]
    return argv + list(extra)


def cpu_server_env(base=None) -> dict:
    env = dict(os.environ if base is None else base)
    env.update(SGLANG_USE_CPU_ENGINE="1", OMP_NUM_THREADS=env.get("OMP_NUM_THREADS", "1"))
    return env


@contextlib.contextmanager
def cpu_server(model_path: str, draft_path: str | None = None, log_path: str | Path | None = None,
               timeout_s: float = 300, **kw):
    port = free_port()
    with running_server(cpu_server_argv(model_path, port, draft_path, **kw), f"http://127.0.0.1:{port}",
                        cpu_server_env(), log_path, timeout_s) as url:
        yield url


@contextlib.contextmanager
def running_server(argv: list[str], url: str, env: dict | None = None, log_path: str | Path | None = None,
                   timeout_s: float = 300, log_to_console: bool = False):
    """Run a launch_server argv in its own process group until /health_generate answers; yield
    `url`; kill the whole group afterwards (an idle SGLang scheduler keeps a core busy)."""
    log = None if log_to_console else open(log_path or os.devnull, "w")
    proc = subprocess.Popen(argv, env=env, stdout=log, stderr=subprocess.STDOUT if log else None,
                            start_new_session=True)
    try:
        deadline = time.time() + timeout_s
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"sglang server exited with {proc.returncode}; log: {log_path or 'console'}")
            try:
                with urllib.request.urlopen(url + "/health_generate", timeout=120) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if time.time() > deadline:
                raise TimeoutError(f"sglang server not ready after {timeout_s}s; log: {log_path or 'console'}")
            time.sleep(2)
        yield url
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        if log is not None:
            log.close()
