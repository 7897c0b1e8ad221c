"""Load test of an OpenAI-compatible chat endpoint (SGLang with or without speculation).

Each simulated user loops over chat completions, streaming and not (weights below), on prompts
from an eagle_eval set or a FastChat question file; at the end it prints, and with
`--bench-summary` writes as JSON: requests, failures, latency p50/p95 (full response), time to
first token p50/p95 (streaming), and output token/s (completion tokens from `usage` / run time).
Locust's own table is printed too (streamed requests appear there with their full latency).

Bounded headless run on this machine (loopback only; the file refuses other hosts unless
`--bench-allow-remote`):

    locust -f benchmarks/locustfile.py --headless --host http://127.0.0.1:30000 \
        --users 4 --spawn-rate 2 --run-time 60s --only-summary \
        --bench-max-tokens 64 --bench-summary runs/locust/hass.json

Options: --bench-dataset (set name or FastChat file, default mt_bench), --bench-max-tokens,
--bench-temperature, --bench-stream-weight / --bench-plain-weight, --bench-model, and
--bench-requests-log FILE: one JSON line per request (`rid` sent as SGLang's request id, start and
end time, HTTP status or error, the answer's id) for exactly-once and per-phase accounting
(`hass_sglang.bench.load`; benchmarks/router_failover.py, benchmarks/soak.py).
"""

from __future__ import annotations

import json
import random
import sys
import threading
import time
import uuid
from pathlib import Path
from urllib.parse import urlparse

import requests
from locust import HttpUser, events, task

LOOPBACK = {"127.0.0.1", "localhost", "::1"}
CHAT = "/v1/chat/completions"
FALLBACK_PROMPTS = ["Explain speculative decoding in two sentences.", "Write a haiku about the sea.",
                    "What is the capital of France, and why?", "List three uses of a paperclip."]


class Tally:
    """Exact per-request numbers (locust rounds its response times); one lock, many greenlets."""

    def __init__(self):
        self.lock = threading.Lock()
        self.reset()

    def reset(self):
        self.latency, self.ttft, self.tokens, self.failures, self.t0, self.t1 = [], [], 0, 0, None, None

    def add(self, latency_s, tokens, ttft_s=None):
        with self.lock:
            self.latency.append(latency_s)
            self.tokens += tokens
            if ttft_s is not None:
                self.ttft.append(ttft_s)


class RequestLog:
    """One JSON line per request, appended as each ends (a killed run keeps what it had)."""

    def __init__(self):
        self.lock = threading.Lock()
        self.file = None

    def open(self, path: str | None):
        if path:
            Path(path).parent.mkdir(parents=True, exist_ok=True)
            self.file = open(path, "a", buffering=1)

    def add(self, **record):
        if self.file is not None:
            with self.lock:
                self.file.write(json.dumps(record) + "\n")

    def close(self):
        if self.file is not None:
            self.file.close()
            self.file = None


TALLY = Tally()
REQUESTS = RequestLog()
PROMPTS: list[str] = []


