"""Raw request records -> summary.json and the Markdown tables (seed 002's layout). Pure functions.

Definitions (the same at every concurrency):
- throughput of a (method, T, concurrency, dataset) cell = its output tokens / the wall time during
  which at least one of its measured requests was in flight (the union of [t_start, t_end]). At
  concurrency 1 that is sum(tokens) / sum(latency): seed 002's output token/s at batch size 1.
  Context turns (MT-bench turn 1) are neither counted nor timed.
- speedup = throughput / the baseline method's throughput in the same (T, concurrency, dataset).
- "+x% vs MTP" = throughput / the MTP method's throughput - 1.
- accept_length (seed 002's τ) = sum(output tokens) / sum(spec_verify_ct) over the cell's requests:
  SGLang's accept length, completion tokens per verify step (the reference decoder's tau differs:
  it also counts the prefill forward); null for methods without speculative statistics.
- Mean column = the arithmetic mean over the datasets every method has at that (T, concurrency):
  throughput and accept_length are means of the per-dataset values; its speedup and +% are ratios of those
  mean throughputs (seed 002: 67.7543 / 62.4644 = +8.47%). Latency and TTFT percentiles in the
  Mean cell are pooled over all its requests.
"""

from __future__ import annotations

import math
from collections import defaultdict

from hass_sglang.bench.questions import DISPLAY_NAMES

SUMMARY_SCHEMA = "hass_sglang.bench.summary/2"  # 2: "tau" renamed "accept_length"
MEAN = "Mean"


def busy_seconds(intervals: list[tuple[float, float]]) -> float:
    """Length of the union of [start, end] intervals."""
    total, cur_start, cur_end = 0.0, None, None
    for start, end in sorted(intervals):
        if cur_end is None or start > cur_end:
            if cur_end is not None:
                total += cur_end - cur_start
            cur_start, cur_end = start, end
        else:
            cur_end = max(cur_end, end)
    if cur_end is not None:
        total += cur_end - cur_start
    return total


def percentile(values: list[float], q: float) -> float | None:
    """Linear-interpolation percentile (numpy's default), q in [0, 100]."""
    if not values:
        return None
    xs = sorted(values)
    pos = (len(xs) - 1) * q / 100.0
    lo, hi = math.floor(pos), math.ceil(pos)
    return xs[lo] + (xs[hi] - xs[lo]) * (pos - lo)


def latest_records(records: list[dict]) -> list[dict]:
    """One record per (dataset, question): the last successful one, else the last error."""
    best: dict[tuple[str, str], dict] = {}
    for r in records:
        key = (r["dataset"], str(r["question_id"]))
        if key not in best or not r.get("error") or best[key].get("error"):
            best[key] = r
    return list(best.values())


def cell_stats(records: list[dict]) -> dict:
    ok = [r for r in records if not r.get("error")]
    tokens = sum(r["output_tokens"] for r in ok)
    busy = busy_seconds([(r["t_start"], r["t_end"]) for r in ok])
    spec = [r for r in ok if r.get("verify_ct")]
    lat = [r["latency_s"] for r in ok]
    ttft = [r["ttft_s"] for r in ok if r.get("ttft_s") is not None]
    return {
        "requests": len(ok),
        "errors": len(records) - len(ok),
        "output_tokens": tokens,
        "busy_s": busy,
        "throughput": tokens / busy if busy > 0 else None,
        "accept_length": sum(r["output_tokens"] for r in spec) / sum(r["verify_ct"] for r in spec) if spec else None,
        "latency_p50_s": percentile(lat, 50),
        "latency_p95_s": percentile(lat, 95),
        "ttft_p50_s": percentile(ttft, 50),
        "ttft_p95_s": percentile(ttft, 95),
        "request_tok_s_mean": sum(r["output_tokens"] / r["latency_s"] for r in ok) / len(ok) if ok else None,
    }


def _ratio(a, b):
    return a / b if a is not None and b else None


def _mean(xs):
    return sum(xs) / len(xs) if xs and all(x is not None for x in xs) else None


