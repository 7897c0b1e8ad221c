"""Every `sglang.launch_server` command line written in the deployment files, as an argv.

The manifests (Kubernetes YAML), compose files and Dockerfiles each spell a server command in
their own syntax: container `command` + `args` (with kubelet's `$(VAR)` expansion), compose
`entrypoint` + `command` (with `$$` escaping), Dockerfile `ENTRYPOINT` + `CMD` (exec or shell
form), and inside any of them possibly a `sh -c "... exec python3 -m sglang.launch_server ..."`
script. This module turns each of those into the list of arguments SGLang's own parser receives
(`sglang.srt.server_args.prepare_server_args(argv)`), so CI can feed them to SGLang and a typo or
a stale flag fails there instead of in a pod that crash-loops at 3 a.m.

It never imports SGLang: extraction is tested on its own, and the SGLang check
(tests/test_deploy.py) runs wherever SGLang is installed.

Environment references are replaced, not kept: the value is only known in the running container
(the API key from a Secret, the node rank from LeaderWorkerSet), so each reference becomes the
caller's sample value for that name, or the placeholder `@NAME@` when none is given.
"""

from __future__ import annotations

import json
import re
import shlex
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator, Mapping

import yaml

LAUNCH_MODULE = "sglang.launch_server"
ROUTER_MODULE = "sglang_router.launch_router"
# Variables the LeaderWorkerSet controller injects into every container of a group
# (kubernetes-sigs/lws, api/leaderworkerset/v1: LwsLeaderAddress, LwsGroupSize, LwsWorkerIndex).
LWS_INJECTED_ENV = frozenset({"LWS_LEADER_ADDRESS", "LWS_GROUP_SIZE", "LWS_WORKER_INDEX"})
_SHELLS = frozenset({"sh", "bash", "/bin/sh", "/bin/bash", "/usr/bin/env sh", "dash", "/bin/dash"})
# Shell operators end one simple command; a launch_server argv stops at the first of them.
_SHELL_OPERATORS = frozenset({"&&", "||", ";", "|", "&", ";;", "(", ")"})
# $(VAR) is kubelet's syntax (command/args only); ${VAR}, ${VAR:-default} and $VAR are the shell's.
_KUBELET_REF = re.compile(r"(?<!\$)\$\(([A-Za-z_][A-Za-z0-9_]*)\)")
_SHELL_REF = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::?[-=?+][^}]*)?\}|\$([A-Za-z_][A-Za-z0-9_]*)")


@dataclass(frozen=True)
class LaunchCommand:
    """One `python -m sglang.launch_server` invocation found in a deployment file."""

    source: str  # file and the object it sits in, for error messages
    argv: tuple[str, ...]  # the arguments after `-m sglang.launch_server`, references substituted
    env_refs: tuple[str, ...] = field(default=())  # names of the environment variables referenced

    def flag(self, name: str) -> str | None:
        """Value of `--name value` / `--name=value` (the last one wins, as in argparse)."""
        value = None
        for i, tok in enumerate(self.argv):
            if tok == name and i + 1 < len(self.argv):
                value = self.argv[i + 1]
            elif tok.startswith(name + "="):
                value = tok.split("=", 1)[1]
        return value


def placeholder(name: str) -> str:
    return f"@{name}@"


def substitute_env(text: str, values: Mapping[str, str] | None = None, kubelet: bool = True) -> tuple[str, list[str]]:
    """Replace environment references in `text`; returns the new text and the names referenced.

    `kubelet=True` also expands `$(VAR)` (Kubernetes command/args syntax; `$$(VAR)` is its escape
    and is left alone, as the kubelet does).
    """
    values = values or {}
    names: list[str] = []

    def sub(name: str) -> str:
        names.append(name)
        return values.get(name, placeholder(name))

    if kubelet:
        text = _KUBELET_REF.sub(lambda m: sub(m.group(1)), text)
        text = text.replace("$$(", "$(")
    text = _SHELL_REF.sub(lambda m: sub(m.group(1) or m.group(2)), text)
    return text, names


def _launch_argv_in_tokens(tokens: list[str], module: str = LAUNCH_MODULE) -> list[list[str]]:
    """Every `... -m MODULE ARGS` in a token list; ARGS end at a shell operator."""
    found = []
    for i, tok in enumerate(tokens):
        if tok == module and i > 0 and tokens[i - 1] == "-m":
            args = []
            for t in tokens[i + 1 :]:
                if t in _SHELL_OPERATORS:
                    break
                args.append(t)
            found.append(args)
    return found


