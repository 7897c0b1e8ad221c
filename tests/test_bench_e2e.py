"""The benchmark end to end on this CPU against real SGLang servers (the project's CPU backend),
one server at a time: vanilla and MTP started by `--launch`; then, resuming into the same folder,
HASS given as a running endpoint (the same server then takes a 10 s locust load). One question of
MT-bench and GSM8K, T=0 and T=1, concurrency 1 and 2, 16 tokens. Checks every file of the result
folder and that the numbers agree with each other."""

import asyncio
import json
import subprocess
import sys
from pathlib import Path

import pytest

from hass_sglang.bench.client import Endpoint, RequestSettings, chat_once, make_client
from hass_sglang.bench.commands import main
from hass_sglang.bench.records import read_records
from hass_sglang.bench.report import MEAN
from hass_sglang.drafts import SHIPPED_DIR
from hass_sglang.serving.server import ServerSpec, running_server

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parent.parent
METHODS = ("vanilla", "mtp", "hass")
SETS = ("mt_bench", "gsm8k")


def _run_args(out, hass_url=None):
    return ["run", "--out", str(out), *(["--endpoint", f"hass={hass_url}"] if hass_url else []),
            "--launch", "vanilla=none", "mtp=smollm2-135m-mtp", "--datasets", *SETS, "--questions", "1",
            "--temperatures", "0", "1", "--concurrency", "1", "2", "--max-tokens", "16", "--no-progress"]


async def _one_plain_request(url):
    settings = RequestSettings(max_tokens=16, stream=False)
    async with make_client(Endpoint("hass", url), settings) as client:
        return await chat_once(client, [{"role": "user", "content": "Name three primary colours."}], 0.0, settings)


def test_bench_against_real_sglang_servers_and_locust_smoke(tmp_path):
    from hass_sglang.target import EMBEDDED_TARGET, resolve_target

    out = tmp_path / "run"
    model = str(resolve_target(EMBEDDED_TARGET))
    assert main(_run_args(out)) == 0  # launches vanilla, then MTP
    assert "hass" not in (out / "table.md").read_text()
    spec = ServerSpec(model=model, draft=str(SHIPPED_DIR / "smollm2-135m-hass-eagle"), device="cpu")
    with running_server(spec, log_path=tmp_path / "hass.log") as url:
        logs = {p: p.stat().st_mtime_ns for p in out.glob("logs/*.log")}
        assert main(_run_args(out, url)) == 0  # vanilla and MTP are complete: only HASS is measured
        assert logs == {p: p.stat().st_mtime_ns for p in out.glob("logs/*.log")}  # their servers not restarted
        plain = asyncio.run(_one_plain_request(url))  # accept length also without streaming (response-level sglext)
        assert plain.verify_ct and plain.accept_length >= 1
        assert plain.reported_accept_length == pytest.approx(plain.accept_length, rel=1e-3)
        locust = subprocess.run(
            [str(Path(sys.executable).parent / "locust"), "-f", str(ROOT / "benchmarks" / "locustfile.py"),
             "--headless", "--host", url, "--users", "2", "--spawn-rate", "2", "--run-time", "10s", "--stop-timeout", "60",
             "--only-summary",
             "--bench-max-tokens", "16", "--bench-summary", str(tmp_path / "locust.json")],
            capture_output=True, text=True, timeout=180)  # in-flight requests finish (a loaded CI host is slow)
        assert locust.returncode == 0, locust.stderr[-3000:]
        # everything is finished: the same command starts no server and sends nothing
        stamps = {p: p.stat().st_mtime_ns for p in out.glob("raw/*/*.jsonl")}
        assert main(_run_args(out, url)) == 0
        assert stamps == {p: p.stat().st_mtime_ns for p in out.glob("raw/*/*.jsonl")}
        assert logs == {p: p.stat().st_mtime_ns for p in out.glob("logs/*.log")}

    loc = json.loads((tmp_path / "locust.json").read_text())
    assert loc["failures"] == 0 and loc["requests"] >= 2 and loc["output_tok_s"] > 0, loc

    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["status"] == "complete" and manifest["mtp"] == "mtp" and manifest["baseline"] == "vanilla"
    info = {m["name"]: m for m in manifest["methods"]}
    assert all(info[m]["prefix_cache_flushed"] is True for m in METHODS)  # no cell reuses another's prompts
    assert info["hass"]["server_info"]["speculative_algorithm"] in ("EAGLE", "HASS")
    assert info["vanilla"]["server_info"].get("speculative_algorithm") in (None, "NONE", "")
    assert (out / "logs" / "vanilla.log").is_file() and (out / "logs" / "mtp.log").is_file()
    for m in METHODS:
        for t in ("0", "1"):
            for c in ("1", "2"):
                recs = read_records(out / "raw" / m / f"t{t}_c{c}.jsonl")
                assert sorted(r["dataset"] for r in recs) == sorted(SETS), (m, t, c)
                for r in recs:
                    assert r["error"] is None and 0 < r["output_tokens"] <= 16 and r["ttft_s"] <= r["latency_s"]
                    if m == "vanilla":
                        assert r["accept_length"] is None
                    else:  # SGLang's own accept length, through the OpenAI API's sglext
                        assert r["accept_length"] >= 1
                        assert r["sglang_accept_length"] == pytest.approx(r["accept_length"], rel=1e-3)
                mt = next(r for r in recs if r["dataset"] == "mt_bench")
                assert len(mt["context_turns"]) == 1 and mt["context_turns"][0]["output_tokens"] > 0

    summary = json.loads((out / "summary.json").read_text())
    cells = {(r["method"], r["temperature"], r["concurrency"], r["dataset"]): r for r in summary["cells"]}
    assert len(cells) == 3 * 2 * 2 * 3
    for (m, t, c, d), cell in cells.items():
        base = cells[("vanilla", t, c, d)]
        assert cell["speedup"] == pytest.approx(cell["throughput"] / base["throughput"])
        if m == "hass":
            assert cell["vs_mtp"] == pytest.approx(cell["throughput"] / cells[("mtp", t, c, d)]["throughput"] - 1)
        if m != "vanilla":
            assert cell["accept_length"] >= 1
        if d != MEAN and c == 1:  # batch 1: tokens / sum of latencies, straight from the raw records
            recs = [r for r in read_records(out / "raw" / m / f"t{t:g}_c1.jsonl") if r["dataset"] == d]
            assert cell["throughput"] == pytest.approx(sum(r["output_tokens"] for r in recs)
                                                       / sum(r["latency_s"] for r in recs), rel=1e-3)
    for m in METHODS:
        for t in (0.0, 1.0):
            mean = cells[(m, t, 1, MEAN)]
            assert mean["throughput"] == pytest.approx(sum(cells[(m, t, 1, d)]["throughput"] for d in SETS) / 2)

    table = (out / "table.md").read_text()
    for needle in ("MT-bench", "GSM8K", "Mean", "T=0", "T=1", "vanilla", "mtp", "hass", "Concurrency sweep", "τ"):
        assert needle in table, needle
    for png in ("speedup.png", "accept_length.png", "concurrency.png"):
        assert (out / "plots" / png).stat().st_size > 1000
    print(table)
    print("locust:", loc)
