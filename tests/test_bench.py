"""Benchmark runner without a model: report math (seed 002's numbers), dataset errors, HF datasets
from local files, resuming, Ctrl-C, endpoint down, launch specs, and the locustfile. The endpoint
here is a stdlib OpenAI-compatible stub (tests/support/bench_stub_server.py) that only exercises the
bookkeeping; tests/test_bench_e2e.py runs the same code against real SGLang servers."""

import json
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from hass_sglang.bench import report
from hass_sglang.bench.client import RequestSettings
from hass_sglang.bench.commands import main
from hass_sglang.bench.launch import LaunchOptions, parse_launch, server_spec
from hass_sglang.bench.load import read_requests
from hass_sglang.bench.questions import load_datasets
from hass_sglang.bench.records import read_records
from hass_sglang.bench.results import load_raw
from hass_sglang.bench.session import MethodSpec, run_benchmark
from hass_sglang.errors import ConfigError, DatasetError, EndpointDownError, LaunchError, ResultsError
from hass_sglang.tree import TreeShape
from support.bench_stub_server import StubServer

ROOT = Path(__file__).resolve().parent.parent
SEED_SETS = ["mt_bench", "humaneval", "gsm8k", "alpaca", "qa", "sum"]
# seed 002, DeepSeek-R1, T=0: output token/s per dataset
SEED_T0 = {
    "DeepSeek Vanilla": [35.6709, 35.5978, 35.6736, 35.6902, 35.6730, 34.4039],
    "DeepSeek MTP": [62.2485, 67.3626, 66.3277, 61.0297, 62.2504, 55.5675],
    "HASS": [66.2789, 73.6944, 71.4170, 65.8383, 67.4284, 61.8689],
}


def _rec(method, dataset, qid, tokens, start, latency, t=0.0, c=1, verify=None, error=None):
    r = {"method": method, "dataset": dataset, "question_id": str(qid), "temperature": t, "concurrency": c,
         "error": error}
    if error is None:
        r.update(output_tokens=tokens, latency_s=latency, ttft_s=latency / 10, t_start=start,
                 t_end=start + latency, verify_ct=verify, accept_length=tokens / verify if verify else None)
    return r


def _seed_raw():
    """One request per dataset whose tokens / latency is exactly seed 002's throughput."""
    raw = {}
    for m, thr in SEED_T0.items():
        raw[(m, 0.0, 1)] = [_rec(m, d, 0, 1000, 100.0 * i, 1000 / x, verify=400 if m != "DeepSeek Vanilla" else None)
                            for i, (d, x) in enumerate(zip(SEED_SETS, thr))]
    return raw


def test_report_reproduces_seed_002_speedups_and_gain_over_mtp():
    s = report.summarize(_seed_raw(), list(SEED_T0), SEED_SETS, "DeepSeek Vanilla", "DeepSeek MTP")
    idx = report.cell_index(s)
    hass_mean = idx[("HASS", 0.0, 1, "Mean")]
    assert hass_mean["throughput"] == pytest.approx(67.7543, abs=1e-4)
    assert hass_mean["speedup"] == pytest.approx(67.7543 / 35.4516, abs=1e-4)  # 1.91x
    assert hass_mean["vs_mtp"] == pytest.approx(0.0847, abs=1e-4)  # +8.47%
    gsm = idx[("HASS", 0.0, 1, "gsm8k")]
    assert gsm["speedup"] == pytest.approx(71.4170 / 35.6736) and gsm["vs_mtp"] == pytest.approx(71.4170 / 66.3277 - 1)
    assert idx[("DeepSeek MTP", 0.0, 1, "sum")]["vs_mtp"] is None  # MTP and baseline carry no +%
    assert idx[("DeepSeek Vanilla", 0.0, 1, "qa")]["speedup"] == 1.0
    assert idx[("DeepSeek Vanilla", 0.0, 1, "qa")]["accept_length"] is None and gsm["accept_length"] == 2.5
    table = report.render_main_table(s)
    lines = table.splitlines()
    assert lines[0].split("|")[3].strip() == "Datasets" and set(lines[1].replace("|", "")) == {" ", "-"}
    assert [c.strip() for c in lines[2].split("|")[3::2]][:7] == ["MT-bench", "HumanEval", "GSM8K", "Alpaca", "QA",
                                                                  "Summarization", "Mean"]
    assert lines[3].split("|")[1:5] == [" Temperature ", " Method           ", " Throughput ", " Speedup        "]
    hass_row = [c.strip() for c in lines[6].split("|")[1:-1]]
    assert hass_row[:6] == ["", "HASS", "66.2789", "1.86x (+6.47%)", "73.6944", "2.07x (+9.40%)"]
    assert hass_row[-2:] == ["67.7543", "1.91x (+8.47%)"]
    assert [c.strip() for c in lines[4].split("|")[1:4]] == ["T=0", "DeepSeek Vanilla", "35.6709"]
    lengths = report.render_accept_length_table(s)
    assert "DeepSeek Vanilla" not in lengths and "| 2.5000" in lengths


