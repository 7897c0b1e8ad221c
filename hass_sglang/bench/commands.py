"""`hass bench run|report|compare` (= `python -m hass_sglang.bench ...`, `benchmarks/serving_bench.py`).

    # endpoints already running (any OpenAI-compatible server; SGLang gives tau too)
    python -m hass_sglang.bench run --out runs/bench/x \\
        --endpoint vanilla=http://127.0.0.1:30000 mtp=http://127.0.0.1:30001 hass=http://127.0.0.1:30002
    # or started here, one after another (CPU: the project's SGLang CPU backend)
    python -m hass_sglang.bench run --out runs/bench/x \\
        --launch vanilla=none mtp=smollm2-135m-mtp hass=smollm2-135m-hass-eagle
    python -m hass_sglang.bench report runs/bench/x
    python -m hass_sglang.bench compare runs/bench/x runs/bench/y
"""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path

from hass_sglang.errors import HassError, run_command
from hass_sglang.eval_sets import EVAL_SETS


def _run(a) -> int:
    from hass_sglang.bench import launch, questions
    from hass_sglang.bench.client import RequestSettings
    from hass_sglang.bench.session import MethodSpec, parse_endpoint, run_benchmark
    from hass_sglang.tree import TreeShape

    methods = [parse_endpoint(e) for e in a.endpoint] + [MethodSpec(s.name, launch=s)
                                                         for s in map(launch.parse_launch, a.launch)]
    if not methods:
        raise HassError("no methods: give --endpoint NAME=URL ... and/or --launch NAME=DRAFT|none ...")
    names = [m.name for m in methods]
    mtp = a.mtp if a.mtp is not None else ("mtp" if "mtp" in names else None)
    mtp = None if mtp == "none" else mtp
    if any(t < 0 for t in a.temperatures) or any(c < 1 for c in a.concurrency) or a.max_tokens < 1:
        raise HassError("temperatures must be >= 0, concurrencies >= 1, --max-tokens >= 1")
    names = a.datasets if a.datasets is not None else ([] if a.hf else list(EVAL_SETS))
    sets = questions.load_datasets(names, a.hf, a.hf_column, a.hf_split, a.hf_subset, a.hf_id_column,
                                   a.questions)
    opts = launch.LaunchOptions(model=a.model_path, device=a.device, tree=TreeShape.parse(a.tree) if a.tree else None,
                                launch_args=tuple(shlex.split(a.launch_args or "")),
                                method_args=launch.parse_method_args(a.method_args), timeout_s=a.launch_timeout)
    settings = RequestSettings(max_tokens=a.max_tokens, stream=not a.no_stream, model=a.model,
                               timeout_s=a.timeout, retries=a.retries)
    try:
        run_benchmark(Path(a.out), methods, sets, a.temperatures, a.concurrency, settings, a.baseline, mtp,
                      launch_opts=opts, warmup=a.warmup, show_progress=not a.no_progress, plots=not a.no_plots)
    except KeyboardInterrupt:
        print(f"\ninterrupted: finished requests are in {a.out}/raw and the partial report in {a.out}/table.md; "
              "re-run the same command to resume", file=sys.stderr)
        return 130
    print((Path(a.out) / "table.md").read_text(encoding="utf-8"))
    return 0


def _report(a) -> int:
    from hass_sglang.bench.results import write_report

    write_report(Path(a.run), plots=not a.no_plots)
    print((Path(a.run) / "table.md").read_text(encoding="utf-8"))
    return 0


def _compare(a) -> int:
    from hass_sglang.bench.report import compare
    from hass_sglang.bench.results import load_summary

    labels = a.labels or ["A", "B"]
    text = compare(load_summary(Path(a.a)), load_summary(Path(a.b)), *labels)
    if a.out:
        Path(a.out).write_text(text + "\n", encoding="utf-8")
    print(text)
    return 0


