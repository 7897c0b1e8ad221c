"""The one `python -m sglang.launch_server` command line of the project, and the one way to run it.

`ServerSpec` says what to serve (target, draft, device, host, port, tree, extra flags);
`ServerSpec.argv()` builds the command (pure) and `ServerSpec.env()` its environment;
`running_server(spec)` starts it in its own process group, waits until `/health_generate`
answers, yields the base URL and kills the whole group afterwards (`launched_server`: the URL and
the group's pid). `hass serve`, `hass bench
--launch`, the benchmark scripts and the tests all go through these.

On a CPU host (`device="cpu"`) the command adds what the project's CPU backend needs
(docs/sglang-cpu.md): `--device cpu`, fp32 unless `dtype` says otherwise (`auto` would give fp16,
whose matmuls are very slow without AVX512-FP16), a small KV reservation, no warm-up request,
`SGLANG_USE_CPU_ENGINE=1` and an OpenMP thread per core this process may use unless
OMP_NUM_THREADS is set (`cpu_threads`); the draft tree
defaults to `tree.cpu_default_tree` of the dtype (3 1 4 in fp32, 3 4 8 in bf16). Elsewhere the
HASS tree comes from the plugin (the paper's 6/10/60) unless `tree` is given.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import random
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from hass_sglang.drafts import TARGET_DRAFT
from hass_sglang.errors import ServerStartError
from hass_sglang.serving.plan import HASS_ALGORITHM
from hass_sglang.tree import TreeShape, cpu_default_tree


def cpu_threads(env=None) -> int:
    """OpenMP threads of a CPU server: OMP_NUM_THREADS when set, else every core this process may run
    on. Measured on 2 cores (docs/sglang-cpu.md): 2 threads serve HASS 26% faster than 1, plain 5%
    (the scheduler is the one busy process while it decodes)."""
    env = os.environ if env is None else env
    if env.get("OMP_NUM_THREADS"):
        return int(env["OMP_NUM_THREADS"])
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # no affinity API (macOS)
        return os.cpu_count() or 1


# Ports for servers that bind them seconds later come from below the kernel's ephemeral range:
# bind(0) hands out an ephemeral port, and until the server binds it any outgoing connection on the
# host may take it as its local port (a CI run lost a HASS server to "address already in use" while
# the other test worker's clients were connecting). SGLang keeps its own such ports (NCCL/TCPStore)
# in 22000-29999 for the same reason (utils/network.py get_free_port_below_ephemeral); this range
# stays clear of it.
SERVER_PORT_RANGE = (12000, 21999)


def ephemeral_low() -> int:
    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range") as f:
            return int(f.read().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


def free_port(attempts: int = 64) -> int:
    """A TCP port free now, for a server started next: below the ephemeral range when there is room."""
    low, high = SERVER_PORT_RANGE[0], min(SERVER_PORT_RANGE[1], ephemeral_low() - 1)
    for port in random.sample(range(low, high + 1), min(attempts, max(high - low + 1, 0))):
        with socket.socket() as s:
            try:
                s.bind(("0.0.0.0", port))  # the widest address a server may listen on
            except OSError:
                continue
            return port
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass(frozen=True)
class ServerSpec:
    model: str  # a local HF folder (hass_sglang.target.resolve_target) or anything SGLang loads
    # a draft folder: `--speculative-algorithm HASS`; "target": HASS with the target's own MTP layer
    # (DeepSeek; no draft path, SGLang loads it from the target); None: plain decoding
    draft: str | None = None
    device: str = "cuda"  # "cpu": the project's CPU backend; "cuda": SGLang's default; else --device DEVICE
    host: str = "127.0.0.1"
    port: int = 0  # 0: a free port, chosen by `with_port`
    tree: TreeShape | None = None  # None: cpu_default_tree(dtype) on CPU, the plugin's HASS defaults elsewhere
    dtype: str | None = None  # --dtype; None: float32 on CPU, SGLang's auto elsewhere
    extra: tuple[str, ...] = ()  # more launch_server flags, appended last (the last value wins)
    cpu_max_total_tokens: int = 16384  # KV reservation of a CPU server

    @property
    def cpu(self) -> bool:
        return self.device == "cpu"

    @property
    def url(self) -> str:
        host = "127.0.0.1" if self.host in ("0.0.0.0", "::") else self.host
        return f"http://{host}:{self.port}"

    def with_port(self) -> "ServerSpec":
        return self if self.port else dataclasses.replace(self, port=free_port())

    def argv(self) -> list[str]:
        argv = [sys.executable, "-m", "sglang.launch_server", "--model-path", self.model]
        if self.cpu:
            argv += ["--device", "cpu", "--dtype", self.dtype or "float32",
                     "--max-total-tokens", str(self.cpu_max_total_tokens)]
        elif self.dtype:
            argv += ["--dtype", self.dtype]
        # /metrics on (sglang:spec_accept_length is how operators watch a draft; the manifests enable it too)
        argv += ["--host", self.host, "--port", str(self.port), "--enable-metrics"]
        if self.cpu:
            # An idle SGLang scheduler polls in a busy loop and keeps a core at 100%: on a CPU host that
            # core is one the OpenMP threads of a working server (this one, or a second one beside it,
            # as in `hass calibrate`) need. --sleep-on-idle blocks on the request sockets instead.
            argv += ["--skip-server-warmup", "--sleep-on-idle"]
        elif self.device != "cuda":
            argv += ["--device", self.device]
        if self.draft is not None:
            tree = self.tree or (cpu_default_tree(self.dtype or "float32") if self.cpu else None)
            argv += ["--speculative-algorithm", HASS_ALGORITHM]
            if self.draft != TARGET_DRAFT:
                argv += ["--speculative-draft-model-path", str(self.draft)]
            argv += list(tree.sglang_flags() if tree else ())
        return argv + list(self.extra)

    def env(self, base: dict | None = None) -> dict:
        env = dict(os.environ if base is None else base)
        if self.cpu:
            env.update(SGLANG_USE_CPU_ENGINE="1", OMP_NUM_THREADS=str(cpu_threads(env)))
        return env

    def env_prefix(self) -> str:
        """The environment settings the command needs, shell style (for printing the command)."""
        env = self.env()
        return " ".join(f"{k}={env[k]}" for k in ("SGLANG_USE_CPU_ENGINE", "OMP_NUM_THREADS") if self.cpu and k in env)


@dataclass(frozen=True)
class LaunchedServer:
    url: str
    pid: int  # leader of the server's own process group: os.killpg(pid, ...) reaches every SGLang process


@contextlib.contextmanager
def running_server(spec: ServerSpec, log_path: str | Path | None = None, timeout_s: float = 300,
                   log_to_console: bool = False) -> Iterator[str]:
    """Run the server in its own process group until /health_generate answers; yield its URL; kill
    the whole group afterwards (SGLang's scheduler and detokenizer are processes of their own)."""
    with launched_server(spec, log_path, timeout_s, log_to_console) as server:
        yield server.url


@contextlib.contextmanager
def launched_server(spec: ServerSpec, log_path: str | Path | None = None, timeout_s: float = 300,
                    log_to_console: bool = False) -> Iterator[LaunchedServer]:
    """`running_server`, yielding the process group too (fault tests kill a replica by its pid)."""
    spec = spec.with_port()
    where = log_path or "console"
    log = None if log_to_console else open(log_path or os.devnull, "w")
    proc = subprocess.Popen(spec.argv(), env=spec.env(), stdout=log, stderr=subprocess.STDOUT if log else None,
                            start_new_session=True)
    try:
        deadline = time.time() + timeout_s
        while True:
            if proc.poll() is not None:
                raise ServerStartError(f"sglang server exited with {proc.returncode}; log: {where}")
            try:
                with urllib.request.urlopen(spec.url + "/health_generate", timeout=120) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if time.time() > deadline:
                raise ServerStartError(f"sglang server not ready after {timeout_s}s; log: {where}")
            time.sleep(2)
        yield LaunchedServer(spec.url, proc.pid)
    finally:
        stop_process_group(proc, 30)
        if log is not None:
            log.close()


def stop_process_group(proc: subprocess.Popen, timeout_s: float) -> None:
    """SIGTERM the process group `proc` leads (started with start_new_session), SIGKILL after
    `timeout_s`; a group already gone (e.g. killed by a fault test) is fine."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
