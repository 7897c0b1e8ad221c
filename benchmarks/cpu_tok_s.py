"""Decode speed of SGLang on this CPU: plain decoding vs HASS with several trees, T=0 and T=1, side by side.

    .venv/bin/python benchmarks/cpu_tok_s.py [--draft DIR|NAME|random ...] [--trees "3 2 6" "2 1 3" ...]
        [--per-set 1 --max-tokens 48 --temperatures 0 1 --threads 1 --dtypes float32 bfloat16]

One server at a time (--dtype from --dtypes, fp32 by default; --max-total-tokens 16384); each server answers the same chat requests
(`--per-set` questions of each eagle_eval set, batch 1) at every temperature after one warm-up
request. Prints one JSON line per (server, temperature) and a Markdown table with tok/s, speedup
over plain decoding measured in the same run, and SGLang's accept length (completion tokens per
verify step). Several --draft values compare drafts in one run against the same plain server
(rows named `<draft> <tree>`).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from hass_sglang.bench.calibrate import measure_server, speed_table
from hass_sglang.drafts import resolve_draft
from hass_sglang.eval_sets import EVAL_SETS, load_questions
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
    ap.add_argument("--skip-plain", action="store_true")
    a = ap.parse_args()
    target = load_target()
    model = a.model or str(target.path)
    drafts = {name: str(resolve_draft(name).folder(target.config)) for name in a.draft}
    prompts = [target.chat_prompt_ids(q.turns[0]) for s in EVAL_SETS for q in load_questions(s, limit=a.per_set)]
    rows = []
    for dtype, threads in [(d, t) for d in a.dtypes for t in a.threads]:
        servers = ([] if a.skip_plain else [(None, None, None)]) + [(n, d, t) for n, d in drafts.items() for t in a.trees]
        for name, d, tree in servers:
            for r in measure_server(model, d, tree, prompts, a.max_tokens, a.temperatures, threads, dtype):
                if name is not None and len(drafts) > 1:
                    r["server"] = f"{Path(name).name} {tree}"
                rows.append(r)
                print(json.dumps({k: v for k, v in r.items() if k != "texts"}), flush=True)
    plain_t0 = {(r["dtype"], r["threads"]): r["texts"] for r in rows if r["server"] == "plain" and r["temperature"] == 0}
    same = {f"{r['server']} {r['dtype']} {r['threads']}": r["texts"] == plain_t0[(r["dtype"], r["threads"])]
            for r in rows if r["temperature"] == 0 and (r["dtype"], r["threads"]) in plain_t0}
    print(f"\ndrafts {', '.join(drafts.values())}; {len(prompts)} prompts x {a.max_tokens} tokens; T=0 texts equal to plain: {same}\n")
    print(speed_table(rows))


if __name__ == "__main__":
    main()