def summarize(raw: dict[tuple[str, float, int], list[dict]], methods: list[str], datasets: list[str],
              baseline: str, mtp: str | None = None, meta: dict | None = None) -> dict:
    """raw[(method, temperature, concurrency)] = records -> summary (cells per dataset and Mean)."""
    cells: dict[tuple[str, float, int, str], dict] = {}
    for (method, t, c), recs in raw.items():
        by_ds = defaultdict(list)
        for r in latest_records(recs):
            by_ds[r["dataset"]].append(r)
        for ds, rs in by_ds.items():
            cells[(method, t, c, ds)] = cell_stats(rs)
    groups = sorted({(t, c) for (_, t, c) in raw})
    for t, c in groups:
        present = [m for m in methods if any((m, t, c, d) in cells for d in datasets)]
        common = [d for d in datasets if present and all((m, t, c, d) in cells for m in present)]
        for m in present:
            if not common:
                continue
            rs = [r for (mm, tt, cc), recs in raw.items() if (mm, tt, cc) == (m, t, c)
                  for r in latest_records(recs) if r["dataset"] in common]
            pooled_stats = cell_stats(rs)
            per = [cells[(m, t, c, d)] for d in common]
            cells[(m, t, c, MEAN)] = {
                **pooled_stats,
                "throughput": _mean([s["throughput"] for s in per]),
                "accept_length": _mean([s["accept_length"] for s in per]),
                "datasets": common,
            }
    for (m, t, c, d), s in cells.items():
        base = cells.get((baseline, t, c, d))
        ref = cells.get((mtp, t, c, d)) if mtp else None
        s["speedup"] = _ratio(s["throughput"], base and base["throughput"])
        s["vs_mtp"] = None if ref is None or m in (baseline, mtp) else _ratio(s["throughput"], ref["throughput"])
        if s["vs_mtp"] is not None:
            s["vs_mtp"] -= 1.0
    order = {m: i for i, m in enumerate(methods)}
    dorder = {d: i for i, d in enumerate([*datasets, MEAN])}
    rows = [{"method": m, "temperature": t, "concurrency": c, "dataset": d, **s}
            for (m, t, c, d), s in sorted(cells.items(), key=lambda kv: (kv[0][1], kv[0][2], order.get(kv[0][0], 99),
                                                                          dorder.get(kv[0][3], 99)))]
    return {"schema": SUMMARY_SCHEMA, "baseline": baseline, "mtp": mtp, "methods": methods, "datasets": datasets,
            "temperatures": sorted({t for _, t, _ in raw}), "concurrencies": sorted({c for _, _, c in raw}),
            **(meta or {}), "cells": rows}


def cell_index(summary: dict) -> dict[tuple[str, float, int, str], dict]:
    return {(r["method"], r["temperature"], r["concurrency"], r["dataset"]): r for r in summary["cells"]}


def _ordered_methods(summary: dict) -> list[str]:
    first = [m for m in (summary["baseline"], summary.get("mtp")) if m in summary["methods"]]
    return first + [m for m in summary["methods"] if m not in first]


def _fmt(x, spec, suffix=""):
    return "-" if x is None else f"{x:{spec}}{suffix}"


def _speedup_text(summary: dict, cell: dict | None) -> str:
    if cell is None or cell.get("speedup") is None:
        return "-"
    text = f"{cell['speedup']:.2f}x"
    if cell.get("vs_mtp") is not None:
        text += f" ({cell['vs_mtp'] * 100:+.2f}%)"
    return text


def _markdown(rows: list[list[str]]) -> str:
    """Seed 002 style: every column padded to its widest cell; the first row is the Markdown header."""
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    def line(r):
        return "| " + " | ".join(c.ljust(w) for c, w in zip(r, widths)) + " |"
    return "\n".join([line(rows[0]), "| " + " | ".join("-" * w for w in widths) + " |", *map(line, rows[1:])])


def _header(summary: dict, pair: tuple[str, str]) -> list[list[str]]:
    cols = [*summary["datasets"], MEAN]
    top = ["", "", "Datasets"] + [""] * (2 * len(cols) - 1)
    names = ["", ""] + [x for d in cols for x in (DISPLAY_NAMES.get(d, d), "")]
    sub = ["Temperature", "Method"] + [x for _ in cols for x in pair]
    return [top, names, sub]


def render_main_table(summary: dict, concurrency: int | None = None) -> str:
    """Seed 002's first table: Throughput and Speedup (+% vs MTP) per dataset and Mean, per T."""
    c = min(summary["concurrencies"]) if concurrency is None else concurrency
    idx = cell_index(summary)
    rows = _header(summary, ("Throughput", "Speedup"))
    for t in summary["temperatures"]:
        for i, m in enumerate(_ordered_methods(summary)):
            row = [f"T={t:g}" if i == 0 else "", m]
            for d in [*summary["datasets"], MEAN]:
                cell = idx.get((m, t, c, d))
                row += [_fmt(cell and cell["throughput"], ".4f"), _speedup_text(summary, cell)]
            rows.append(row)
    return _markdown(rows)


