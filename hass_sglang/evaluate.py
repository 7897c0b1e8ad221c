"""Side-by-side runs of vanilla and speculative decoding on the evaluation sets.

Used by `hass generate` (the main job), `benchmarks/bench_reference_decoder.py` and, later, the
training loop's validation tau. Every method runs on the same prompt back to back, so a noisy
machine affects them alike; tokens/s are totals over the run (throughput at batch size 1).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from tqdm import tqdm

from hass_sglang.eval_sets import EVAL_SETS, load_questions
from hass_sglang.generate import GenerationResult, generate_vanilla
from hass_sglang.sampling import SamplingParams
from hass_sglang.speculative import SpeculativeDecoder
from hass_sglang.target import Target


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


def run_side_by_side(
    target: Target,
    decoders: dict[str, SpeculativeDecoder | tuple[SpeculativeDecoder, str]],
    prompts: list[tuple[str, str, list[int]]],
    max_new_tokens: int,
    sampling: SamplingParams | None = None,
    seed: int = 0,
    progress: bool = True,
) -> list[PromptRun]:
    """Vanilla and every decoder (optionally with its verification method) on each prompt in turn.
    At T > 0 every method gets its own generator seeded with `seed` + prompt index."""
    runs = []
    for i, (eval_set, qid, ids) in enumerate(tqdm(prompts, desc="prompts", disable=not progress)):
        run = PromptRun(eval_set, qid, len(ids))
        gen = torch.Generator().manual_seed(seed + i)
        run.results["vanilla"] = generate_vanilla(target, ids, max_new_tokens, sampling, gen)
        for name, spec in decoders.items():
            dec, method = spec if isinstance(spec, tuple) else (spec, "specinfer")
            gen = torch.Generator().manual_seed(seed + i)
            run.results[name] = dec.generate(ids, max_new_tokens, sampling, verify=method, generator=gen)
        runs.append(run)
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
