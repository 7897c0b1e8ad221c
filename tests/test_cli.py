import json
import os
import subprocess
import sys

import pytest

from hass_sglang.checkpoint import save_draft
from hass_sglang.heads import build_head

HASS = [sys.executable, "-m", "hass_sglang.cli"]
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


def run(*args):
    return subprocess.run([*HASS, *args], capture_output=True, text=True, env=ENV, timeout=600)


def test_generate_one_prompt_prints_text_and_table():
    r = run("generate", "--prompt", "What is the capital of France?", "--max-new-tokens", "12",
            "--draft", "random", "--num-steps", "3", "--topk", "2", "--num-draft-tokens", "4", "--threads", "1")
    assert r.returncode == 0, r.stderr
    assert "Paris" in r.stdout
    assert "| vanilla | prompt |" in r.stdout and "| hass | prompt |" in r.stdout


def test_check_draft_accepts_a_good_folder_and_refuses_a_bad_one(tmp_path, target):
    good = save_draft(build_head("mtp", target.config, seed=0), tmp_path / "good", target.config)
    r = run("check-draft", str(good))
    assert r.returncode == 0 and "ok: mtp head" in r.stdout, r.stderr
    cfg = json.loads((good / "config.json").read_text())
    (good / "config.json").write_text(json.dumps({**cfg, "hidden_size": 1024}))
    r = run("check-draft", str(good))
    assert r.returncode == 2 and "hidden_size: draft 1024 != target 576" in r.stderr


def test_bad_arguments_are_clear_errors(tmp_path):
    r = run("generate", "--target", str(tmp_path / "nope"), "--prompt", "hi")
    assert r.returncode == 2 and "unknown model" in r.stderr
    r = run("generate", "--prompt", "   ", "--draft", "random")
    assert r.returncode == 2 and "empty prompt" in r.stderr
    r = run("generate", "--prompt", "hi", "--max-new-tokens", "0", "--draft", "random")
    assert r.returncode == 2 and "max_new_tokens" in r.stderr
    r = run("generate", "--prompt", "hi", "--num-draft-tokens", "1000", "--draft", "random")
    assert r.returncode == 2 and "num_draft_tokens must be in" in r.stderr
    r = run("check-draft", str(tmp_path))
    assert r.returncode == 2 and "has no config.json" in r.stderr
    r = run("serve", "--ask", "hi", "--repeat", "0")
    assert r.returncode == 2 and "--repeat must be >= 1" in r.stderr and "launch_server" not in r.stdout


def test_serve_command_line_is_sglang_launch_server_with_hass():
    from hass_sglang.serving.server import ServerSpec

    argv = ServerSpec("/m", "/d", device="cpu", host="0.0.0.0", port=30000, extra=("--log-level", "warning")).argv()
    assert argv[1:3] == ["-m", "sglang.launch_server"]

    def flag(name):
        return argv[argv.index(name) + 1]

    assert flag("--speculative-algorithm") == "HASS" and flag("--speculative-draft-model-path") == "/d"
    assert flag("--host") == "0.0.0.0" and flag("--device") == "cpu" and flag("--dtype") == "float32"
    assert argv[-2:] == ["--log-level", "warning"]
    gpu = ServerSpec("/m", None, device="cuda", host="127.0.0.1", port=1).argv()
    assert "--speculative-algorithm" not in gpu and "--device" not in gpu


def test_server_ports_come_from_below_the_ephemeral_range_and_are_free(monkeypatch):
    """Outgoing connections take their local ports from the ephemeral range; a server port picked
    there can be taken before the server binds it (seen in CI), so picks come from below it."""
    import socket

    from hass_sglang.serving import server
    from hass_sglang.serving.server import SERVER_PORT_RANGE, ServerSpec, ephemeral_low, free_port

    ports = {free_port() for _ in range(20)}
    assert all(SERVER_PORT_RANGE[0] <= p < min(SERVER_PORT_RANGE[1] + 1, ephemeral_low()) for p in ports)
    assert len(ports) > 1  # picked at random, so two servers starting together rarely pick the same one
    two = (min(ports), min(ports) + 1)  # a range of two ports, one of them in use: the other one comes back
    monkeypatch.setattr(server, "SERVER_PORT_RANGE", two)
    with socket.socket() as held:
        try:
            held.bind(("127.0.0.1", two[0]))
        except OSError:
            pytest.skip(f"port {two[0]} taken by another process meanwhile")
        held.listen()
        assert {free_port() for _ in range(20)} <= {two[1], *range(ephemeral_low(), 65536)}
        assert two[0] not in {free_port() for _ in range(20)}
    monkeypatch.undo()
    spec = ServerSpec("/m", None, device="cpu").with_port()
    assert SERVER_PORT_RANGE[0] <= spec.port <= SERVER_PORT_RANGE[1]


