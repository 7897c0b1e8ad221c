"""Vanilla vs speculative decoding with the reference decoder, side by side in one run.

Every prompt is decoded by vanilla and by each tree setting back to back, so machine noise hits
all methods alike; the table reports total tokens/s, speedup over vanilla, tau and how many
outputs are identical to vanilla greedy. Not a test: run it and paste the output into the docs.

  .venv/bin/python benchmarks/bench_reference_decoder.py --per-set 2 --max-new-tokens 96 \
      --trees 4,1,5 3,4,10 6,10,60 --dtype bfloat16 --json results/reference_decoder.json
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
from dataclasses import asdict
from pathlib import Path

import torch

from hass_sglang.evaluate import add_eval_args, eval_prompts, format_table, load_eval_models, run_side_by_side, summarize
from hass_sglang.speculative import SpeculativeDecoder
from hass_sglang.tree import PAPER_TREE, TreeShape


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_eval_args(p, per_set=2, max_new_tokens=96)
    p.add_argument("--trees", nargs="+", default=[TreeShape.chain(4).spec, PAPER_TREE.spec],
                   help="'STEPS TOPK DRAFT_TOKENS' (or S,K,N) per decoder")
    p.add_argument("--json", type=Path, help="also write per-prompt results here")
    args = p.parse_args(argv)

    torch.set_num_threads(args.threads)
    trees = {spec: TreeShape.parse(spec).check_fits() for spec in args.trees}
    target, head = load_eval_models(args)
    decoders = {f"tree {spec}": SpeculativeDecoder(target, head, tree) for spec, tree in trees.items()}
    prompts = eval_prompts(target, args.sets, args.per_set)
    runs = run_side_by_side(target, decoders, prompts, args.max_new_tokens)
    summaries = summarize(runs)
    print(
        f"\n{target.path.name} {args.target_dtype}, draft {args.draft}, {len(prompts)} prompts x {args.max_new_tokens} "
        f"new tokens, {args.threads} threads, {platform.processor() or platform.machine()}\n"
    )
    print(format_table([s for s in summaries if s.eval_set == "mean"]))
    print()
    print(format_table([s for s in summaries if s.eval_set != "mean"]))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(
            json.dumps(
                {
                    "argv": sys.argv,
                    "runs": [
                        {
                            "eval_set": r.eval_set,
                            "question_id": r.question_id,
                            "prompt_tokens": r.prompt_tokens,
                            "results": {
                                m: {**asdict(res), "tau": res.tau, "tokens_per_second": res.tokens_per_second}
                                for m, res in r.results.items()
                            },
                        }
                        for r in runs
                    ],
                },
                indent=1,
            )
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
