"""Send benchmark questions to OpenAI-compatible endpoints and record every request.

One raw JSONL per (method, temperature, concurrency) under `<out>/raw/<method>/t<T>_c<C>.jsonl`,
one line per measured request, appended and flushed as each request finishes: a re-run skips the
(dataset, question_id) pairs already answered without error, and Ctrl-C (or a crash) leaves every
written line valid. Requests go through the `openai` client (chat completions, streaming by
default for the time to first token). Speculative statistics come from SGLang's per-request
`return_spec_tokens_details` extension: the response (or, streaming, a final chunk with no
choices) carries `sglext.spec_tokens_details` with `spec_verify_ct` and `spec_accept_length`
(= completion_tokens / spec_verify_ct, SGLang's tau). Endpoints without it (vanilla servers,
other engines) give tau = null.

Connection failures are retried by the client (bounded, exponential back-off); when an endpoint
stays unreachable the run stops with `EndpointDownError` naming the method and URL. Other HTTP
errors (a prompt over the context length, ...) are recorded on the request and the run goes on.
"""

from __future__ import annotations

import asyncio
import json
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from hass_sglang.bench.questions import BenchDataset
from hass_sglang.errors import HassError
from hass_sglang.eval_sets import Question


class EndpointDownError(HassError):
    """An endpoint did not answer after the bounded retries (the message names method and URL)."""


@dataclass(frozen=True)
class Endpoint:
    name: str
    url: str  # server root (http://host:port) or its OpenAI base (.../v1)

    @property
    def api_base(self) -> str:
        url = self.url.rstrip("/")
        return url if url.endswith("/v1") else url + "/v1"


@dataclass(frozen=True)
class RequestSettings:
    max_tokens: int = 128
    stream: bool = True
    model: str = "default"
    timeout_s: float = 600.0
    retries: int = 3  # client retries on connection errors / 5xx before EndpointDownError

    def identity(self) -> dict:
        """What must not change between a run and its resumption (results would not be comparable)."""
        return {"max_tokens": self.max_tokens, "stream": self.stream, "model": self.model}


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


def _spec_details(obj) -> dict | None:
    ext = (obj.model_extra or {}).get("sglext") if obj is not None else None
    details = ext.get("spec_tokens_details") if isinstance(ext, dict) else None
    if isinstance(details, list):  # n > 1; we always send n = 1
        details = details[0] if details else None
    return details if isinstance(details, dict) else None


@dataclass
class Answer:
    text: str
    output_tokens: int
    latency_s: float
    ttft_s: float | None
    t_start: float
    t_end: float
    finish_reason: str | None
    verify_ct: int | None = None
    accept_length: float | None = None

    @property
    def tau(self) -> float | None:
        if self.verify_ct:
            return self.output_tokens / self.verify_ct
        return None


async def chat_once(client, messages: list[dict], temperature: float, settings: RequestSettings) -> Answer:
    """One chat completion; streaming measures the time to the first content token."""
    args = dict(model=settings.model, messages=messages, max_tokens=settings.max_tokens, temperature=temperature,
                extra_body={"return_spec_tokens_details": True})
    t_start, t0 = time.time(), time.perf_counter()
    ttft, details, usage, finish, parts = None, None, None, None, []
    if settings.stream:
        stream = await client.chat.completions.create(stream=True, stream_options={"include_usage": True}, **args)
        async for chunk in stream:
            details = _spec_details(chunk) or details
            usage = chunk.usage or usage
            for choice in chunk.choices:
                if choice.delta and choice.delta.content:
                    if ttft is None:
                        ttft = time.perf_counter() - t0
                    parts.append(choice.delta.content)
                finish = choice.finish_reason or finish
    else:
        resp = await client.chat.completions.create(**args)
        details, usage = _spec_details(resp), resp.usage
        parts.append(resp.choices[0].message.content or "")
        finish = resp.choices[0].finish_reason
    latency = time.perf_counter() - t0
    if usage is None:
        raise HassError("the endpoint returned no token usage (stream_options.include_usage unsupported?)")
    verify = int(details["spec_verify_ct"]) if details and details.get("spec_verify_ct") else None
    return Answer(text="".join(parts), output_tokens=int(usage.completion_tokens), latency_s=latency, ttft_s=ttft,
                  t_start=t_start, t_end=t_start + latency, finish_reason=finish, verify_ct=verify,
                  accept_length=details.get("spec_accept_length") if verify else None)


async def ask(client, method: str, dataset: str, question: Question, temperature: float, concurrency: int,
              settings: RequestSettings) -> dict:
    """Answer every turn in order, each with the previous answers in the history; record the last."""
    import openai

    messages, context = [], []
    try:
        for i, turn in enumerate(question.turns):
            messages.append({"role": "user", "content": turn})
            ans = await chat_once(client, messages, temperature, settings)
            if i < len(question.turns) - 1:
                context.append({"output_tokens": ans.output_tokens, "latency_s": round(ans.latency_s, 4)})
                messages.append({"role": "assistant", "content": ans.text})
    except openai.APIConnectionError as exc:  # includes timeouts; the client already retried
        raise EndpointDownError(
            f"method {method!r}: {client.base_url} did not answer after {settings.retries + 1} attempts "
            f"({type(exc).__name__}: {exc}); is the server up? Finished requests are kept: re-run to resume"
        ) from exc
    except openai.APIStatusError as exc:
        return _record(method, dataset, question, temperature, concurrency, None, context,
                       error=f"HTTP {exc.status_code}: {exc.message}")
    return _record(method, dataset, question, temperature, concurrency, ans, context)


