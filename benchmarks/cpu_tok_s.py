"""Decode speed of SGLang on this CPU: HASS servers with several drafts and trees, each measured
beside a plain server, at T=0 and T=1.

    .venv/bin/python benchmarks/cpu_tok_s.py [--draft DIR|NAME|random ...] [--trees "3 2 6" "2 1 3" ...]
        [--per-set 1 --max-tokens 48 --temperatures 0 1 --threads 1 --dtypes float32 bfloat16]

Per --dtypes x --threads value (fp32, 1 thread by default; --max-total-tokens 16384): a plain server
runs throughout and each HASS server (every --draft with every --tree) runs beside it in turn; each
chat request (`--per-set` questions of each eagle_eval set, batch 1, from an empty prefix cache)
goes to both at every temperature, the order alternating (`calibrate.measure_pairs`), so every
speedup is a ratio measured under the same machine load. Prints one JSON line per (server,
temperature) and a Markdown table with tok/s, the paired speedup, SGLang's accept length
(completion tokens per verify step) and the cost of a cycle in plain steps. With several --draft
values the rows are named `<draft> <tree>`.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from hass_sglang.bench.calibrate import measure_pairs, speed_table
from hass_sglang.drafts import resolve_draft
from hass_sglang.eval_sets import EVAL_SETS
from hass_sglang.evaluate import eval_prompts
from hass_sglang.target import load_target
from hass_sglang.tree import CPU_TREE


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=None)
    ap.add_argument("--draft", nargs="+", default=["auto"],
                    help="draft folders, shipped draft names or 'random' (default: auto); each with every tree")
    ap.add_argument("--trees", nargs="+", default=[CPU_TREE.spec], help="'steps topk draft_tokens' per HASS server")
    ap.add_argument("--per-set", type=int, default=1)
    ap.add_argument("--max-tokens", type=int, default=48)
    ap.add_argument("--temperatures", type=float, nargs="+", default=[0.0, 1.0])
    ap.add_argument("--threads", type=int, nargs="+", default=[1], help="OMP threads per server (each value: all servers)")
    ap.add_argument("--dtypes", nargs="+", default=["float32"], help="--dtype of every server (each value: all servers)")
    a = ap.parse_args()
    target = load_target()
    model = a.model or str(target.path)
    drafts = {name: str(resolve_draft(name).folder(target.config)) for name in a.draft}
    prompts = [ids for _, _, ids in eval_prompts(target, EVAL_SETS, a.per_set)]
    rows = []
    for dtype, threads in [(d, t) for d in a.dtypes for t in a.threads]:
        candidates = [(f"{Path(n).name} {t}" if len(drafts) > 1 else f"hass {t}", d, t)
                      for n, d in drafts.items() for t in a.trees]
        rows += measure_pairs(model, candidates, prompts, a.max_tokens, a.temperatures, threads, dtype,
                              report=lambda line: print(line, flush=True))
    plain_t0 = {(r["dtype"], r["threads"]): r["texts"] for r in rows if r["server"] == "plain" and r["temperature"] == 0}
    same = {f"{r['server']} {r['dtype']} {r['threads']}": r["texts"] == plain_t0[(r["dtype"], r["threads"])]
            for r in rows if r["server"] != "plain" and r["temperature"] == 0 and (r["dtype"], r["threads"]) in plain_t0}
    print(f"\ndrafts {', '.join(drafts.values())}; {len(prompts)} prompts x {a.max_tokens} tokens; T=0 texts equal to plain: {same}\n")
    print(speed_table(rows))


if __name__ == "__main__":
    main()
