"""Self-distillation data: regenerate the assistant answers of ShareGPT conversations with the target.

A draft is judged on the target's own outputs, so training it on text the target wrote (rather
than on ChatGPT's answers) removes a distribution shift; the EAGLE/HASS and Medusa authors
recommend it. Only the first exchange is kept: the user's first message (and a leading system
message) plus the target's answer; later turns would need the target's earlier answers anyway.

Two engines write the answers: the target in transformers (batched `generate` over length-sorted
prompts, left padding), or any OpenAI-compatible chat endpoint (`Endpoint`: an SGLang server with
its continuous batching, TP and multi-node, `--concurrency` requests in flight). Resumable either
way: each batch of conversations is written atomically as one gzip-compressed part file under
`<out>.parts/` once all its answers are in (small enough to commit, so a long run survives a new
machine); a restarted run checks that each finished part holds its batch's conversations and skips
it, then the parts are merged into `<out>` (atomic; `.gz` compresses it too), so every
conversation is answered exactly once in the output. Greedy by default
(what T=0 decoding emits); with `temperature > 0` batch i samples from a generator seeded with
(seed, i) (an endpoint gets a per-conversation `seed`), so a resumed run produces the same data as
an uninterrupted one.
"""

from __future__ import annotations

from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from typing import Iterator, Literal

import torch
from pydantic import BaseModel, ConfigDict, field_validator
from tqdm import tqdm

from hass_sglang.errors import DataError
from hass_sglang.io import claim_run_settings, read_json, write_json_atomic
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
    engine: Literal["transformers", "endpoint"] = "transformers"  # who answers (part of the resume check)

    @field_validator("data", mode="before")
    @classmethod
    def _paths(cls, v):
        return tuple(str(x) for x in ([v] if isinstance(v, (str, Path)) else v))

    def resume_settings(self) -> dict:
        settings = {"data": list(self.data), **self.model_dump(exclude={"data", "max_conversations"})}
        if self.engine == "transformers":  # parts folders from before the endpoint engine stay resumable
            settings.pop("engine")
        return settings


@dataclass
class RegenerationReport:
    kept: int = 0
    skipped: Counter = field(default_factory=Counter)
    hit_max_new_tokens: int = 0
    new_tokens: int = 0


def part_file(parts: Path, b: int) -> Path | None:
    """The finished part of batch `b`, if any (.json.gz; plain .json from earlier runs)."""
    for name in (f"part-{b:05d}.json.gz", f"part-{b:05d}.json"):
        if (parts / name).is_file():
            return parts / name
    return None


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


class Endpoint:
    """An OpenAI-compatible chat endpoint that answers (e.g. `python -m sglang.launch_server ...`):
    `concurrency` requests in flight (the server batches them), the client's bounded retries with
    backoff on connection errors, 429 and 5xx. `tokenizer`: the target's, for the prompt-length
    filter and token counts (the weights stay with the server)."""

    def __init__(self, url: str, tokenizer, model: str | None = None, concurrency: int = 8, retries: int = 3,
                 timeout_s: float = 600.0):
        try:
            from openai import OpenAI
        except ImportError as exc:
            raise DataError("--endpoint needs the openai client: pip install 'hass-sglang[sglang]' or openai") from exc
        if concurrency < 1:
            raise DataError("--concurrency must be >= 1")
        base = url.rstrip("/")
        self.client = OpenAI(base_url=base if base.endswith("/v1") else base + "/v1", api_key="EMPTY",
                             max_retries=retries, timeout=timeout_s)
        self.tokenizer, self.concurrency = tokenizer, concurrency
        try:
            self.model = model or self.client.models.list().data[0].id
        except Exception as exc:  # openai raises its own connection / status errors
            raise DataError(f"no OpenAI-compatible endpoint at {url}: {exc}") from exc

    def answer(self, messages: list[dict], max_new_tokens: int, temperature: float, seed: int) -> dict:
        r = self.client.chat.completions.create(model=self.model, messages=messages, max_tokens=max_new_tokens,
                                                temperature=temperature, seed=seed if temperature > 0 else None)
        choice = r.choices[0]
        return {"answer": choice.message.content or "", "tokens": r.usage.completion_tokens,
                "cut": choice.finish_reason == "length"}


