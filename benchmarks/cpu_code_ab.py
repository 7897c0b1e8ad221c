"""Serving speed of two versions of the project's code, side by side in one run: the same plain and
HASS CPU servers from two checkouts, alternating, so a change to the CPU backend is judged against
the machine's drift between rounds.

    git worktree add /tmp/hass-old <commit>
    cd /tmp && /work/main/.venv/bin/python /work/main/benchmarks/cpu_code_ab.py /tmp/hass-old /work/main \
        [--rounds 2 --trees "3 4 8" --per-set 2 --max-tokens 64 --threads 2 --dtype bfloat16]

Run it from a folder outside both checkouts: a server started by `python -m` puts its working
directory first on sys.path, which would shadow the PYTHONPATH that picks the checkout. Prints one
JSON line per (round, checkout, server) and the mean tok/s and HASS / plain ratio per checkout.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics

from hass_sglang.bench.calibrate import add_server_bench_args, measure_server, server_bench_inputs
from hass_sglang.tree import CPU_BF16_TREE


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("checkouts", nargs=2, help="two project checkouts (e.g. a worktree of the old commit, then main)")
    ap.add_argument("--rounds", type=int, default=2)
    add_server_bench_args(ap, [CPU_BF16_TREE.spec])
    a = ap.parse_args()
    model, draft, prompts = server_bench_inputs(a)
    base = os.environ.get("PYTHONPATH", "")
    rows = []
    for rnd in range(a.rounds):
        for code in a.checkouts:
            os.environ["PYTHONPATH"] = os.path.abspath(code) + (os.pathsep + base if base else "")
            for d, tree in [(None, None)] + [(draft, t) for t in a.trees]:
                for r in measure_server(model, d, tree, prompts, a.max_tokens, (0.0,), a.threads, a.dtype):
                    r.pop("texts")
                    rows.append({**r, "code": code, "round": rnd})
                    print(json.dumps(rows[-1]), flush=True)
    os.environ["PYTHONPATH"] = base
    for code in a.checkouts:
        plain = statistics.mean(r["tok_s"] for r in rows if r["code"] == code and r["server"] == "plain")
        for tree in a.trees:
            hass = statistics.mean(r["tok_s"] for r in rows if r["code"] == code and r["server"] == f"hass {tree}")
            print(f"{code}: plain {plain:.2f} tok/s, hass {tree} {hass:.2f} tok/s, ratio {hass / plain:.2f}x")


if __name__ == "__main__":
    main()
