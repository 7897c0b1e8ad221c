"""The evaluation question sets (FastChat question format), read from disk, never vendored.

The six sets of the EAGLE/HASS papers live in `../shared/data/eagle_eval/<name>_question.jsonl`
beside the checkout (CI has them there too); HASS_DATA_DIR points elsewhere. Any FastChat-format
file (question_id, turns[, category]) can be read with `load_questions(path)`.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

from hass_sglang.errors import DatasetError

EVAL_SETS: tuple[str, ...] = ("mt_bench", "humaneval", "gsm8k", "alpaca", "qa", "sum")


@dataclass(frozen=True)
class Question:
    question_id: str
    category: str
    turns: tuple[str, ...]


def shared_data_dir() -> Path:
    """HASS_DATA_DIR, else the `shared/data` folder next to the checkout (or the working dir)."""
    if os.environ.get("HASS_DATA_DIR"):
        return Path(os.environ["HASS_DATA_DIR"])
    here = Path(__file__).resolve().parent.parent
    for base in (here, Path.cwd()):
        for cand in (base.parent / "shared" / "data", base / "shared" / "data"):
            if cand.is_dir():
                return cand
    raise DatasetError("no shared data folder: set HASS_DATA_DIR to the folder holding eagle_eval/")


def question_file(name_or_path: str) -> Path:
    if name_or_path in EVAL_SETS:
        return shared_data_dir() / "eagle_eval" / f"{name_or_path}_question.jsonl"
    return Path(name_or_path)


def load_questions(name_or_path: str, limit: int | None = None) -> list[Question]:
    """Questions of a named eval set or a FastChat-format JSONL file, in file order."""
    path = question_file(name_or_path)
    if not path.is_file():
        raise DatasetError(f"question file not found: {path}")
    out: list[Question] = []
    with path.open(encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
            except json.JSONDecodeError as exc:
                raise DatasetError(f"{path}:{lineno}: not valid JSON ({exc.msg})") from exc
            turns = rec.get("turns") if isinstance(rec, dict) else None
            if not isinstance(turns, list) or not turns or not all(isinstance(t, str) and t.strip() for t in turns):
                raise DatasetError(f"{path}:{lineno}: 'turns' must be a non-empty list of non-empty strings")
            if "question_id" not in rec:
                raise DatasetError(f"{path}:{lineno}: missing 'question_id'")
            out.append(Question(str(rec["question_id"]), str(rec.get("category", "")), tuple(turns)))
            if limit is not None and len(out) >= limit:
                break
    if not out:
        raise DatasetError(f"{path}: no questions")
    return out


def validation_questions(n: int, sets=EVAL_SETS) -> list[tuple[str, Question]]:
    """`n` (set, question) pairs for validating drafts while they train: the *last* questions of each
    set in turn, so they stay apart from the first questions of each set, which the benchmarks decode
    (`--per-set N` takes the first N). The training corpus drops every eval question (`hass corpus`)."""
    tails = {name: load_questions(name)[::-1] for name in sets}
    out = []
    for i in range(n):
        name = sets[i % len(sets)]
        if i // len(sets) >= len(tails[name]):
            raise DatasetError(f"validation: {n} prompts need more than the {len(tails[name])} questions of {name}")
        out.append((name, tails[name][i // len(sets)]))
    return out