def test_throughput_is_tokens_over_busy_time_at_any_concurrency():
    assert report.busy_seconds([(0, 2), (1, 3), (5, 6)]) == 4
    assert report.busy_seconds([]) == 0
    # two overlapping requests at concurrency 2 and a gap between resumed sessions
    recs = [_rec("v", "qa", 0, 10, 0.0, 2.0, c=2), _rec("v", "qa", 1, 30, 1.0, 2.0, c=2),
            _rec("v", "qa", 2, 20, 100.0, 1.0, c=2)]
    st = report.cell_stats(recs)
    assert st["throughput"] == pytest.approx(60 / 4) and st["latency_p50_s"] == 2.0
    # an error followed by a success for the same question: the success counts, once
    recs = [_rec("v", "qa", 0, None, 0, 0, error="HTTP 500"), _rec("v", "qa", 0, 8, 0.0, 1.0),
            _rec("v", "qa", 1, None, 0, 0, error="HTTP 400")]
    latest = report.latest_records(recs)
    st = report.cell_stats(latest)
    assert (st["requests"], st["errors"], st["output_tokens"]) == (1, 1, 8)


def test_mean_uses_datasets_every_method_has_and_compare_lines_up_cells():
    raw = {("vanilla", 0.0, 1): [_rec("vanilla", "qa", 0, 10, 0, 1.0), _rec("vanilla", "sum", 0, 10, 5, 2.0)],
           ("hass", 0.0, 1): [_rec("hass", "qa", 0, 10, 0, 0.5, verify=4)]}  # hass interrupted before sum
    s = report.summarize(raw, ["vanilla", "hass"], ["qa", "sum"], "vanilla")
    idx = report.cell_index(s)
    assert idx[("vanilla", 0.0, 1, "Mean")]["datasets"] == ["qa"]
    assert idx[("hass", 0.0, 1, "Mean")]["speedup"] == pytest.approx(2.0)
    faster = {k: [dict(r, latency_s=r["latency_s"] / 2, t_end=r["t_start"] + r["latency_s"] / 2) for r in v]
              for k, v in raw.items()}
    text = report.compare(s, report.summarize(faster, ["vanilla", "hass"], ["qa", "sum"], "vanilla"), "old", "new")
    assert "Throughput old" in text and "+100.00%" in text


