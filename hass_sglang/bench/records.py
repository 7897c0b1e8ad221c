"""Raw request records: one JSONL per (method, temperature, concurrency), append-only, resumable.

`<out>/raw/<method>/t<T>_c<C>.jsonl` holds one line per measured request, appended and flushed
as each request finishes: a re-run skips the (dataset, question_id) pairs already answered without
error, and Ctrl-C (or a crash) leaves every written line valid (a torn last line is dropped).
"""

from __future__ import annotations

from pathlib import Path

from hass_sglang.bench.client import Answer
from hass_sglang.eval_sets import Question
from hass_sglang.errors import HassError
from hass_sglang.io import read_jsonl


def temperature_tag(t: float) -> str:
    return f"{t:g}"


def raw_path(out: Path, method: str, temperature: float, concurrency: int) -> Path:
    return Path(out) / "raw" / method / f"t{temperature_tag(temperature)}_c{concurrency}.jsonl"


def read_records(path: Path) -> list[dict]:
    """Records of a raw file (a torn last line dropped; any other bad line: a named HassError)."""
    return read_jsonl(path, HassError)


def finished_keys(records: list[dict]) -> set[tuple[str, str]]:
    return {(r["dataset"], str(r["question_id"])) for r in records if not r.get("error")}


def make_record(method: str, dataset: str, question: Question, temperature: float, concurrency: int,
                ans: Answer | None, context: list[dict], error: str | None = None) -> dict:
    """The line of one measured request (its last turn; earlier turns are summarised in `context_turns`)."""
    rec = {"method": method, "dataset": dataset, "question_id": question.question_id, "temperature": temperature,
           "concurrency": concurrency, "turn": len(question.turns), "context_turns": context, "error": error}
    if ans is not None:
        rec.update(output_tokens=ans.output_tokens, latency_s=round(ans.latency_s, 5),
                   ttft_s=None if ans.ttft_s is None else round(ans.ttft_s, 5),
                   t_start=round(ans.t_start, 5), t_end=round(ans.t_end, 5), finish_reason=ans.finish_reason,
                   verify_ct=ans.verify_ct, sglang_accept_length=ans.reported_accept_length,
                   accept_length=None if ans.accept_length is None else round(ans.accept_length, 5),
                   text_chars=len(ans.text))
    return rec
