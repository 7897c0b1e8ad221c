"""Self-distillation data: regenerate the assistant answers of ShareGPT conversations with the target.

A draft is judged on the target's own outputs, so training it on text the target wrote (rather
than on ChatGPT's answers) removes a distribution shift; the EAGLE/HASS and Medusa authors
recommend it. Only the first exchange is kept: the user's first message (and a leading system
message) plus the target's answer; later turns would need the target's earlier answers anyway.

Batched `generate` over length-sorted prompts (left padding). Resumable: each batch is written
atomically as one part file under `<out>.parts/`; a restarted run skips finished parts, then the
parts are merged into `<out>` (atomic). Greedy by default (what T=0 decoding emits); with
`temperature > 0` batch i samples from a generator seeded with (seed, i), so a resumed run
produces the same data as an uninterrupted one.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import torch
from pydantic import BaseModel, ConfigDict, field_validator
from tqdm import tqdm

from hass_sglang.errors import DataError
from hass_sglang.io import claim_run_settings, write_json_atomic
from hass_sglang.train.data import Conversation, load_sharegpt


class RegenerateConfig(BaseModel):
    """One regeneration run (everything but the target and the output path)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    data: tuple[str, ...]  # ShareGPT JSON file(s) from `hass data`
    max_new_tokens: int = 256
    batch_size: int = 16
    max_prompt_tokens: int = 512  # longer prompts are skipped (and counted)
    temperature: float = 0.0  # 0 = greedy (what T=0 decoding emits)
    seed: int = 0
    limit: int | None = None  # at most this many conversations per input file
    # Keep only this many (shortest prompts first). Not part of the resume check: it leaves the
    # earlier batches as they were, so it may change between runs (e.g. to stop a long run early).
    max_conversations: int | None = None

    @field_validator("data", mode="before")
    @classmethod
    def _paths(cls, v):
        return tuple(str(x) for x in ([v] if isinstance(v, (str, Path)) else v))

    def resume_settings(self) -> dict:
        return {"data": list(self.data), **self.model_dump(exclude={"data", "max_conversations"})}


@dataclass
class RegenerationReport:
    kept: int = 0
    skipped: Counter = field(default_factory=Counter)
    hit_max_new_tokens: int = 0
    new_tokens: int = 0


def first_exchange_prompt(conv: Conversation) -> list[dict]:
    """The messages up to and including the first user turn."""
    for i, m in enumerate(conv.messages):
        if m["role"] == "user":
            return conv.messages[: i + 1]
    raise DataError(f"conversation {conv.id!r} has no user turn")


@torch.no_grad()
def _generate_batch(target, prompts: list[list[int]], max_new_tokens: int, temperature: float, seed: int) -> list[list[int]]:
    eos = sorted(target.eos_token_ids)
    pad = eos[0]
    longest = max(len(p) for p in prompts)
    ids = torch.full((len(prompts), longest), pad, dtype=torch.long)
    att = torch.zeros(len(prompts), longest, dtype=torch.long)
    for i, p in enumerate(prompts):
        ids[i, longest - len(p):] = torch.tensor(p)
        att[i, longest - len(p):] = 1
    kwargs = {"do_sample": False}
    if temperature > 0:
        torch.manual_seed(seed)  # HF sampling draws from the global generator
        kwargs = {"do_sample": True, "temperature": temperature, "top_k": 0, "top_p": 1.0}
    out = target.model.generate(
        input_ids=ids.to(target.device), attention_mask=att.to(target.device), max_new_tokens=max_new_tokens,
        eos_token_id=eos, pad_token_id=pad, **kwargs,
    )
    res = []
    for row in out[:, longest:].tolist():
        cut = next((k for k, t in enumerate(row) if t in eos), None)
        res.append(row[:cut] if cut is not None else row)
    return res


def regenerate(target, cfg: RegenerateConfig, out: str | Path, progress: bool = True) -> RegenerationReport:
    out = Path(out)
    parts = out.with_name(out.name + ".parts")
    parts.mkdir(parents=True, exist_ok=True)
    claim_run_settings(parts / "settings.json", cfg.resume_settings(), DataError)
    max_new_tokens, max_prompt_tokens = cfg.max_new_tokens, cfg.max_prompt_tokens

    report = RegenerationReport()
    items = []
    convs = [c for d in cfg.data for c in load_sharegpt(d)[: cfg.limit]]  # --limit applies per file
    for conv in convs:
        msgs = first_exchange_prompt(conv)
        ids = target.tokenizer.apply_chat_template(msgs, add_generation_prompt=True, tokenize=True, return_dict=True)["input_ids"]
        if len(ids) > max_prompt_tokens:
            report.skipped["prompt longer than max_prompt_tokens"] += 1
            continue
        items.append((conv.id, msgs, list(ids)))
    items.sort(key=lambda x: len(x[2]))  # little padding per batch
    if cfg.max_conversations is not None:  # the shortest prompts: earlier batches stay as they were
        report.skipped["beyond max_conversations"] += max(len(items) - cfg.max_conversations, 0)
        items = items[: cfg.max_conversations]
    batches = [items[i : i + cfg.batch_size] for i in range(0, len(items), cfg.batch_size)]
    for b, batch in enumerate(tqdm(batches, desc="regenerate", disable=not progress)):
        part = parts / f"part-{b:05d}.json"
        if part.is_file():
            continue
        answers = _generate_batch(target, [x[2] for x in batch], max_new_tokens, cfg.temperature, cfg.seed * 100003 + b)
        rows = [{"id": cid, "messages": msgs, "answer_ids": ans} for (cid, msgs, _), ans in zip(batch, answers)]
        write_json_atomic(part, rows)

    merged = []
    for b in range(len(batches)):
        for row in json.loads((parts / f"part-{b:05d}.json").read_text()):
            text = target.tokenizer.decode(row["answer_ids"], skip_special_tokens=True).strip()
            if not text:
                report.skipped["empty answer"] += 1
                continue
            report.kept += 1
            report.new_tokens += len(row["answer_ids"])
            report.hit_max_new_tokens += len(row["answer_ids"]) >= max_new_tokens
            conv = Conversation(row["id"], row["messages"] + [{"role": "assistant", "content": text}])
            merged.append(conv.to_sharegpt())
    write_json_atomic(out, merged)
    return report
