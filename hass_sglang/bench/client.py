"""One chat request to an OpenAI-compatible endpoint, measured (the `openai` client).

Streaming by default, for the time to first token. Speculative statistics come from SGLang's
per-request `return_spec_tokens_details` extension: the response (or, streaming, a final chunk
with no choices) carries `sglext.spec_tokens_details` with `spec_verify_ct` and
`spec_accept_length`. SGLang's accept length = completion tokens / verify steps (the token sampled
at prefill is counted among the completion tokens); it is seed 002's τ, and not the reference
decoder's tau, which also counts the prefill forward. Endpoints without the extension (vanilla
servers, other engines) give accept_length = None.

Connection failures are retried by the client (bounded, exponential back-off);
`EndpointDownError` names the endpoint when it stays unreachable.
"""

from __future__ import annotations

import asyncio
import time
import urllib.request
from dataclasses import dataclass

from hass_sglang.errors import EndpointDownError, HassError


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


@dataclass
class Answer:
    text: str
    output_tokens: int
    latency_s: float
    ttft_s: float | None
    t_start: float
    t_end: float
    finish_reason: str | None
    verify_ct: int | None = None  # SGLang's spec_verify_ct (None without speculation)
    reported_accept_length: float | None = None  # SGLang's spec_accept_length, as reported
    # per output token (token text, logprob, [(alternative text, logprob), ...]) when asked for
    logprobs: list | None = None

    @property
    def tok_s(self) -> float:
        return self.output_tokens / self.latency_s if self.latency_s > 0 else 0.0

    @property
    def accept_length(self) -> float | None:
        """Completion tokens per verify step (SGLang's accept length), from the token counts."""
        if self.verify_ct:
            return self.output_tokens / self.verify_ct
        return None


def _spec_details(obj) -> dict | None:
    ext = (obj.model_extra or {}).get("sglext") if obj is not None else None
    details = ext.get("spec_tokens_details") if isinstance(ext, dict) else None
    if isinstance(details, list):  # n > 1; we always send n = 1
        details = details[0] if details else None
    return details if isinstance(details, dict) else None


def make_client(endpoint: Endpoint, settings: RequestSettings):
    import openai

    return openai.AsyncOpenAI(base_url=endpoint.api_base, api_key="none", timeout=settings.timeout_s,
                              max_retries=settings.retries)


async def chat_once(client, messages: list[dict], temperature: float, settings: RequestSettings,
                    top_logprobs: int | None = None) -> Answer:
    """One chat completion; streaming measures the time to the first content token. `top_logprobs`
    (non-streaming): each output token's logprob and that many alternatives come back too."""
    args = dict(model=settings.model, messages=messages, max_tokens=settings.max_tokens, temperature=temperature,
                extra_body={"return_spec_tokens_details": True})
    if top_logprobs is not None:
        if settings.stream:
            raise HassError("top_logprobs is only collected from non-streaming requests")
        args.update(logprobs=True, top_logprobs=top_logprobs)
    logprobs = None
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
        if top_logprobs is not None and resp.choices[0].logprobs is not None:
            logprobs = [(t.token, t.logprob, [(a.token, a.logprob) for a in t.top_logprobs or []])
                        for t in resp.choices[0].logprobs.content or []]
    latency = time.perf_counter() - t0
    if usage is None:
        raise HassError("the endpoint returned no token usage (stream_options.include_usage unsupported?)")
    verify = int(details["spec_verify_ct"]) if details and details.get("spec_verify_ct") else None
    return Answer(text="".join(parts), output_tokens=int(usage.completion_tokens), latency_s=latency, ttft_s=ttft,
                  t_start=t_start, t_end=t_start + latency, finish_reason=finish, verify_ct=verify,
                  reported_accept_length=details.get("spec_accept_length") if verify else None, logprobs=logprobs)


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


def ask(urls: list[str], question: str, max_tokens: int, temperature: float = 0.0, timeout_s: float = 600.0,
        rounds: int = 1) -> list[list[Answer]]:
    """`hass serve --ask`: the question `rounds` times to each server, after a short untimed request to
    each (the first request on a fresh server pays one-time costs: kernel selection, compilation).
    With several servers the requests alternate between them and the order flips every round, as in
    `hass calibrate`, so that servers running side by side see the same machine load. Each timed
    request starts from an empty prefix cache (a repeated question would skip its prefill). Returns
    the answers per server, in `urls` order."""
    if rounds < 1:
        raise HassError(f"ask: rounds must be >= 1, got {rounds}")
    settings = RequestSettings(max_tokens=max_tokens, stream=False, timeout_s=timeout_s, retries=0)
    warm = RequestSettings(max_tokens=4, stream=False, timeout_s=timeout_s, retries=0)

    async def run() -> list[list[Answer]]:
        endpoints = [Endpoint(f"ask{i}", u) for i, u in enumerate(urls)]
        clients = [make_client(e, settings) for e in endpoints]
        try:
            for c in clients:
                await chat_once(c, [{"role": "user", "content": "Hi"}], 0.0, warm)
            out: list[list[Answer]] = [[] for _ in urls]
            for r in range(rounds):
                order = list(range(len(urls)))
                for i in (order if r % 2 == 0 else order[::-1]):
                    if not await asyncio.to_thread(flush_prefix_cache, endpoints[i]):
                        raise HassError(f"{urls[i]}/flush_cache failed: the question would reuse its earlier prefill")
                    out[i].append(await chat_once(clients[i], [{"role": "user", "content": question}],
                                                  temperature, settings))
            return out
        finally:
            for c in clients:
                await c.close()

    return asyncio.run(run())
