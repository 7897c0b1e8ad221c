"""Raw request records: one JSONL per (method, temperature, concurrency), append-only, resumable.

`<out>/raw/<method>/t<T>_c<C>.jsonl` holds one line per measured request, appended and flushed
as each request finishes: a re-run skips the (dataset, question_id) pairs already answered without
error, and Ctrl-C (or a crash) leaves every written line valid (a torn last line is dropped).
"""

from __future__ import annotations

import json
from pathlib import Path

from hass_sglang.bench.client import Answer
from hass_sglang.errors import HassError
from hass_sglang.eval_sets import Question


def temperature_tag(t: float) -> str:
    return f"{t:g}"


def raw_path(out: Path, method: str, temperature: float, concurrency: int) -> Path:
    return Path(out) / "raw" / method / f"t{temperature_tag(temperature)}_c{concurrency}.jsonl"


def read_records(path: Path) -> list[dict]:
    """Records of a raw file; a torn last line (killed mid-write) is ignored, anything else is an error."""
    path = Path(path)
    if not path.is_file():
        return []
    lines = path.read_text(encoding="utf-8").split("\n")
    out = []
    for lineno, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError as exc:
            if lineno == len(lines):  # no trailing newline: the last write was cut
                break
            raise HassError(f"{path}:{lineno}: corrupt record ({exc.msg})") from exc
    return out


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


class RecordWriter:
    """Append-only JSONL: one complete line per write, flushed (a torn line can only be the last)."""

    def __init__(self, path: Path):
        path.parent.mkdir(parents=True, exist_ok=True)
        if path.is_file() and path.stat().st_size and not (data := path.read_bytes()).endswith(b"\n"):
            with path.open("r+b") as fh:  # a previous run was killed mid-line: drop the torn line
                fh.truncate(data.rfind(b"\n") + 1)
        self._fh = path.open("a", encoding="utf-8")

    def write(self, record: dict) -> None:
        self._fh.write(json.dumps(record, ensure_ascii=False) + "\n")
        self._fh.flush()

    def close(self) -> None:
        self._fh.close()
