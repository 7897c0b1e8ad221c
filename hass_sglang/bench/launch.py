"""`--launch name=<draft|none>`: start each method's server locally, one at a time.

The draft is named as everywhere in the project (`hass_sglang.drafts.resolve_draft`: a folder, a
shipped draft name, `none`). The server is `hass_sglang.serving.server.ServerSpec`: on a CPU host
(`--device cpu`, the default) SGLang's own `launch_server` through the project's CPU backend
(fp32, the CPU tree); elsewhere plain `launch_server` flags, plus `--launch-args` (all methods) and
`--method-args name="..."` (one method, e.g. DeepSeek's built-in MTP:
`mtp=none --method-args mtp="--speculative-algorithm EAGLE --speculative-num-steps 1 ..."`).
"""

from __future__ import annotations

import contextlib
import shlex
from dataclasses import dataclass, field
from pathlib import Path

from hass_sglang.errors import LaunchError, ModelNotFoundError
from hass_sglang.serving.server import ServerSpec, running_server
from hass_sglang.tree import TreeShape


@dataclass(frozen=True)
class LaunchSpec:
    name: str
    draft: str | None  # a draft folder, "target" (the target's own MTP layer), or None for plain decoding


@dataclass(frozen=True)
class LaunchOptions:
    model: str | None = None  # HF folder / GGUF / hub id; None = the embedded SmolLM2 target
    device: str = "cpu"
    tree: TreeShape | None = None  # None = tree.cpu_default_tree(dtype) on CPU, the plugin's defaults elsewhere
    launch_args: tuple[str, ...] = ()
    method_args: dict[str, tuple[str, ...]] = field(default_factory=dict)
    timeout_s: float = 900.0
    log_dir: Path | None = None


def parse_launch(arg: str) -> LaunchSpec:
    """`hass=path/to/draft`, `hass=smollm2-135m-hass-eagle` (a shipped draft), `mtp=target` (DeepSeek's
    own MTP layer) or `vanilla=none`."""
    from hass_sglang.drafts import resolve_draft

    name, sep, draft = arg.partition("=")
    if not sep or not name:
        raise LaunchError(f"bad --launch {arg!r}: expected NAME=DRAFT_DIR or NAME=none")
    try:
        choice = resolve_draft(draft)
    except ModelNotFoundError as exc:
        raise LaunchError(f"--launch {arg!r}: {exc}") from exc
    if choice.kind == "random":
        raise LaunchError(f"--launch {arg!r}: a random draft is not a benchmark method; give a draft folder")
    if choice.kind == "target":
        return LaunchSpec(name, choice.kind)
    return LaunchSpec(name, None if choice.path is None else str(choice.path))


def parse_method_args(items: list[str]) -> dict[str, tuple[str, ...]]:
    out = {}
    for item in items:
        name, sep, args = item.partition("=")
        if not sep or not name:
            raise LaunchError(f"bad --method-args {item!r}: expected NAME=\"--flag value ...\"")
        out[name] = tuple(shlex.split(args))
    return out


def server_spec(spec: LaunchSpec, opts: LaunchOptions, model: str, port: int = 0) -> ServerSpec:
    """The server of one method: model, draft, device, tree, then `--launch-args`, then its own args."""
    return ServerSpec(model=model, draft=spec.draft, device=opts.device, port=port, tree=opts.tree,
                      extra=tuple(opts.launch_args) + tuple(opts.method_args.get(spec.name, ())))


@contextlib.contextmanager
def launched(spec: LaunchSpec, opts: LaunchOptions):
    """Start the method's server, yield its URL, stop it (the whole process group) afterwards."""
    from hass_sglang.target import EMBEDDED_TARGET, resolve_target

    log = None if opts.log_dir is None else Path(opts.log_dir) / f"{spec.name}.log"
    if log is not None:
        log.parent.mkdir(parents=True, exist_ok=True)
    model = str(resolve_target(opts.model or EMBEDDED_TARGET))
    with running_server(server_spec(spec, opts, model), log_path=log, timeout_s=opts.timeout_s) as url:
        yield url
