"""Tau table of several drafts side by side, at T=0 and T=1, on the six eagle_eval sets.

Every draft decodes every prompt right after vanilla decoding of the same prompt (same seed at
T=1; SpecInfer verification, what SGLang runs), so a noisy machine affects them alike. Prints
Markdown: tau per set and mean for each draft and temperature, the ratios of named pairs
(--compare a:b prints mean tau of a / mean tau of b), and tokens/s speedups over vanilla.

  .venv/bin/python benchmarks/bench_drafts.py \\
      --drafts eagle2=hass_sglang/drafts/smollm2-135m-eagle2 hass=hass_sglang/drafts/smollm2-135m-hass-eagle \\
      --compare hass:eagle2 --per-set 4 --max-new-tokens 80 --journal runs/tau.jsonl

With --journal every (prompt, method) result is appended as it ends and reused by a later run with
the same settings (target, dtype, threads, token budget, sampling, seed; for a draft its weights'
fingerprint, tree and verification): a killed run resumes where it stopped, and a run that adds a
draft, swaps a retrained one or asks more prompts per set decodes only what is new. Tau is exact
either way; tokens/s of reused results come from the run that decoded them (a mixed run's speedups
compare sessions, so measure speed in one fresh run).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

from hass_sglang.checkpoint import draft_fingerprint
from hass_sglang.drafts import resolve_draft
from hass_sglang.eval_sets import EVAL_SETS
from hass_sglang.evaluate import add_tree_args, eval_prompts, run_side_by_side, summarize, tau_ratio_interval, tree_from_args
from hass_sglang.sampling import make_sampling
from hass_sglang.speculative import SpeculativeDecoder
from hass_sglang.target import DTYPES, EMBEDDED_TARGET, dtype_from_name, load_target
from hass_sglang.tree import PAPER_TREE


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--drafts", nargs="+", required=True, help="name=draft pairs (a folder or a shipped draft name)")
    p.add_argument("--compare", nargs="*", default=[], help="a:b pairs: report mean tau(a) / mean tau(b)")
    p.add_argument("--target", default=EMBEDDED_TARGET)
    p.add_argument("--sets", nargs="+", default=list(EVAL_SETS), choices=EVAL_SETS)
    p.add_argument("--per-set", type=int, default=4)
    p.add_argument("--max-new-tokens", type=int, default=80)
    p.add_argument("--temperatures", type=float, nargs="+", default=[0.0, 1.0])
    add_tree_args(p, PAPER_TREE)
    p.add_argument("--target-dtype", "--dtype", dest="target_dtype", choices=DTYPES, default="bfloat16")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", help="also write the raw summaries here")
    p.add_argument("--journal", help="append each finished (prompt, method) result to this JSONL; a later run with "
                                     "the same settings reuses it (resume after a kill, add drafts or prompts)")
    args = p.parse_args(argv)

    torch.set_num_threads(args.threads)
    tree = tree_from_args(args).check_fits()
    target = load_target(args.target, dtype=dtype_from_name(args.target_dtype))
    decoders, fingerprints = {}, {}
    for item in args.drafts:
        name, _, folder = item.partition("=")
        if not folder:
            p.error(f"--drafts takes name=folder, got {item!r}")
        choice = resolve_draft(folder)
        head = choice.load(target)
        if head is None:
            p.error(f"--drafts {item!r}: name a draft (a folder, a shipped name or random), not none")
        decoders[name] = SpeculativeDecoder(target, head, tree)
        fingerprints[name] = draft_fingerprint(choice.path) if choice.path is not None else folder
    for pair in args.compare:
        a, _, b = pair.partition(":")
        if a not in decoders or b not in decoders:
            p.error(f"--compare {pair!r}: both names must be in --drafts")
    prompts = eval_prompts(target, args.sets, args.per_set)
    print(f"{target.path.name} {args.target_dtype}, tree {tree}, {len(prompts)} prompts x {args.max_new_tokens} new tokens, "
          f"verification specinfer at T>0", flush=True)
    raw = {}
    for temp in args.temperatures:
        key = {"target": target.path.name, "dtype": args.target_dtype, "threads": args.threads}
        runs = run_side_by_side(target, decoders, prompts, args.max_new_tokens, make_sampling(temp), args.seed,
                                journal=args.journal, journal_key=key, draft_ids=fingerprints)
        rows = summarize(runs)
        raw[str(temp)] = [r.__dict__ | {"tau": r.tau, "tokens_per_second": r.tokens_per_second} for r in rows]
        cols = [*args.sets, "mean"]
        get = {(r.method, r.eval_set): r for r in rows}
        print(f"\n### T = {temp:g}: tau (tokens per target forward, prefill included)\n")
        print("| draft | " + " | ".join(cols) + " |")
        print("|---|" + "---|" * len(cols))
        for name in decoders:
            print(f"| {name} | " + " | ".join(f"{get[name, c].tau:.2f}" for c in cols) + " |")
        for pair in args.compare:
            a, _, b = pair.partition(":")
            print(f"| {a} / {b} | " + " | ".join(f"{get[a, c].tau / get[b, c].tau:.3f}" for c in cols) + " |")
        print(f"\n### T = {temp:g}: speedup over vanilla (tokens/s ratio, same run)\n")
        print("| draft | " + " | ".join(cols) + " |")
        print("|---|" + "---|" * len(cols))
        print("| vanilla tok/s | " + " | ".join(f"{get['vanilla', c].tokens_per_second:.1f}" for c in cols) + " |")
        for name in decoders:
            print(f"| {name} | " + " | ".join(
                f"{get[name, c].tokens_per_second / get['vanilla', c].tokens_per_second:.2f}x" for c in cols) + " |")
        for pair in args.compare:  # how far the mean ratio moves with the choice of prompts
            a, _, b = pair.partition(":")
            r, lo, hi = tau_ratio_interval(runs, a, b)
            raw.setdefault("intervals", {})[f"{pair} T={temp:g}"] = {"ratio": r, "low": lo, "high": hi}
            print(f"\n{a} / {b} mean tau at T={temp:g}: {r:.3f} (95% paired bootstrap over the {len(runs)} prompts: "
                  f"{lo:.3f}-{hi:.3f})")
        if temp == 0:
            same = {name: get[name, "mean"].identical for name in decoders}
            print(f"\noutputs identical to vanilla greedy (of {len(prompts)}): {same}")
    if args.json:
        Path(args.json).write_text(json.dumps(raw, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