def _split_shell_script(script: str) -> list[str]:
    """Shell words of a script, with operators as their own tokens (`a;b` -> a ; b)."""
    script = script.replace("\\\n", " ")  # line continuations, as the shell removes them
    lexer = shlex.shlex(script, posix=True, punctuation_chars=True)
    lexer.whitespace_split = True
    lexer.commenters = "#"
    return list(lexer)


def launch_argvs(
    argv: list[str], values: Mapping[str, str] | None = None, kubelet: bool = False, module: str = LAUNCH_MODULE
) -> list[tuple[list[str], list[str]]]:
    """The launch_server argvs in one process argv: direct, or inside `sh -c SCRIPT`.

    Returns (argv, referenced env names) pairs. In a direct argv no shell runs, so only kubelet
    references are expanded there; a `-c` script is expanded the way its shell will do it.
    """
    out = []
    if len(argv) >= 3 and Path(argv[0]).name in {Path(s).name for s in _SHELLS} and "-c" in argv[1:3]:
        script = argv[argv.index("-c", 1) + 1]
        script, names = substitute_env(script, values, kubelet=kubelet)
        for args in _launch_argv_in_tokens(_split_shell_script(script), module):
            out.append((args, names))
        return out
    subst = [substitute_env(a, values, kubelet=kubelet) if kubelet else (a, []) for a in argv]
    tokens = [t for t, _ in subst]
    names = [n for _, ns in subst for n in ns]
    for args in _launch_argv_in_tokens(tokens, module):
        out.append((args, names))
    return out


# ---------------------------------------------------------------------------------------------
# Kubernetes manifests
# ---------------------------------------------------------------------------------------------


def iter_containers(obj: Any, path: str = "") -> Iterator[tuple[str, dict]]:
    """(where, container) for every container and init container anywhere in a manifest object."""
    if isinstance(obj, dict):
        for key, value in obj.items():
            if key in ("containers", "initContainers") and isinstance(value, list):
                for c in value:
                    if isinstance(c, dict):
                        yield f"{path}.{key}[{c.get('name', '?')}]", c
            else:
                yield from iter_containers(value, f"{path}.{key}" if path else key)
    elif isinstance(obj, list):
        for i, item in enumerate(obj):
            yield from iter_containers(item, f"{path}[{i}]")


def container_env_names(container: dict) -> set[str]:
    return {e["name"] for e in container.get("env") or [] if isinstance(e, dict) and "name" in e}


def undefined_kubelet_refs(container: dict, injected: Iterable[str] = LWS_INJECTED_ENV) -> list[str]:
    """`$(VAR)` references in command/args that the container does not define.

    The kubelet leaves an undefined `$(VAR)` as the literal text, so a typo in `$(SGLANG_API_KEY)`
    would silently make the string "$(SGLANG_API_KEY)" the API key. `envFrom` sources cannot be
    checked statically, so a container using them reports nothing here.
    """
    if container.get("envFrom"):
        return []
    defined = container_env_names(container) | set(injected)
    refs = []
    for a in list(container.get("command") or []) + list(container.get("args") or []):
        refs += [m.group(1) for m in _KUBELET_REF.finditer(str(a))]
    return sorted({r for r in refs if r not in defined})


def load_yaml_documents(path: Path) -> list[dict]:
    return [d for d in yaml.safe_load_all(Path(path).read_text()) if d is not None]


def extract_from_manifest(path: Path, values: Mapping[str, str] | None = None, module: str = LAUNCH_MODULE) -> list[LaunchCommand]:
    found = []
    for doc in load_yaml_documents(path):
        obj_name = f"{doc.get('kind', '?')}/{(doc.get('metadata') or {}).get('name', '?')}"
        for where, c in iter_containers(doc):
            argv = [str(a) for a in (c.get("command") or []) + (c.get("args") or [])]
            for args, names in launch_argvs(argv, values, kubelet=True, module=module):
                found.append(LaunchCommand(f"{path}: {obj_name} {where}", tuple(args), tuple(names)))
    return found


# ---------------------------------------------------------------------------------------------
# docker compose
# ---------------------------------------------------------------------------------------------


def _compose_words(value: Any) -> list[str]:
    if value is None:
        return []
    if isinstance(value, list):
        return [str(v) for v in value]
    return shlex.split(str(value))  # compose splits a string command the shell way, without a shell


def _compose_unescape(word: str, values: Mapping[str, str] | None) -> tuple[str, list[str]]:
    """Compose interpolation: `${VAR}` is filled from the host at `up` time, `$$` is a literal `$`."""
    marker = "\0"
    word = word.replace("$$", marker)
    word, names = substitute_env(word, values, kubelet=False)
    return word.replace(marker, "$"), names


