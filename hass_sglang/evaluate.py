"""Side-by-side runs of vanilla and speculative decoding on the evaluation sets.

Used by `hass generate`, the reference-decoder scripts in benchmarks/ (which share its target,
draft and eval-set options: `add_eval_args`) and the training loop's validation tau. Every method runs on the same prompt back to back, so a noisy
machine affects them alike; tokens/s are totals over the run (throughput at batch size 1).
"""

from __future__ import annotations

import argparse
import json
import zlib
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from tqdm import tqdm

from hass_sglang.errors import HassError
from hass_sglang.eval_sets import EVAL_SETS, load_questions
from hass_sglang.io import JsonlWriter, read_jsonl
from hass_sglang.vanilla import GenerationResult, generate_vanilla
from hass_sglang.sampling import SamplingParams
from hass_sglang.speculative import SpeculativeDecoder
from hass_sglang.target import Target


def add_eval_args(p: argparse.ArgumentParser, per_set: int, max_new_tokens: int) -> None:
    """Target, draft and eval-set options of `hass generate` and the reference-decoder benchmarks."""
    from hass_sglang.target import DTYPES, EMBEDDED_TARGET

    p.add_argument("--target", default=EMBEDDED_TARGET, help="embedded alias, HF folder, .gguf file or hub id")
    p.add_argument("--draft", default="auto", help="auto (the shipped default), random, a shipped draft name or a folder")
    p.add_argument("--head", choices=("eagle", "mtp"), default="eagle", help="head type for --draft random")
    p.add_argument("--sets", nargs="+", default=list(EVAL_SETS), choices=EVAL_SETS)
    p.add_argument("--per-set", type=int, default=per_set, help="questions per eval set")
    p.add_argument("--max-new-tokens", type=int, default=max_new_tokens)
    p.add_argument("--target-dtype", "--dtype", dest="target_dtype", choices=DTYPES, default="bfloat16",
                   help="the target's dtype (drafts run in bf16)")
    p.add_argument("--threads", type=int, default=2)


def add_tree_args(p: argparse.ArgumentParser, default) -> None:
    """The reference decoder's tree flags, named as SGLang's (`--speculative-num-steps` ...)."""
    p.add_argument("--num-steps", type=int, default=default.num_steps, help="draft tree depth")
    p.add_argument("--topk", type=int, default=default.topk, help="draft tree branching (not the distillation top-K)")
    p.add_argument("--num-draft-tokens", type=int, default=default.num_draft_tokens,
                   help="tokens verified per cycle (root included)")


def tree_from_args(args: argparse.Namespace):
    from hass_sglang.tree import TreeShape

    return TreeShape(args.num_steps, args.topk, args.num_draft_tokens)


def load_eval_models(args: argparse.Namespace):
    """(target, draft head) named by `add_eval_args` options."""
    from hass_sglang.drafts import resolve_draft
    from hass_sglang.errors import ConfigError
    from hass_sglang.target import dtype_from_name, load_target

    target = load_target(args.target, dtype=dtype_from_name(args.target_dtype))
    head = resolve_draft(args.draft).load(target, args.head)
    if head is None:
        raise ConfigError("--draft none: a speculative decoder needs a draft (auto, random, a name or a folder)")
    return target, head


@dataclass
class PromptRun:
    eval_set: str
    question_id: str
    prompt_tokens: int
    results: dict[str, GenerationResult] = field(default_factory=dict)


def eval_prompts(target: Target, sets=EVAL_SETS, per_set: int = 2) -> list[tuple[str, str, list[int]]]:
    """(set, question_id, chat prompt ids) for the first `per_set` first-turn questions of each set."""
    out = []
    for name in sets:
        for q in load_questions(name, limit=per_set):
            out.append((name, q.question_id, target.chat_prompt_ids(q.turns[0])))
    return out


def prompt_seed(seed: int, eval_set: str, question_id: str) -> int:
    """The generator seed of one prompt at T > 0: fixed by the question, not by its place in the
    run, so the same question gets the same draws whatever the other prompts (more per set, other
    sets) and its journal record stays reusable."""
    return seed + zlib.crc32(f"{eval_set}/{question_id}".encode()) % 1_000_003