def test_dataset_errors_name_file_and_line(tmp_path, capsys):
    with pytest.raises(DatasetError, match="question file not found: .*nope.jsonl"):
        load_datasets([str(tmp_path / "nope.jsonl")])
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"question_id": 1, "turns": ["hi"]}\n{"question_id": 2, "turns": [\n')
    with pytest.raises(DatasetError, match=r"bad.jsonl:2: not valid JSON"):
        load_datasets([f"mine={bad}"])
    dup = tmp_path / "dup.jsonl"
    dup.write_text('{"question_id": 1, "turns": ["a"]}\n{"question_id": 1, "turns": ["b"]}\n')
    with pytest.raises(DatasetError, match="not unique"):
        load_datasets([str(dup)])
    # through the CLI: exit 2, the message on stderr, nothing sent anywhere
    rc = main(["run", "--out", str(tmp_path / "o"), "--endpoint", "vanilla=http://127.0.0.1:9", "--datasets",
               str(bad)])
    assert rc == 2 and "bad.jsonl:2: not valid JSON" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_hf_dataset_converted_on_the_fly_from_a_local_folder(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    folder = tmp_path / "myset"
    folder.mkdir()
    (folder / "test.jsonl").write_text('{"id": "a", "prompt": "What is 2+2?"}\n'
                                       '{"id": "b", "prompt": ["Name a colour.", "And another one?"]}\n')
    (ds,) = load_datasets([], hf=[f"local={folder}"], hf_column="prompt", hf_id_column="id")
    assert ds.name == "local" and ds.source == f"hf:{folder}:test:prompt"
    assert [(q.question_id, q.turns) for q in ds.questions] == [("a", ("What is 2+2?",)),
                                                                ("b", ("Name a colour.", "And another one?"))]
    with pytest.raises(DatasetError, match=r"no column 'question'.*\['id', 'prompt'\]"):
        load_datasets([], hf=[f"local={folder}"], hf_column="question")
    with pytest.raises(DatasetError, match="could not load HF dataset"):
        load_datasets([], hf=[f"x={tmp_path / 'missing'}"])


def _qfile(tmp_path, n=3, turns=1):
    path = tmp_path / "q.jsonl"
    path.write_text("".join(json.dumps({"question_id": i, "turns": [f"q{i} t{k}" for k in range(turns)]}) + "\n"
                            for i in range(n)))
    return path


def test_resume_sends_only_the_missing_questions(tmp_path):
    qs = load_datasets([f"toy={_qfile(tmp_path, n=3)}", "mt_bench"], limit=3)
    settings = RequestSettings(max_tokens=8)
    out = tmp_path / "run"
    with StubServer(tokens=8) as v, StubServer(tokens=8, verify_ct=3) as h:
        methods = [MethodSpec("vanilla", v.url), MethodSpec("hass", h.url)]
        s = run_benchmark(out, methods, qs, [0.0], [1], settings, "vanilla", None, show_progress=False, argv=[])
        assert len(h.chat_requests()) == 1 + 3 + 3 * 2  # warm-up, toy, mt_bench with its context turn
        second = h.chat_requests()[-1]["messages"]
        assert [m["role"] for m in second] == ["user", "assistant", "user"] and second[1]["content"]
        assert second[0]["content"] != second[2]["content"]
        assert report.cell_index(s)[("hass", 0.0, 1, "mt_bench")]["accept_length"] == pytest.approx(8 / 3)
        # drop two finished questions and leave a torn line, as a kill mid-write would
        path = out / "raw" / "hass" / "t0_c1.jsonl"
        lines = path.read_text().splitlines()
        kept = [ln for ln in lines if json.loads(ln)["question_id"] not in ("1", "82")]
        path.write_text("\n".join(kept) + "\n" + lines[0][:25])
        before_v, before_h = len(v.chat_requests()), len(h.chat_requests())
        s = run_benchmark(out, methods, qs, [0.0], [1], settings, "vanilla", None, show_progress=False, argv=[])
        assert len(v.chat_requests()) == before_v  # vanilla was complete: not even a warm-up
        sent = h.chat_requests()[before_h:]
        assert [m["messages"][-1]["content"] for m in sent] == ["Say hello.", "q1 t0",
                                                                load_datasets(["mt_bench"], limit=2)[0].questions[1].turns[0],
                                                                load_datasets(["mt_bench"], limit=2)[0].questions[1].turns[1]]
        recs = read_records(path)
        assert sorted((r["dataset"], r["question_id"]) for r in recs) == sorted(
            [("toy", str(i)) for i in range(3)] + [("mt_bench", q) for q in ("81", "82", "83")])
        manifest = json.loads((out / "manifest.json").read_text())
        assert manifest["status"] == "complete" and [m["name"] for m in manifest["methods"]] == ["vanilla", "hass"]
        assert manifest["methods"][1]["prefix_cache_flushed"] is False  # not an SGLang server: no /flush_cache
        assert {c["dataset"] for c in s["cells"]} == {"toy", "mt_bench", "Mean"}
        with pytest.raises(ResultsError, match="max_tokens"):
            run_benchmark(out, methods, qs, [0.0], [1], RequestSettings(max_tokens=9), "vanilla", None,
                          show_progress=False, argv=[])


def test_endpoint_down_is_a_clear_error_after_bounded_retries(tmp_path, capsys):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again: nothing listens there
    qs = load_datasets([str(_qfile(tmp_path))])
    t0 = time.time()
    with pytest.raises(EndpointDownError, match=rf"method 'hass': http://127.0.0.1:{port}/v1 is not reachable after "
                                                r"2 attempts"):
        run_benchmark(tmp_path / "o", [MethodSpec("hass", f"http://127.0.0.1:{port}")], qs, [0.0], [1],
                      RequestSettings(retries=1), "hass", None, show_progress=False, argv=[])
    assert time.time() - t0 < 30
    manifest = json.loads((tmp_path / "o" / "manifest.json").read_text())
    assert manifest["status"] == "failed" and "EndpointDownError" in manifest["error"]
    rc = main(["run", "--out", str(tmp_path / "o2"), "--endpoint", f"vanilla=http://127.0.0.1:{port}", "--datasets",
               str(_qfile(tmp_path)), "--retries", "0", "--no-progress"])
    assert rc == 2 and f"http://127.0.0.1:{port}/v1 is not reachable" in capsys.readouterr().err


def test_ctrl_c_leaves_a_valid_partial_result_that_resumes(tmp_path):
    n = 200  # 30 s of answers at 0.15 s each: SIGINT lands mid-run even on a loaded CI machine
    qfile = _qfile(tmp_path, n=n)
    out = tmp_path / "run"
    with StubServer(tokens=4, verify_ct=2, delay_s=0.15) as h:
        cmd = [sys.executable, str(ROOT / "benchmarks" / "serving_bench.py"), "run", "--out", str(out), "--endpoint",
               f"hass={h.url}", "--baseline", "hass", "--datasets", str(qfile), "--temperatures", "0",
               "--no-progress", "--no-plots", "--max-tokens", "4"]
        # Ctrl-C as a terminal delivers it: a shell without job control (`cmd &` in a script, as CI
        # runners start jobs) leaves SIGINT ignored, which the child would inherit and never see.
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
        raw = out / "raw" / "hass" / "t0_c1.jsonl"
        deadline = time.time() + 180  # a cold start of the script on a loaded 2-core CI host can take a minute
        while time.time() < deadline and (not raw.is_file() or len(raw.read_text().splitlines()) < 3):
            time.sleep(0.1)
        h.delay_s = 2.0  # the rest would take minutes: the signal lands mid-run however loaded the machine is
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=60)
        assert proc.returncode == 130, err
        assert "re-run the same command to resume" in err
        partial = read_records(raw)
        assert 3 <= len(partial) < n and all(r["error"] is None for r in partial)
        assert json.loads((out / "manifest.json").read_text())["status"] == "interrupted"
        assert "status: interrupted" in (out / "table.md").read_text()
        n_before = len(h.chat_requests())
        h.delay_s = 0.0  # the resume need not be slow
        assert main(cmd[2:]) == 0
        assert len(h.chat_requests()) - n_before == 1 + n - len(partial)
    assert len(load_raw(out)[("hass", 0.0, 1)]) == n


def test_launch_specs(tmp_path):
    spec = parse_launch("hass=smollm2-135m-hass-eagle")
    assert Path(spec.draft).name == "smollm2-135m-hass-eagle" and Path(spec.draft).is_dir()
    assert parse_launch("vanilla=none").draft is None
    with pytest.raises(LaunchError, match=r"not found \(shipped drafts: .*smollm2-135m-mtp"):
        parse_launch(f"x={tmp_path / 'nope'}")
    with pytest.raises(ConfigError):
        TreeShape.parse("3 2")
    opts = LaunchOptions(device="cuda", tree=TreeShape.parse("6,10,60"), launch_args=("--tp", "8"),
                         method_args={"hass": ("--mem-fraction-static", "0.8")})
    argv = server_spec(spec, opts, "/m", 1234).argv()
    assert argv[1:3] == ["-m", "sglang.launch_server"] and "--device" not in argv
    assert argv[argv.index("--speculative-algorithm") + 1] == "HASS"
    assert argv[-5:] == ["60", "--tp", "8", "--mem-fraction-static", "0.8"]
    assert server_spec(parse_launch("vanilla=none"), opts, "/m", 1).argv()[-2:] == ["--tp", "8"]


def test_locustfile_headless_against_an_endpoint_and_loopback_only(tmp_path):
    locust = Path(sys.executable).parent / "locust"
    with StubServer(tokens=6, delay_s=0.02) as s:
        out = subprocess.run([str(locust), "-f", str(ROOT / "benchmarks" / "locustfile.py"), "--headless",
                              "--host", s.url, "--users", "2", "--spawn-rate", "2", "--run-time", "3s",
                              "--only-summary", "--bench-max-tokens", "6", "--bench-dataset", "qa",
                              "--bench-summary", str(tmp_path / "l.json"),
                              "--bench-requests-log", str(tmp_path / "requests.jsonl")],
                             capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr[-2000:]
    summary = json.loads((tmp_path / "l.json").read_text())
    assert summary["requests"] > 4 and summary["failures"] == 0 and summary["output_tok_s"] > 0
    # One line per request, each with its own request id, both kinds (streamed and not).
    records = read_requests(tmp_path / "requests.jsonl")
    assert len(records) == summary["requests"] and len({r["rid"] for r in records}) == len(records)
    assert {r["stream"] for r in records} == {True, False}
    assert all(r["status"] == 200 and r["tokens"] == 6 and r["end"] > r["start"] for r in records)
    assert summary["latency_p95_s"] >= summary["latency_p50_s"] > 0 and summary["ttft_p50_s"] is not None
    refused = subprocess.run([str(locust), "-f", str(ROOT / "benchmarks" / "locustfile.py"), "--headless",
                              "--host", "http://192.0.2.1:8000", "--users", "1", "--run-time", "1s"],
                             capture_output=True, text=True, timeout=60)
    assert refused.returncode == 2 and "loopback only" in refused.stderr