def build_parser(ap: argparse.ArgumentParser | None = None) -> argparse.ArgumentParser:
    """The bench subcommands, on `ap` (the `hass bench` subparser) or on a parser of their own."""
    if ap is None:
        ap = argparse.ArgumentParser(prog="python -m hass_sglang.bench", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="bench_command", required=True)

    r = sub.add_parser("run", help="measure (resumable: re-run the same command to continue)")
    r.add_argument("--out", required=True, help="result folder (see docs/benchmarks.md for its layout)")
    g = r.add_argument_group("methods")
    g.add_argument("--endpoint", nargs="+", default=[], metavar="NAME=URL", help="running OpenAI-compatible servers")
    g.add_argument("--launch", nargs="+", default=[], metavar="NAME=DRAFT",
                   help="start a local sglang.launch_server per method: a draft folder, a shipped draft name "
                        "(hass_sglang/drafts/*) or 'none' for plain decoding")
    g.add_argument("--baseline", default="vanilla", help="the method speedups are relative to (default vanilla)")
    g.add_argument("--mtp", default=None, help="the method '+x%%' is relative to (default 'mtp' if present; 'none')")
    d = r.add_argument_group("datasets")
    d.add_argument("--datasets", nargs="*", default=None, metavar="SET|[NAME=]FILE",
                   help=f"eagle_eval sets ({', '.join(EVAL_SETS)}) or FastChat question files "
                        "(default: all six, or none when --hf is given)")
    d.add_argument("--hf", nargs="*", default=[], metavar="NAME=DATASET_ID",
                   help="HF datasets (hub id or local dataset folder), converted on the fly")
    d.add_argument("--hf-column", default="question", help="column holding the prompt (string or list of turns)")
    d.add_argument("--hf-split", default="test")
    d.add_argument("--hf-subset", default=None)
    d.add_argument("--hf-id-column", default=None, help="column with question ids (default: row index)")
    d.add_argument("--questions", type=int, default=None, help="first N questions per dataset (default all)")
    q = r.add_argument_group("requests")
    q.add_argument("--temperatures", nargs="+", type=float, default=[0.0, 1.0])
    q.add_argument("--concurrency", nargs="+", type=int, default=[1], help="requests in flight (1 = batch size 1)")
    q.add_argument("--max-tokens", type=int, default=128)
    q.add_argument("--no-stream", action="store_true", help="non-streaming requests (no time to first token)")
    q.add_argument("--model", default="default", help="the `model` field of each request")
    q.add_argument("--timeout", type=float, default=600.0, help="seconds per request")
    q.add_argument("--retries", type=int, default=3, help="client retries on connection errors before giving up")
    q.add_argument("--warmup", type=int, default=1, help="untimed requests per method before measuring")
    s = r.add_argument_group("--launch servers")
    s.add_argument("--model-path", default=None, help="target model (default: the embedded SmolLM2-135M-Instruct)")
    s.add_argument("--device", default="cpu", help="cpu (project CPU backend) or cuda/... (plain launch_server)")
    s.add_argument("--tree", default=None,
                   help="'STEPS TOPK DRAFT_TOKENS' (default on CPU: tree.cpu_default_tree, 3 1 4 in fp32, 3 4 8 in bf16)")
    s.add_argument("--launch-args", default=None, help="extra launch_server flags for every method, one string")
    s.add_argument("--method-args", nargs="*", default=[], metavar='NAME="FLAGS"', help="extra flags for one method")
    s.add_argument("--launch-timeout", type=float, default=900.0, help="seconds to wait for a server to be ready")
    o = r.add_argument_group("output")
    o.add_argument("--no-plots", action="store_true")
    o.add_argument("--no-progress", action="store_true")
    r.set_defaults(func=_run)

    p = sub.add_parser("report", help="recompute summary.json, table.md and plots/ from raw/")
    p.add_argument("run")
    p.add_argument("--no-plots", action="store_true")
    p.set_defaults(func=_report)

    c = sub.add_parser("compare", help="two runs (folders or summary.json) side by side")
    c.add_argument("a")
    c.add_argument("b")
    c.add_argument("--labels", nargs=2, default=None)
    c.add_argument("--out", default=None, help="also write the Markdown table here")
    c.set_defaults(func=_compare)
    return ap


def main(argv: list[str] | None = None) -> int:
    a = build_parser().parse_args(argv)
    return run_command(a.func, a)