def run_side_by_side(
    target: Target,
    decoders: dict[str, SpeculativeDecoder | tuple[SpeculativeDecoder, str]],
    prompts: list[tuple[str, str, list[int]]],
    max_new_tokens: int,
    sampling: SamplingParams | None = None,
    seed: int = 0,
    progress: bool = True,
    journal: str | Path | None = None,
    journal_key: dict | None = None,
    draft_ids: dict[str, str] | None = None,
) -> list[PromptRun]:
    """Vanilla and every decoder (optionally with its verification method) on each prompt in turn.
    At T > 0 every method gets its own generator seeded by `prompt_seed`.

    With `journal` (a JSONL file), every finished (prompt, method) result is appended as it ends,
    and a later call reuses the results already there instead of decoding them again: a long
    benchmark resumes after a kill, each result decoded and counted once, and a run that adds a
    draft or more prompts per set decodes only what is new. A result is reused when its prompt and
    settings match: `journal_key` (what the caller's whole run shares: target, dtype, threads), the
    token budget, sampling and seed, and for a draft its identity (`draft_ids[name]`, e.g. the
    weights' fingerprint; else the name), tree and verification method. Tokens/s of reused results
    come from the run that decoded them; tau and the texts do not depend on it."""
    common = {**(journal_key or {}), "max_new_tokens": max_new_tokens, "seed": seed,
              "sampling": (sampling or SamplingParams()).model_dump()}
    specs = {name: spec if isinstance(spec, tuple) else (spec, "specinfer") for name, spec in decoders.items()}
    method_keys = {"vanilla": {"method": "vanilla"}}
    for name, (dec, method) in specs.items():
        method_keys[name] = {"method": "speculative", "draft": (draft_ids or {}).get(name, name),
                             "tree": str(dec.tree), "verify": method}

    def lookup(key: dict, eval_set: str, qid: str, ids) -> tuple:
        return json.dumps(key, sort_keys=True), eval_set, qid, tuple(ids)

    done = {lookup(r["key"], r["eval_set"], r["question_id"], r["prompt"]): r["result"]
            for r in (read_jsonl(journal, HassError) if journal else []) if "result" in r}
    writer = JsonlWriter(journal) if journal else None
    runs = []
    try:
        for eval_set, qid, ids in tqdm(prompts, desc="prompts", disable=not progress):
            run = PromptRun(eval_set, qid, len(ids))
            for name in method_keys:
                key = json.loads(json.dumps({**common, **method_keys[name]}))
                stored = done.get(lookup(key, eval_set, qid, ids))
                if stored is not None:
                    run.results[name] = GenerationResult(**stored)
                    continue
                gen = torch.Generator().manual_seed(prompt_seed(seed, eval_set, qid))
                if name == "vanilla":
                    result = generate_vanilla(target, ids, max_new_tokens, sampling, gen)
                else:
                    dec, method = specs[name]
                    result = dec.generate(ids, max_new_tokens, sampling, verify=method, generator=gen)
                run.results[name] = result
                if writer is not None:
                    writer.write({"key": key, "eval_set": eval_set, "question_id": qid, "prompt": list(ids),
                                  "method": name, "result": asdict(result)})
            runs.append(run)
    finally:
        if writer is not None:
            writer.close()
    return runs


@dataclass
class Summary:
    method: str
    eval_set: str
    tokens: int
    seconds: float
    target_forwards: int
    identical: int  # prompts whose output equals vanilla's
    prompts: int

    @property
    def tokens_per_second(self) -> float:
        return self.tokens / self.seconds if self.seconds else 0.0

    @property
    def tau(self) -> float:
        return self.tokens / self.target_forwards if self.target_forwards else 0.0


def summarize(runs: list[PromptRun]) -> list[Summary]:
    """One row per (method, eval set) plus a 'mean' row per method over all prompts."""
    rows: dict[tuple[str, str], Summary] = {}
    for run in runs:
        ref = run.results["vanilla"].tokens
        for method, res in run.results.items():
            for key in ((method, run.eval_set), (method, "mean")):
                s = rows.setdefault(key, Summary(method, key[1], 0, 0.0, 0, 0, 0))
                s.tokens += len(res.tokens)
                s.seconds += res.seconds
                s.target_forwards += res.target_forwards
                s.identical += int(res.tokens == ref)
                s.prompts += 1
    return list(rows.values())


def tau_ratio_interval(runs: list[PromptRun], a: str, b: str, level: float = 0.95, resamples: int = 4000,
                       seed: int = 0) -> tuple[float, float, float]:
    """Pooled tau of method `a` over pooled tau of `b` (the tables' 'mean' ratio) and its paired
    bootstrap interval: the prompts are resampled with replacement, the same draw for both methods,
    so what a prompt does to both (an easy set, a long answer) cancels and what is left is how much
    the ratio depends on which prompts were asked. Returns (ratio, low, high)."""
    if not runs:
        raise HassError("tau_ratio_interval: no prompts")
    counts = torch.tensor([[len(r.results[m].tokens), r.results[m].target_forwards] for r in runs for m in (a, b)],
                          dtype=torch.float64).view(len(runs), 2, 2)  # [prompt, method, (tokens, forwards)]

    def ratio(c: torch.Tensor) -> torch.Tensor:  # c: [..., prompt, method, 2]
        pooled = c.sum(-3)
        tau = pooled[..., 0] / pooled[..., 1]
        return tau[..., 0] / tau[..., 1]

    g = torch.Generator().manual_seed(seed)
    draws = ratio(counts[torch.randint(len(runs), (resamples, len(runs)), generator=g)])
    low, high = torch.quantile(draws, torch.tensor([(1 - level) / 2, (1 + level) / 2], dtype=torch.float64)).tolist()
    return float(ratio(counts)), low, high


def format_table(summaries: list[Summary]) -> str:
    """Markdown: per method and set, tokens/s, speedup over vanilla, tau and output identity."""
    base = {s.eval_set: s.tokens_per_second for s in summaries if s.method == "vanilla"}
    lines = [
        "| method | set | tokens/s | speedup | tau | identical to vanilla |",
        "|---|---|---|---|---|---|",
    ]
    order = {name: i for i, name in enumerate(dict.fromkeys(s.eval_set for s in summaries))}
    ordered = sorted(summaries, key=lambda s: (s.eval_set == "mean", order[s.eval_set], s.method != "vanilla"))
    for s in ordered:
        speed = s.tokens_per_second / base[s.eval_set] if base.get(s.eval_set) else float("nan")
        lines.append(
            f"| {s.method} | {s.eval_set} | {s.tokens_per_second:.1f} | {speed:.2f}x | {s.tau:.2f} | "
            f"{s.identical}/{s.prompts} |"
        )
    return "\n".join(lines)
