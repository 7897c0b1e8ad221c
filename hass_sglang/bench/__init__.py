"""Serving benchmarks against OpenAI-compatible endpoints (seed 002's table, plots, load tests).

questions.py  prompts: eagle_eval sets, FastChat files, HF datasets (last turn measured)
client.py     one chat request through the `openai` client, measured (tokens, latency, TTFT, accept length)
records.py    raw request records: one append-only JSONL per (method, T, concurrency), resumable
launch.py     `--launch`: one local sglang.launch_server per method (serving.server)
session.py    a whole run: methods one after another, every cell, manifest, report at the end (also on Ctrl-C)
report.py     pure: records -> summary (throughput, speedup, +% vs MTP, accept length, Mean) -> Markdown
results.py    the result folder layout, manifest, summary.json / table.md writers
load.py       pure: locust request logs -> exactly-once check, per-phase requests/s, p50/p95, failures
plots.py      speedup, accept-length distribution, throughput / latency vs concurrency (PNG)
commands.py   `hass bench run|report|compare` (= `python -m hass_sglang.bench`)

Accept length here is SGLang's (completion tokens per verify step, seed 002's τ); the reference
decoder's tau (hass_sglang.vanilla.GenerationResult.tau) also counts the prefill forward.
"""
