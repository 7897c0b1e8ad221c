"""Acceptance length at T > 0 for the sampling verifiers, same draft, side by side in one run.

specinfer verifies EAGLE-2 top-k trees with point-mass drafts; rrs verifies trees sampled
without replacement with the draft's probabilities; hsd verifies K i.i.d. draft chains with
Hierarchical Speculative Decoding (docs/verification.md). Every method decodes every prompt with
the same seed, right after vanilla sampling of the same prompt.

  .venv/bin/python benchmarks/bench_verification.py --draft <folder> --per-set 2 --max-new-tokens 64
"""

from __future__ import annotations

import argparse
import sys

import torch

from hass_sglang.evaluate import (
    add_eval_args,
    add_tree_args,
    eval_prompts,
    load_eval_models,
    run_side_by_side,
    summarize,
    tree_from_args,
)
from hass_sglang.sampling import make_sampling
from hass_sglang.speculative import VERIFY_METHODS, SpeculativeDecoder
from hass_sglang.tree import TreeShape


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_eval_args(p, per_set=2, max_new_tokens=64)
    p.add_argument("--temperature", type=float, default=1.0)
    p.add_argument("--top-p", type=float, default=1.0)
    add_tree_args(p, TreeShape(4, 4, 17))  # a small tree: sampled trees cost a forward per node
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)

    torch.set_num_threads(args.threads)
    sampling = make_sampling(args.temperature, args.top_p)
    tree = tree_from_args(args).check_fits()
    target, head = load_eval_models(args)
    dec = SpeculativeDecoder(target, head, tree)
    prompts = eval_prompts(target, args.sets, args.per_set)
    runs = run_side_by_side(target, {m: (dec, m) for m in VERIFY_METHODS}, prompts, args.max_new_tokens, sampling, args.seed)
    rows = summarize(runs)
    print(f"\n{target.path.name} {args.target_dtype}, draft {args.draft}, T={args.temperature}, top_p={args.top_p}, tree {tree}, "
          f"{len(prompts)} prompts x {args.max_new_tokens} new tokens\n")
    sets = [s for s in dict.fromkeys(r.eval_set for r in rows) if s != "mean"] + ["mean"]
    print("| method | " + " | ".join(sets) + " |")
    print("|---|" + "---|" * len(sets))
    for m in ("vanilla", *VERIFY_METHODS):
        by_set = {r.eval_set: r for r in rows if r.method == m}
        print(f"| {m} tau | " + " | ".join(f"{by_set[s].tau:.2f}" for s in sets) + " |")
    for m in ("vanilla", *VERIFY_METHODS):
        by_set = {r.eval_set: r for r in rows if r.method == m}
        print(f"| {m} tok/s | " + " | ".join(f"{by_set[s].tokens_per_second:.1f}" for s in sets) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