def extract_from_compose(path: Path, values: Mapping[str, str] | None = None, module: str = LAUNCH_MODULE) -> list[LaunchCommand]:
    found = []
    for doc in load_yaml_documents(path):
        for name, svc in (doc.get("services") or {}).items():
            argv, host_refs = [], []
            for w in _compose_words(svc.get("entrypoint")) + _compose_words(svc.get("command")):
                w, ns = _compose_unescape(w, values)
                argv.append(w)
                host_refs += ns
            for args, names in launch_argvs(argv, values, kubelet=False, module=module):
                found.append(LaunchCommand(f"{path}: service {name}", tuple(args), tuple(host_refs + names)))
    return found


# ---------------------------------------------------------------------------------------------
# Dockerfiles
# ---------------------------------------------------------------------------------------------


def _docker_argv(cmd) -> list[str]:
    """A parsed ENTRYPOINT/CMD as the argv Docker runs: exec form as written, shell form via sh -c."""
    if cmd.json:
        return list(cmd.value)
    return ["/bin/sh", "-c", " ".join(cmd.value)]


def extract_from_dockerfile(path: Path, values: Mapping[str, str] | None = None, module: str = LAUNCH_MODULE) -> list[LaunchCommand]:
    """Launch lines in the final stage's ENTRYPOINT + CMD (parsed by BuildKit's own parser)."""
    import dockerfile  # BuildKit's Go parser, so continuation lines and JSON forms match Docker's

    entrypoint: list[str] = []
    cmd: list[str] = []
    for c in dockerfile.parse_file(str(path)):
        if c.cmd == "FROM":  # a new stage starts clean
            entrypoint, cmd = [], []
        elif c.cmd == "ENTRYPOINT":
            entrypoint, cmd = _docker_argv(c), []  # Docker resets CMD when ENTRYPOINT is set
        elif c.cmd == "CMD":
            cmd = _docker_argv(c)
    found = []
    for args, names in launch_argvs(entrypoint + cmd, values, kubelet=False, module=module):
        found.append(LaunchCommand(f"{path}: ENTRYPOINT+CMD", tuple(args), tuple(names)))
    return found


def is_dockerfile(path: Path) -> bool:
    return path.name == "Dockerfile" or path.name.startswith("Dockerfile.") or path.suffix == ".Dockerfile"


def is_compose_file(path: Path) -> bool:
    return path.suffix in (".yaml", ".yml") and ("compose" in path.name)


def extract_launch_commands(
    path: Path, values: Mapping[str, str] | None = None, module: str = LAUNCH_MODULE
) -> list[LaunchCommand]:
    """Every `python -m MODULE` command line in one deployment file (kind chosen by file name)."""
    path = Path(path)
    if is_dockerfile(path):
        return extract_from_dockerfile(path, values, module)
    if is_compose_file(path):
        return extract_from_compose(path, values, module)
    if path.suffix in (".yaml", ".yml"):
        return extract_from_manifest(path, values, module)
    raise ValueError(f"{path}: not a Dockerfile, compose file or Kubernetes manifest")


def dockerfiles(root: Path) -> list[Path]:
    return sorted(p for p in (Path(root) / "docker").rglob("*") if p.is_file() and is_dockerfile(p))


def compose_files(root: Path) -> list[Path]:
    return sorted(p for p in (Path(root) / "deploy").rglob("*") if p.is_file() and is_compose_file(p))


def kubernetes_manifests(root: Path) -> list[Path]:
    return sorted(p for p in (Path(root) / "deploy" / "k8s").rglob("*") if p.suffix in (".yaml", ".yml"))


def deployment_files(root: Path) -> list[Path]:
    """Every file under docker/ and deploy/ that can carry a server command line."""
    return dockerfiles(root) + compose_files(root) + kubernetes_manifests(root)


def dump(commands: list[LaunchCommand]) -> str:
    return json.dumps([{"source": c.source, "argv": list(c.argv), "env_refs": list(c.env_refs)} for c in commands], indent=1)


def main(argv: list[str] | None = None) -> int:
    """`python tests/support/deploy_check.py [ROOT]`: every server and router command line, as JSON.

    What will actually run, with environment references shown as @NAME@: the quickest review of a
    manifest change.
    """
    import sys

    args = sys.argv[1:] if argv is None else argv
    root = Path(args[0]) if args else Path(".")
    commands = []
    for f in deployment_files(root):
        for module in (LAUNCH_MODULE, ROUTER_MODULE):
            commands += extract_launch_commands(f, module=module)
    print(dump(commands))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
