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

from hass_sglang.cli import DTYPES, _load_head, _torch_dtype
from hass_sglang.eval_sets import EVAL_SETS
from hass_sglang.evaluate import eval_prompts, run_side_by_side, summarize
from hass_sglang.sampling import make_sampling
from hass_sglang.speculative import VERIFY_METHODS, SpeculativeDecoder, TreeConfig
from hass_sglang.target import EMBEDDED_TARGET, load_target


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--target", default=EMBEDDED_TARGET)
    p.add_argument("--draft", default="auto", help="draft folder, 'auto' (shipped default) or 'random'")
    p.add_argument("--head", choices=("eagle", "mtp"), default="eagle")
    p.add_argument("--sets", nargs="+", default=list(EVAL_SETS), choices=EVAL_SETS)
    p.add_argument("--per-set", type=int, default=2)
    p.add_argument("--max-new-tokens", type=int, default=64)
    p.add_argument("--temperature", type=float, default=1.0)
    p.add_argument("--top-p", type=float, default=1.0)
    p.add_argument("--num-steps", type=int, default=4)
    p.add_argument("--topk", type=int, default=4)
    p.add_argument("--num-draft-tokens", type=int, default=17)
    p.add_argument("--dtype", choices=DTYPES, default="bfloat16")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)

    torch.set_num_threads(args.threads)
    sampling = make_sampling(args.temperature, args.top_p)
    target = load_target(args.target, dtype=_torch_dtype(args.dtype))
    head = _load_head(args.draft, args.head, target)
    tree = TreeConfig(num_steps=args.num_steps, topk=args.topk, num_draft_tokens=args.num_draft_tokens)
    dec = SpeculativeDecoder(target, head, tree)
    prompts = eval_prompts(target, args.sets, args.per_set)
    runs = run_side_by_side(target, {m: (dec, m) for m in VERIFY_METHODS}, prompts, args.max_new_tokens, sampling, args.seed)
    rows = summarize(runs)
    print(f"\n{target.path.name} {args.dtype}, draft {args.draft}, T={args.temperature}, top_p={args.top_p}, tree {tree}, "
          f"{len(prompts)} prompts x {args.max_new_tokens} new tokens\n")
    sets = list(dict.fromkeys(r.eval_set for r in rows))
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
