"""Serving benchmarks against OpenAI-compatible endpoints (seed 002's table, plots, load tests).

questions.py  prompts: eagle_eval sets, FastChat files, HF datasets (last turn measured)
runner.py     the `openai` client: per-request records (tokens, latency, TTFT, tau), resumable JSONL
launch.py     `--launch`: one local sglang.launch_server per method (CPU backend or GPU flags)
run.py        a whole run: methods one after another, manifest, report at the end (also on Ctrl-C)
report.py     pure: records -> summary (throughput, speedup, +% vs MTP, tau, Mean) -> Markdown tables
results.py    the result folder layout, manifest, summary.json / table.md writers
plots.py      speedup, tau distribution, throughput / latency vs concurrency (PNG)

Entry point: `python -m hass_sglang.bench run|report|compare` (docs/benchmarks.md).
"""