def _target_answers(target, pending, cfg: RegenerateConfig) -> Iterator[tuple[int, list[dict]]]:
    for b, batch in pending:
        answers = _generate_batch(target, [x[2] for x in batch], cfg.max_new_tokens, cfg.temperature, cfg.seed * 100003 + b)
        yield b, [{"answer_ids": ans} for ans in answers]


def _endpoint_answers(endpoint: Endpoint, pending, cfg: RegenerateConfig) -> Iterator[tuple[int, list[dict]]]:
    """Every pending conversation in flight through one pool; a batch is yielded when its answers are all in."""
    pool = ThreadPoolExecutor(endpoint.concurrency)
    futures = [(b, [pool.submit(endpoint.answer, msgs, cfg.max_new_tokens, cfg.temperature,
                                cfg.seed * 100003 + b * 1000 + i)
                    for i, (_, msgs, _) in enumerate(batch)]) for b, batch in pending]
    finished = False
    try:
        for b, fs in futures:
            yield b, [f.result() for f in fs]
        finished = True
    finally:
        # A failure or a kill: drop what has not started and do not wait for the requests in flight
        # (up to a whole answer each); they end when the caller stops the server.
        pool.shutdown(wait=finished, cancel_futures=True)


def regenerate(source, cfg: RegenerateConfig, out: str | Path, progress: bool = True) -> RegenerationReport:
    """`source`: a loaded `Target` (transformers) or an `Endpoint`; cfg.engine must say which."""
    endpoint = isinstance(source, Endpoint)
    if endpoint != (cfg.engine == "endpoint"):
        raise DataError(f"regenerate: engine {cfg.engine!r} but the source is {type(source).__name__}")
    tokenizer = source.tokenizer
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
        ids = tokenizer.apply_chat_template(msgs, add_generation_prompt=True, tokenize=True, return_dict=True)["input_ids"]
        if len(ids) > max_prompt_tokens:
            report.skipped["prompt longer than max_prompt_tokens"] += 1
            continue
        items.append((conv.id, msgs, list(ids)))
    items.sort(key=lambda x: len(x[2]))  # little padding per batch
    if cfg.max_conversations is not None:  # the shortest prompts: earlier batches stay as they were
        report.skipped["beyond max_conversations"] += max(len(items) - cfg.max_conversations, 0)
        items = items[: cfg.max_conversations]
    batches = [items[i : i + cfg.batch_size] for i in range(0, len(items), cfg.batch_size)]
    pending = []
    for b, batch in enumerate(batches):
        done = part_file(parts, b)
        if done is None:
            pending.append((b, batch))
        elif [row["id"] for row in read_json(done)] != [cid for cid, _, _ in batch]:
            raise DataError(f"{done} holds other conversations than batch {b} of this input: the data changed "
                            f"since it was written (regenerate into a new --out)")

    answers = _endpoint_answers(source, pending, cfg) if endpoint else _target_answers(source, pending, cfg)
    bar = tqdm(total=len(batches), initial=len(batches) - len(pending), desc="regenerate", disable=not progress)
    for b, got in answers:
        rows = [{"id": cid, "messages": msgs, **ans} for (cid, msgs, _), ans in zip(batches[b], got)]
        write_json_atomic(parts / f"part-{b:05d}.json.gz", rows)
        bar.update()
    bar.close()

    merged = merged_conversations([part_file(parts, b) for b in range(len(batches))], tokenizer, max_new_tokens, report)
    write_json_atomic(out, merged)
    return report


def merged_conversations(part_files, tokenizer, max_new_tokens: int,
                         report: RegenerationReport | None = None) -> list[dict]:
    """The finished parts' conversations (prompt + the target's answer) as ShareGPT records, in
    order; empty answers are dropped and counted in `report`."""
    report = report if report is not None else RegenerationReport()
    merged = []
    for path in part_files:
        for row in read_json(path):
            if "answer_ids" in row:  # transformers: token ids, decoded here
                text = tokenizer.decode(row["answer_ids"], skip_special_tokens=True).strip()
                tokens, cut = len(row["answer_ids"]), len(row["answer_ids"]) >= max_new_tokens
            else:
                text, tokens, cut = row["answer"].strip(), row["tokens"], row["cut"]
            if not text:
                report.skipped["empty answer"] += 1
                continue
            report.kept += 1
            report.new_tokens += tokens
            report.hit_max_new_tokens += cut
            conv = Conversation(row["id"], row["messages"] + [{"role": "assistant", "content": text}])
            merged.append(conv.to_sharegpt())
    return merged