def test_a_cpu_server_gets_a_thread_per_usable_core_unless_omp_num_threads_is_set():
    import os

    from hass_sglang.serving.server import ServerSpec, cpu_threads

    spec = ServerSpec("/m", "/d", device="cpu", port=1)
    cores = len(os.sched_getaffinity(0))
    assert spec.env({"PATH": "/bin"})["OMP_NUM_THREADS"] == str(cores) == str(cpu_threads({}))
    assert spec.env({"OMP_NUM_THREADS": "1"})["OMP_NUM_THREADS"] == "1"  # a user's (or the test suite's) choice
    assert spec.env({"OMP_NUM_THREADS": ""})["OMP_NUM_THREADS"] == str(cores)
    assert spec.env({})["SGLANG_USE_CPU_ENGINE"] == "1"
    assert "OMP_NUM_THREADS" not in ServerSpec("/m", "/d", device="cuda", port=1).env({})


def test_bench_is_a_subcommand_of_hass():
    r = run("--help")
    assert r.returncode == 0 and "bench" in r.stdout and "serving benchmarks" in r.stdout
    r = run("bench", "--help")
    assert r.returncode == 0 and all(c in r.stdout for c in ("run", "report", "compare"))
    r = run("bench", "report", "/nonexistent/run")  # the shared handler: a named error, exit 2
    assert r.returncode == 2 and r.stderr.startswith("error: ") and "no manifest.json" in r.stderr


@pytest.mark.slow
def test_a_server_that_fails_to_start_is_an_error_not_a_traceback(tmp_path):
    """`hass serve --ask` with a model folder SGLang cannot load: the server exits, `hass` says so."""
    model = tmp_path / "broken-model"
    model.mkdir()
    (model / "config.json").write_text("{}")
    r = subprocess.run([*HASS, "serve", "--vanilla", "--target", str(model), "--ask", "hi", "--timeout", "300",
                        "--log", str(tmp_path / "server.log")], capture_output=True, text=True, env=ENV, timeout=600)
    assert r.returncode == 2, r.stdout + r.stderr
    assert "error: sglang server exited with" in r.stderr and str(tmp_path / "server.log") in r.stderr
    assert "Traceback" not in r.stderr


def test_check_draft_and_convert_read_the_targets_config_only(tmp_path, target):
    """A 70B or 671B target cannot be loaded to check a draft: a folder with only config.json must do."""
    config_only = tmp_path / "target-config-only"
    config_only.mkdir()
    (config_only / "config.json").write_text((target.path / "config.json").read_text())
    r = run("check-draft", "smollm2-135m-hass-eagle", "--target", str(config_only))
    assert r.returncode == 0 and "ok: eagle head" in r.stdout, r.stderr
    assert "draft vocabulary full" not in r.stdout  # the shipped draft has a reduced vocabulary
    r = run("convert", "smollm2-135m-hass-eagle", str(tmp_path / "full"), "--full-vocabulary",
            "--target", str(config_only))
    assert r.returncode == 0, r.stderr
    r = run("check-draft", str(tmp_path / "full"), "--target", str(config_only))
    assert r.returncode == 0 and "draft vocabulary full" in r.stdout, r.stderr
    r = run("convert", "smollm2-135m-hass-eagle", str(tmp_path / "again"), "--target", str(config_only))
    assert r.returncode == 2 and "nothing to convert" in r.stderr
