"""Load-test request logs (benchmarks/locustfile.py `--bench-requests-log`): exactly-once
accounting and per-phase numbers (before / during / after a fault, or soak windows). Pure.

A record is one request as the client saw it: rid (sent as SGLang's request id, so an answer's
`id` names the request it answers), start/end (epoch s), status (HTTP status; None or 0: no HTTP
answer at all), id (the answer's id), error, tokens.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from hass_sglang.bench.report import percentile


def read_requests(path: str | Path) -> list[dict]:
    """The records of a request log; a torn last line (a killed client) is skipped."""
    out = []
    for line in Path(path).read_text().splitlines():
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return out


def retryable(status: int | None) -> bool:
    """What OpenAI clients retry (openai-python: 408, 409, 429 and every 5xx)."""
    return status is not None and (status in (408, 409, 429) or status >= 500)


def failed_visibly(record: dict) -> bool:
    """The client knows to retry: a retryable status, or a stream that broke before its end (no
    final chunk: OpenAI clients raise) - what a replica dying mid-answer gives a streaming client."""
    return retryable(record.get("status")) or bool(record.get("cut"))


def exactly_once_problems(records: list[dict], ids_echo_rid: bool = True) -> list[str]:
    """Every request answered exactly once or failed visibly to the client (`failed_visibly`);
    anything else is named. An answer must carry its own id, one no other request got (SGLang
    answers with the rid it was sent; `ids_echo_rid=False` for a front that assigns its own ids,
    as sglang-router does)."""
    problems = [f"request {rid} logged {n} times" for rid, n in Counter(r["rid"] for r in records).items() if n > 1]
    answered = [r for r in records if r.get("status") == 200 and not r.get("error")]
    ids = Counter(r.get("id") for r in answered)
    for r in answered:
        if not r.get("id") or ids[r["id"]] > 1:
            problems.append(f"request {r['rid']} got answer id {r.get('id')!r}, which {ids[r.get('id')]} requests got")
        elif ids_echo_rid and r["id"] != r["rid"]:
            problems.append(f"request {r['rid']} got the answer of {r['id']!r}")
    for r in records:
        if (r.get("status") != 200 or r.get("error")) and not failed_visibly(r):
            problems.append(f"request {r['rid']} failed without a retryable status: {r.get('status')} {r.get('error')}")
    return problems


@dataclass(frozen=True)
class PhaseStats:
    name: str
    seconds: float
    requests: int  # ended in the phase
    failures: int
    answered_per_s: float  # successful requests per second (goodput)
    p50_s: float | None  # latency of the successful ones
    p95_s: float | None
    output_tok_s: float


def phase_stats(records: list[dict], phases: list[tuple[str, float, float]]) -> list[PhaseStats]:
    """Per (name, from, to) window: the requests that *ended* in it."""
    out = []
    for name, t0, t1 in phases:
        inside = [r for r in records if t0 <= r["end"] < t1]
        ok = [r for r in inside if r.get("status") == 200 and not r.get("error")]
        span = max(t1 - t0, 1e-9)
        lat = [r["end"] - r["start"] for r in ok]
        out.append(PhaseStats(name, t1 - t0, len(inside), len(inside) - len(ok), len(ok) / span,
                              percentile(lat, 50), percentile(lat, 95), sum(r.get("tokens", 0) for r in ok) / span))
    return out


def phase_table(stats: list[PhaseStats]) -> str:
    """Markdown table of `phase_stats`."""
    fmt = lambda x: "-" if x is None else f"{x:.2f}"  # noqa: E731
    rows = ["| phase | seconds | requests | failures | answered/s | p50 s | p95 s | output tok/s |",
            "|---|---:|---:|---:|---:|---:|---:|---:|"]
    rows += [f"| {s.name} | {s.seconds:.0f} | {s.requests} | {s.failures} | {s.answered_per_s:.2f} | {fmt(s.p50_s)} "
             f"| {fmt(s.p95_s)} | {s.output_tok_s:.1f} |" for s in stats]
    return "\n".join(rows)