def render_accept_length_table(summary: dict, concurrency: int | None = None) -> str:
    """Seed 002's second table: Speedup and τ (SGLang's accept length) per dataset and Mean,
    speculative methods only."""
    c = min(summary["concurrencies"]) if concurrency is None else concurrency
    idx = cell_index(summary)
    rows = _header(summary, ("Speedup", "τ"))
    for t in summary["temperatures"]:
        first = True
        for m in _ordered_methods(summary):
            if not any(idx.get((m, t, c, d), {}).get("accept_length") for d in summary["datasets"]):
                continue
            row = [f"T={t:g}" if first else "", m]
            first = False
            for d in [*summary["datasets"], MEAN]:
                cell = idx.get((m, t, c, d)) or {}
                row += [_fmt(cell.get("speedup"), ".4f", "x"), _fmt(cell.get("accept_length"), ".4f")]
            rows.append(row)
    return _markdown(rows) if len(rows) > 3 else ""


def render_sweep_table(summary: dict) -> str:
    """Per concurrency (Mean over datasets): throughput, speedup, pooled latency / TTFT percentiles, τ."""
    idx = cell_index(summary)
    rows = [["Temperature", "Method", "Concurrency", "Throughput (tok/s)", "Speedup", "Latency p50 (s)",
             "Latency p95 (s)", "TTFT p50 (s)", "TTFT p95 (s)", "τ", "Errors"]]
    for t in summary["temperatures"]:
        for m in _ordered_methods(summary):
            for c in summary["concurrencies"]:
                cell = idx.get((m, t, c, MEAN))
                if cell is None:
                    continue
                rows.append([f"T={t:g}", m, str(c), _fmt(cell["throughput"], ".4f"), _fmt(cell["speedup"], ".2f", "x"),
                             _fmt(cell["latency_p50_s"], ".3f"), _fmt(cell["latency_p95_s"], ".3f"),
                             _fmt(cell["ttft_p50_s"], ".3f"), _fmt(cell["ttft_p95_s"], ".3f"),
                             _fmt(cell["accept_length"], ".3f"), str(cell["errors"])])
    return _markdown(rows)


def render_report(summary: dict) -> str:
    c0 = min(summary["concurrencies"]) if summary["concurrencies"] else 1
    parts = ["# Benchmark results", ""]
    info = [f"baseline `{summary['baseline']}`"]
    if summary.get("mtp"):
        info.append(f"MTP reference `{summary['mtp']}`")
    if summary.get("max_tokens"):
        info.append(f"max_tokens {summary['max_tokens']}")
    if summary.get("status") and summary["status"] != "complete":
        info.append(f"**status: {summary['status']} (partial results)**")
    parts += ["; ".join(info) + ".", ""]
    if not summary["cells"]:
        return "\n".join(parts + ["No finished requests yet.", ""])
    parts += [f"## Throughput (output token/s) and speedup, concurrency {c0}", "",
              render_main_table(summary, c0), "",
              "Speedup = throughput / baseline throughput; (+x%) = throughput / MTP throughput - 1.", ""]
    lengths = render_accept_length_table(summary, c0)
    if lengths:
        parts += [f"## Speedup and τ (SGLang's accept length: tokens per verify step), concurrency {c0}", "",
                  lengths, ""]
    if len(summary["concurrencies"]) > 1:
        parts += ["## Concurrency sweep (mean over datasets)", "", render_sweep_table(summary), ""]
    errors = sum(r["errors"] for r in summary["cells"] if r["dataset"] != MEAN)
    if errors:
        parts += [f"{errors} request(s) failed; see the `error` field in raw/.", ""]
    return "\n".join(parts)


def compare(a: dict, b: dict, label_a: str = "A", label_b: str = "B") -> str:
    """Two summaries side by side on the cells they share: throughput change, speedups, τ."""
    ia, ib = cell_index(a), cell_index(b)
    rows = [["Temperature", "Method", "Concurrency", "Dataset", f"Throughput {label_a}", f"Throughput {label_b}",
             "Change", f"Speedup {label_a}", f"Speedup {label_b}", f"τ {label_a}", f"τ {label_b}"]]
    for key in [k for k in ia if k in ib]:
        m, t, c, d = key
        ca, cb = ia[key], ib[key]
        change = _ratio(cb["throughput"], ca["throughput"])
        rows.append([f"T={t:g}", m, str(c), DISPLAY_NAMES.get(d, d), _fmt(ca["throughput"], ".4f"),
                     _fmt(cb["throughput"], ".4f"), _fmt(None if change is None else (change - 1) * 100, "+.2f", "%"),
                     _fmt(ca["speedup"], ".2f", "x"), _fmt(cb["speedup"], ".2f", "x"),
                     _fmt(ca["accept_length"], ".3f"), _fmt(cb["accept_length"], ".3f")])
    if len(rows) == 1:
        return "The two runs share no (method, temperature, concurrency, dataset) cell."
    return _markdown(rows)
