"""`--launch name=<draft|none>`: start each method's server locally, one at a time.

On a CPU host (`--device cpu`, the default) the server is SGLang's own `launch_server` through the
project's CPU backend (`hass_sglang.sglang_cpu.serve.cpu_server`: fp32, small tree). On a GPU host
the command is `python -m sglang.launch_server --model-path M --host 127.0.0.1 --port P` plus, for a
draft, `--speculative-algorithm HASS --speculative-draft-model-path D` and the tree flags, plus any
`--launch-args` (all methods) and `--method-args name="..."` (one method, e.g. DeepSeek's built-in
MTP: `mtp=none --method-args mtp="--speculative-algorithm EAGLE --speculative-num-steps 1 ..."`).
"""

from __future__ import annotations

import contextlib
import shlex
import sys
from dataclasses import dataclass, field
from pathlib import Path

from hass_sglang.errors import HassError

SHIPPED_DRAFTS = Path(__file__).resolve().parent.parent / "drafts"
NO_DRAFT = {"none", "vanilla", ""}


class LaunchError(HassError):
    """A `--launch` spec names a draft that does not exist, or the options contradict each other."""


@dataclass(frozen=True)
class LaunchSpec:
    name: str
    draft: str | None  # a draft folder, or None for plain decoding


@dataclass(frozen=True)
class LaunchOptions:
    model: str | None = None  # HF folder / GGUF / hub id; None = the embedded SmolLM2 target
    device: str = "cpu"
    tree: tuple[str, ...] | None = None  # SGLang tree flags; None = CPU_TREE on CPU, SGLang/plugin defaults else
    launch_args: tuple[str, ...] = ()
    method_args: dict[str, tuple[str, ...]] = field(default_factory=dict)
    timeout_s: float = 900.0
    log_dir: Path | None = None


def parse_launch(arg: str) -> LaunchSpec:
    """`hass=path/to/draft`, `hass=smollm2-135m-hass-eagle` (a shipped draft) or `vanilla=none`."""
    name, sep, draft = arg.partition("=")
    if not sep or not name:
        raise LaunchError(f"bad --launch {arg!r}: expected NAME=DRAFT_DIR or NAME=none")
    if draft.lower() in NO_DRAFT:
        return LaunchSpec(name, None)
    path = Path(draft).expanduser()
    if not path.is_dir() and (SHIPPED_DRAFTS / draft).is_dir():
        path = SHIPPED_DRAFTS / draft
    if not path.is_dir():
        shipped = sorted(p.name for p in SHIPPED_DRAFTS.iterdir() if p.is_dir()) if SHIPPED_DRAFTS.is_dir() else []
        raise LaunchError(f"--launch {arg!r}: draft folder {draft!r} not found (shipped drafts: {shipped})")
    return LaunchSpec(name, str(path.resolve()))


def parse_tree(text: str | None) -> tuple[str, ...] | None:
    """'3 2 6' -> SGLang's --speculative-num-steps / --speculative-eagle-topk / --speculative-num-draft-tokens."""
    if not text:
        return None
    parts = text.replace(",", " ").split()
    if len(parts) != 3 or not all(p.isdigit() for p in parts):
        raise LaunchError(f"bad --tree {text!r}: expected 'STEPS TOPK DRAFT_TOKENS', e.g. '3 2 6'")
    return ("--speculative-num-steps", parts[0], "--speculative-eagle-topk", parts[1],
            "--speculative-num-draft-tokens", parts[2])


def parse_method_args(items: list[str]) -> dict[str, tuple[str, ...]]:
    out = {}
    for item in items:
        name, sep, args = item.partition("=")
        if not sep or not name:
            raise LaunchError(f"bad --method-args {item!r}: expected NAME=\"--flag value ...\"")
        out[name] = tuple(shlex.split(args))
    return out


def model_path(opts: LaunchOptions) -> str:
    from hass_sglang.target import EMBEDDED_TARGET, resolve_target

    return str(resolve_target(opts.model or EMBEDDED_TARGET))


def gpu_server_argv(spec: LaunchSpec, opts: LaunchOptions, model: str, port: int) -> list[str]:
    argv = [sys.executable, "-m", "sglang.launch_server", "--model-path", model, "--host", "127.0.0.1",
            "--port", str(port)]
    if opts.device != "cuda":
        argv += ["--device", opts.device]
    if spec.draft is not None:
        argv += ["--speculative-algorithm", "HASS", "--speculative-draft-model-path", spec.draft, *(opts.tree or ())]
    return argv + list(opts.launch_args) + list(opts.method_args.get(spec.name, ()))


@contextlib.contextmanager
def launched(spec: LaunchSpec, opts: LaunchOptions):
    """Start the method's server, yield its URL, stop it (the whole process group) afterwards."""
    from hass_sglang.sglang_cpu import serve

    log = None if opts.log_dir is None else Path(opts.log_dir) / f"{spec.name}.log"
    if log is not None:
        log.parent.mkdir(parents=True, exist_ok=True)
    model = model_path(opts)
    extra = tuple(opts.launch_args) + tuple(opts.method_args.get(spec.name, ()))
    if opts.device == "cpu":
        kw = {"tree": opts.tree} if opts.tree else {}
        with serve.cpu_server(model, spec.draft, log_path=log, timeout_s=opts.timeout_s, extra=extra, **kw) as url:
            yield url
        return
    port = serve.free_port()
    url = f"http://127.0.0.1:{port}"
    with serve.running_server(gpu_server_argv(spec, opts, model, port), url, None, log, opts.timeout_s) as url:
        yield url
