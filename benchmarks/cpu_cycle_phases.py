"""Where a plain decode step and a HASS cycle go on this CPU: SGLang's own phases, timed in the servers.

    PYTHONPATH=. .venv/bin/python benchmarks/cpu_cycle_phases.py --draft smollm2-135m-hass-eagle \\
        --trees "3 4 8" --per-set 2 --max-tokens 64 --temperatures 0 1 --threads 2 --dtype bfloat16

The servers run with HASS_PHASE_TIMING (serving/phase_timing.py: AROUND hooks on SGLang methods
through its hook registry), measured in pairs as `cpu_tok_s.py` does (`calibrate.measure_pairs`: a
plain server beside each HASS server, requests alternating, each from an empty prefix cache). Per
HASS server and temperature, a Markdown table: each timed phase's calls and milliseconds per decode
step (plain) or per cycle (HASS), i.e. its total over the pass divided by the decode batches, so
prefill phases (`*.extend`) show their share per step; then the cycle in plain steps and the
accept length.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

from hass_sglang.bench.calibrate import add_server_bench_args, measure_pairs, server_bench_inputs
from hass_sglang.serving.phase_timing import ENV, read_totals
from hass_sglang.tree import CPU_BF16_TREE

WRITE_PERIOD_S = 1.0  # > the servers' 0.5 s write period: a snapshot sees every finished call


def diff(after: dict, before: dict) -> dict[str, list]:
    """(calls, seconds) per label between two snapshots of one process."""
    out = {}
    for label, v in after.items():
        b = before.get(label, {"calls": 0, "seconds": 0.0})
        if v["calls"] > b["calls"]:
            out[label] = [v["calls"] - b["calls"], v["seconds"] - b["seconds"]]
    return out


def per_step(phases: dict[str, list]) -> dict[str, tuple[int, float]]:
    """(calls, ms per decode batch) per label."""
    steps = phases.get("batch.decode", [0, 0.0])[0]
    return {k: (c, 1000 * s / steps) for k, (c, s) in phases.items()} if steps else {}


def table(plain: dict, hass: dict, row: dict) -> str:
    p, h = per_step(plain), per_step(hass)
    lines = ["| phase | plain calls | plain ms per step | HASS calls | HASS ms per cycle |", "|---|---|---|---|---|"]
    for label in sorted(set(p) | set(h), key=lambda k: (not k.startswith("batch"), k)):
        pc, pm = p.get(label, (0, None))
        hc, hm = h.get(label, (0, None))
        lines.append(f"| {label} | {pc or '-'} | {'-' if pm is None else f'{pm:.2f}'} | {hc or '-'} | "
                     f"{'-' if hm is None else f'{hm:.2f}'} |")
    step, cycle = p.get("batch.decode", (0, 0.0))[1], h.get("batch.decode", (0, 0.0))[1]
    lines.append("")
    lines.append(f"cycle = {cycle / step:.2f} plain steps; accept length {row['accept_length']}; "
                 f"{row['tok_s']} vs {row['plain_tok_s']} tok/s ({row['tok_s'] / row['plain_tok_s']:.2f}x)")
    return "\n".join(lines)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_server_bench_args(ap, [CPU_BF16_TREE.spec])
    ap.add_argument("--temperatures", type=float, nargs="+", default=[0.0, 1.0])
    a = ap.parse_args()
    model, draft, prompts = server_bench_inputs(a)
    prefix = Path(tempfile.mkdtemp(prefix="hass-phases-")) / "server"
    os.environ[ENV] = str(prefix)  # every server started below times its phases
    before: dict[int, dict] = {}

    def on_pass(name, temp, row):
        nonlocal before
        time.sleep(WRITE_PERIOD_S)
        now = read_totals(prefix)
        if row is None:
            before = now
            return
        changed = {pid: diff(t, before.get(pid, {})) for pid, t in now.items()}
        hass = [ph for ph in changed.values() if "cycle" in ph]
        plain = [ph for ph in changed.values() if ph and "cycle" not in ph and "batch.decode" in ph]
        if len(hass) != 1 or len(plain) != 1:
            raise SystemExit(f"expected one plain and one HASS server timing this pass, got {len(plain)} and {len(hass)}")
        print(f"\n### {name}, T={temp:g} ({len(prompts)} prompts x {a.max_tokens} tokens, {a.dtype}, "
              f"{a.threads} threads)\n\n{table(plain[0], hass[0], row)}\n", flush=True)

    measure_pairs(model, [(f"hass {t}", draft, t) for t in a.trees], prompts, a.max_tokens,
                  a.temperatures, a.threads, a.dtype, report=lambda line: None, on_pass=on_pass)


if __name__ == "__main__":
    main()