def _record(method, dataset, question, temperature, concurrency, ans: Answer | None, context, error=None) -> dict:
    rec = {"method": method, "dataset": dataset, "question_id": question.question_id, "temperature": temperature,
           "concurrency": concurrency, "turn": len(question.turns), "context_turns": context, "error": error}
    if ans is not None:
        rec.update(output_tokens=ans.output_tokens, latency_s=round(ans.latency_s, 5),
                   ttft_s=None if ans.ttft_s is None else round(ans.ttft_s, 5),
                   t_start=round(ans.t_start, 5), t_end=round(ans.t_end, 5), finish_reason=ans.finish_reason,
                   verify_ct=ans.verify_ct, accept_length=ans.accept_length,
                   tau=None if ans.tau is None else round(ans.tau, 5), text_chars=len(ans.text))
    return rec


def make_client(endpoint: Endpoint, settings: RequestSettings):
    import openai

    return openai.AsyncOpenAI(base_url=endpoint.api_base, api_key="none", timeout=settings.timeout_s,
                              max_retries=settings.retries)


async def check_endpoint(endpoint: Endpoint, settings: RequestSettings) -> list[str]:
    """Model ids the endpoint serves; EndpointDownError after the bounded retries."""
    import openai

    async with make_client(endpoint, settings) as client:
        try:
            return [m.id async for m in client.models.list()]
        except openai.APIConnectionError as exc:
            raise EndpointDownError(
                f"method {endpoint.name!r}: {endpoint.api_base} is not reachable after {settings.retries + 1} "
                f"attempts ({type(exc).__name__}: {exc})"
            ) from exc
        except openai.APIStatusError as exc:
            raise EndpointDownError(f"method {endpoint.name!r}: {endpoint.api_base}/models answered "
                                    f"HTTP {exc.status_code}: {exc.message}") from exc


async def run_cell(client, method: str, dataset: BenchDataset, temperature: float, concurrency: int,
                   settings: RequestSettings, writer: RecordWriter, done: set[tuple[str, str]],
                   progress=None) -> int:
    """Send the dataset's unfinished questions with at most `concurrency` in flight; returns how many."""
    todo = [q for q in dataset.questions if (dataset.name, q.question_id) not in done]
    if progress is not None:
        progress.reset(total=len(dataset.questions))
        progress.update(len(dataset.questions) - len(todo))
        progress.set_description(f"{method} T={temperature_tag(temperature)} c={concurrency} {dataset.name}")
    sem = asyncio.Semaphore(concurrency)

    async def one(q: Question) -> dict:
        async with sem:
            return await ask(client, method, dataset.name, q, temperature, concurrency, settings)

    tasks = [asyncio.ensure_future(one(q)) for q in todo]
    try:
        for fut in asyncio.as_completed(tasks):
            rec = await fut
            writer.write(rec)
            if progress is not None:
                progress.update(1)
    finally:
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    return len(todo)


def flush_prefix_cache(endpoint: Endpoint) -> bool:
    """Empty SGLang's radix (prefix) cache, so a cell does not reuse the prompts of the previous
    cell (same questions at another T or concurrency); False where the server has no /flush_cache."""
    root = endpoint.api_base.removesuffix("/v1")
    try:
        req = urllib.request.Request(root + "/flush_cache?timeout=30", data=b"", method="POST")
        with urllib.request.urlopen(req, timeout=60) as r:
            return r.status == 200
    except OSError:
        return False


async def warm_up(endpoint: Endpoint, settings: RequestSettings, n: int) -> None:
    """Untimed requests first: the first call on a fresh server pays compilation and allocation."""
    short = RequestSettings(max_tokens=8, stream=False, model=settings.model, timeout_s=settings.timeout_s,
                            retries=settings.retries)
    async with make_client(endpoint, settings) as client:
        for _ in range(n):
            await chat_once(client, [{"role": "user", "content": "Say hello."}], 0.0, short)


def pending(out: Path, method: str, datasets: list[BenchDataset], temperatures: list[float],
            concurrencies: list[int]) -> int:
    """How many requests of this method are not finished yet (0: nothing to send, no server needed)."""
    n = 0
    for t in temperatures:
        for c in concurrencies:
            done = finished_keys(read_records(raw_path(out, method, t, c)))
            n += sum((d.name, q.question_id) not in done for d in datasets for q in d.questions)
    return n


async def run_method(endpoint: Endpoint, datasets: list[BenchDataset], temperatures: list[float],
                     concurrencies: list[int], settings: RequestSettings, out: Path, warmup: int = 1,
                     show_progress: bool = True) -> dict:
    """Every (temperature, concurrency, dataset) cell of one method, the prefix cache flushed before
    each (T, concurrency); returns {"sent": {raw file: requests sent}, "prefix_cache_flushed": bool}."""
    from tqdm import tqdm

    todo = {(t, c): (raw_path(out, endpoint.name, t, c), finished_keys(read_records(raw_path(out, endpoint.name, t, c))))
            for t in temperatures for c in concurrencies}
    if not pending(out, endpoint.name, datasets, temperatures, concurrencies):
        return {"sent": {str(p): 0 for p, _ in todo.values()}, "prefix_cache_flushed": None}
    await check_endpoint(endpoint, settings)
    if warmup:
        await warm_up(endpoint, settings, warmup)
    sent, flushed = {}, True
    async with make_client(endpoint, settings) as client:
        with tqdm(total=0, disable=not show_progress, unit="q", dynamic_ncols=True) as bar:
            for (t, c), (path, done) in todo.items():
                flushed = await asyncio.to_thread(flush_prefix_cache, endpoint) and flushed
                writer = RecordWriter(path)
                try:
                    sent[str(path)] = 0
                    for ds in datasets:
                        sent[str(path)] += await run_cell(client, endpoint.name, ds, t, c, settings, writer, done, bar)
                finally:
                    writer.close()
    return {"sent": sent, "prefix_cache_flushed": flushed}