def _pct(xs, q):
    if not xs:
        return None
    xs = sorted(xs)
    pos = (len(xs) - 1) * q / 100
    lo = int(pos)
    hi = min(lo + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (pos - lo)


@events.init_command_line_parser.add_listener
def _options(parser):
    parser.add_argument("--bench-dataset", default="mt_bench", help="eagle_eval set name or FastChat question file")
    parser.add_argument("--bench-max-tokens", type=int, default=64)
    parser.add_argument("--bench-temperature", type=float, default=0.0)
    parser.add_argument("--bench-model", default="default")
    parser.add_argument("--bench-stream-weight", type=int, default=1)
    parser.add_argument("--bench-plain-weight", type=int, default=1)
    parser.add_argument("--bench-summary", default=None, help="write the summary JSON here")
    parser.add_argument("--bench-requests-log", default=None, help="append one JSON line per request here")
    parser.add_argument("--bench-allow-remote", action="store_true", help="allow a non-loopback --host")


def _load_prompts(dataset: str) -> list[str]:
    try:
        from hass_sglang.eval_sets import load_questions
    except ImportError:
        return FALLBACK_PROMPTS
    return [q.turns[0] for q in load_questions(dataset)]


@events.init.add_listener
def _init(environment, **_kw):
    opts = environment.parsed_options
    if opts is None:
        return
    host = urlparse(environment.host or "").hostname
    if host not in LOOPBACK and not opts.bench_allow_remote:
        print(f"locustfile: refusing host {environment.host!r}: loopback only (127.0.0.1, localhost, ::1); "
              "pass --bench-allow-remote to load-test another machine", file=sys.stderr)
        sys.exit(2)
    PROMPTS[:] = _load_prompts(opts.bench_dataset)
    REQUESTS.open(opts.bench_requests_log)
    ChatUser.tasks = [ChatUser.chat] * max(opts.bench_plain_weight, 0) + [ChatUser.chat_stream] * max(
        opts.bench_stream_weight, 0)


@events.test_start.add_listener
def _start(environment, **_kw):
    TALLY.reset()
    TALLY.t0 = time.time()


@events.test_stop.add_listener
def _stop(environment, **_kw):
    TALLY.t1 = time.time()
    REQUESTS.close()
    opts = environment.parsed_options
    elapsed = max(TALLY.t1 - (TALLY.t0 or TALLY.t1), 1e-9)
    stats = environment.stats.total
    summary = {
        "host": environment.host,
        "requests": stats.num_requests,
        "failures": stats.num_failures,
        "latency_p50_s": _pct(TALLY.latency, 50),
        "latency_p95_s": _pct(TALLY.latency, 95),
        "ttft_p50_s": _pct(TALLY.ttft, 50),
        "ttft_p95_s": _pct(TALLY.ttft, 95),
        "output_tokens": TALLY.tokens,
        "elapsed_s": elapsed,
        "output_tok_s": TALLY.tokens / elapsed,
        "users": getattr(opts, "num_users", None),
        "max_tokens": getattr(opts, "bench_max_tokens", None),
    }
    fmt = lambda x: "-" if x is None else f"{x:.3f}"  # noqa: E731
    print(f"[bench] requests {summary['requests']}, failures {summary['failures']}, "
          f"latency p50 {fmt(summary['latency_p50_s'])} s p95 {fmt(summary['latency_p95_s'])} s, "
          f"TTFT p50 {fmt(summary['ttft_p50_s'])} s, output {summary['output_tok_s']:.2f} tok/s "
          f"({summary['output_tokens']} tokens in {elapsed:.1f} s)")
    if opts is not None and opts.bench_summary:
        Path(opts.bench_summary).parent.mkdir(parents=True, exist_ok=True)
        Path(opts.bench_summary).write_text(json.dumps(summary, indent=2))


class ChatUser(HttpUser):
    """One client sending chat completions back to back (no think time: a closed-loop load)."""

    def on_start(self):
        self.stream_session = requests.Session()

    def on_stop(self):
        self.stream_session.close()

    def _body(self, stream: bool) -> dict:
        opts = self.environment.parsed_options
        body = {"model": opts.bench_model, "max_tokens": opts.bench_max_tokens,
                "temperature": opts.bench_temperature, "rid": uuid.uuid4().hex,
                "messages": [{"role": "user", "content": random.choice(PROMPTS or FALLBACK_PROMPTS)}]}
        if stream:
            body.update(stream=True, stream_options={"include_usage": True})
        return body

    @task
    def chat(self):
        body, start, t0 = self._body(False), time.time(), time.perf_counter()
        record = dict(rid=body["rid"], stream=False, start=start, status=None, id=None, error=None, tokens=0)
        with self.client.post(CHAT, json=body, name="chat", catch_response=True) as resp:
            record["status"] = resp.status_code or None  # 0: no HTTP answer (connection refused/reset)
            try:
                if resp.status_code != 200:
                    detail = (resp.text or "")[:200] if resp.status_code else repr(getattr(resp, "error", None))
                    record["error"] = f"HTTP {resp.status_code}: {detail}"
                    resp.failure(record["error"])
                    return
                try:
                    answer = resp.json()
                    record["id"], tokens = answer.get("id"), int(answer["usage"]["completion_tokens"])
                except (ValueError, KeyError, TypeError) as exc:
                    record["error"] = f"no usage in the answer: {exc}"
                    resp.failure(record["error"])
                    return
                record["tokens"] = tokens
                TALLY.add(time.perf_counter() - t0, tokens)
            finally:
                REQUESTS.add(**record, end=time.time())

    @task
    def chat_stream(self):
        # A plain requests session, not locust's (its timing stops at the response headers when
        # streaming): the full response time is reported to locust here, the TTFT kept in TALLY.
        fire = self.environment.events.request.fire
        body, start, t0 = self._body(True), time.time(), time.perf_counter()
        ttft, tokens, exc, status, answer_id = None, None, None, None, None
        try:
            with self.stream_session.post(self.host.rstrip("/") + CHAT, json=body, stream=True,
                                          timeout=600) as resp:
                status = resp.status_code
                if resp.status_code != 200:
                    raise RuntimeError(f"HTTP {resp.status_code}: {resp.text[:200]}")
                for line in resp.iter_lines():
                    if not line.startswith(b"data: ") or line == b"data: [DONE]":
                        continue
                    chunk = json.loads(line[6:])
                    answer_id = answer_id or chunk.get("id")
                    if ttft is None and any((c.get("delta") or {}).get("content") for c in chunk.get("choices", [])):
                        ttft = time.perf_counter() - t0
                    if chunk.get("usage"):
                        tokens = int(chunk["usage"]["completion_tokens"])
            if tokens is None:
                raise RuntimeError("stream ended without a usage chunk")
        except Exception as e:  # noqa: BLE001 - every failure is reported to locust
            exc = e
        latency = time.perf_counter() - t0
        fire(request_type="POST", name="chat stream", response_time=latency * 1000, response_length=tokens or 0,
             exception=exc, context={})
        # cut: the answer began (200, chunks) and the stream broke before its end (the client sees it)
        REQUESTS.add(rid=body["rid"], stream=True, start=start, end=time.time(), status=status, id=answer_id,
                     error=None if exc is None else str(exc)[:300], tokens=tokens or 0,
                     cut=status == 200 and exc is not None)
        if exc is None:
            TALLY.add(latency, tokens, ttft)
