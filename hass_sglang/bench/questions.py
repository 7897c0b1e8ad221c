"""Benchmark prompts: the six eagle_eval sets, any FastChat question file, or an HF dataset.

A `BenchDataset` is a named list of `Question`s (hass_sglang.eval_sets). Every turn but the last
builds context (the endpoint answers it, unmeasured); the last turn is the measured request, so
MT-bench is measured on its second turn with the first answer in the history, as in seed 002.
HF datasets are converted on the fly: one column holds the prompt (a string, or a list of
strings taken as turns); nothing is written to disk.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from hass_sglang.errors import DatasetError
from hass_sglang.eval_sets import EVAL_SETS, Question, load_questions, question_file

# Column headers of seed 002, per eval set; other datasets are shown by their own name.
DISPLAY_NAMES = {"mt_bench": "MT-bench", "humaneval": "HumanEval", "gsm8k": "GSM8K", "alpaca": "Alpaca",
                 "qa": "QA", "sum": "Summarization"}


@dataclass(frozen=True)
class BenchDataset:
    name: str
    source: str  # eval-set file, FastChat file, or "hf:<id>[/<subset>]:<split>:<column>"
    questions: tuple[Question, ...]

    @property
    def display_name(self) -> str:
        return DISPLAY_NAMES.get(self.name, self.name)


def parse_dataset_arg(arg: str) -> tuple[str, str]:
    """`mt_bench` -> (mt_bench, mt_bench); `name=path.jsonl` -> (name, path); `path.jsonl` -> (stem, path)."""
    if "=" in arg:
        name, _, src = arg.partition("=")
        if not name or not src:
            raise DatasetError(f"bad dataset {arg!r}: expected NAME=PATH")
        return name, src
    if arg in EVAL_SETS:
        return arg, arg
    return Path(arg).stem.removesuffix("_question"), arg


def load_fastchat(arg: str, limit: int | None = None) -> BenchDataset:
    """An eagle_eval set name or a FastChat-format JSONL (errors name the file and line)."""
    name, src = parse_dataset_arg(arg)
    return BenchDataset(name, str(question_file(src)), tuple(load_questions(src, limit=limit)))


def load_hf(arg: str, column: str, split: str = "test", subset: str | None = None, id_column: str | None = None,
            limit: int | None = None) -> BenchDataset:
    """`name=hub_id` (or a local dataset folder) through `datasets.load_dataset`, one prompt column."""
    name, _, ref = arg.partition("=") if "=" in arg else (arg.rstrip("/").split("/")[-1], "", arg)
    try:
        import datasets
    except ImportError as exc:  # pragma: no cover - datasets is in the lock
        raise DatasetError("HF datasets need `pip install datasets`") from exc
    try:
        ds = datasets.load_dataset(ref, subset, split=split)
    except Exception as exc:
        raise DatasetError(f"could not load HF dataset {ref!r} (subset={subset}, split={split}): "
                           f"{type(exc).__name__}: {exc}") from exc
    if column not in ds.column_names:
        raise DatasetError(f"HF dataset {ref!r} split {split!r} has no column {column!r}; columns: {ds.column_names}")
    if id_column is not None and id_column not in ds.column_names:
        raise DatasetError(f"HF dataset {ref!r} has no id column {id_column!r}; columns: {ds.column_names}")
    out = []
    for i, row in enumerate(ds):
        if limit is not None and len(out) >= limit:
            break
        value = row[column]
        turns = [value] if isinstance(value, str) else value
        if not isinstance(turns, list) or not turns or not all(isinstance(t, str) and t.strip() for t in turns):
            raise DatasetError(f"HF dataset {ref!r} row {i}: column {column!r} must be a non-empty string "
                               f"or a list of non-empty strings, got {type(value).__name__}")
        qid = str(row[id_column]) if id_column else str(i)
        out.append(Question(qid, "", tuple(turns)))
    if not out:
        raise DatasetError(f"HF dataset {ref!r} split {split!r}: no rows")
    source = f"hf:{ref}{'/' + subset if subset else ''}:{split}:{column}"
    return BenchDataset(name, source, tuple(out))


def load_datasets(names: list[str], hf: list[str] = (), hf_column: str = "question", hf_split: str = "test",
                  hf_subset: str | None = None, hf_id_column: str | None = None,
                  limit: int | None = None) -> list[BenchDataset]:
    sets = [load_fastchat(n, limit) for n in names]
    sets += [load_hf(h, hf_column, hf_split, hf_subset, hf_id_column, limit) for h in hf]
    seen = set()
    for ds in sets:
        if ds.name in seen:
            raise DatasetError(f"dataset name {ds.name!r} given twice; name them with NAME=SOURCE")
        seen.add(ds.name)
        if len({q.question_id for q in ds.questions}) != len(ds.questions):
            raise DatasetError(f"{ds.source}: question ids are not unique (resuming needs unique ids)")
    return sets
