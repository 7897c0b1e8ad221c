"""One benchmark run: every method in turn, every (T, concurrency, dataset) cell, resumable.

`run_benchmark` takes the methods one at a time (a `--launch` server is started and stopped around
its method), skips what the raw records already hold, keeps the manifest up to date and writes the
report at the end, also after Ctrl-C or an error, from whatever was measured. Per method the
prefix cache is flushed before each (T, concurrency); per question every turn but the last builds
context (answered, unmeasured) and the last is the measured request. HTTP errors of one request
(a prompt over the context length, ...) are recorded on it and the run goes on; an endpoint that
stays unreachable stops the run with `EndpointDownError`.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import sys
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from hass_sglang.bench import results
from hass_sglang.bench.client import (
    Endpoint,
    RequestSettings,
    chat_once,
    check_endpoint,
    flush_prefix_cache,
    make_client,
    warm_up,
)
from hass_sglang.bench.launch import LaunchOptions, LaunchSpec, launched
from hass_sglang.bench.questions import BenchDataset
from hass_sglang.bench.records import finished_keys, make_record, raw_path, read_records, temperature_tag
from hass_sglang.errors import EndpointDownError, HassError
from hass_sglang.eval_sets import Question
from hass_sglang.io import JsonlWriter


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
        return make_record(method, dataset, question, temperature, concurrency, None, context,
                           error=f"HTTP {exc.status_code}: {exc.message}")
    return make_record(method, dataset, question, temperature, concurrency, ans, context)


async def run_cell(client, method: str, dataset: BenchDataset, temperature: float, concurrency: int,
                   settings: RequestSettings, writer: JsonlWriter, done: set[tuple[str, str]],
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
                writer = JsonlWriter(path)
                try:
                    sent[str(path)] = 0
                    for ds in datasets:
                        sent[str(path)] += await run_cell(client, endpoint.name, ds, t, c, settings, writer, done, bar)
                finally:
                    writer.close()
    return {"sent": sent, "prefix_cache_flushed": flushed}


SERVER_INFO_KEYS = ("model_path", "served_model_name", "device", "dtype", "tp_size", "speculative_algorithm",
                    "speculative_draft_model_path", "speculative_num_steps", "speculative_eagle_topk",
                    "speculative_num_draft_tokens", "max_running_requests", "version")


@dataclass(frozen=True)
class MethodSpec:
    name: str
    url: str | None = None
    launch: LaunchSpec | None = None


def parse_endpoint(arg: str) -> MethodSpec:
    name, sep, url = arg.partition("=")
    if not sep or not name or not url.startswith(("http://", "https://")):
        raise HassError(f"bad endpoint {arg!r}: expected NAME=http://HOST:PORT")
    return MethodSpec(name, url=url)


def server_info(url: str) -> dict:
    """The SGLang settings that identify a method (best effort: other servers have no /server_info)."""
    with contextlib.suppress(Exception), urllib.request.urlopen(url.rstrip("/").removesuffix("/v1") + "/server_info",
                                                               timeout=10) as r:
        info = json.load(r)
        return {k: info[k] for k in SERVER_INFO_KEYS if k in info}
    return {}


def _method_entry(spec: MethodSpec, opts: LaunchOptions | None) -> dict:
    entry = {"name": spec.name, "url": spec.url}
    if spec.launch is not None and opts is not None:
        entry["launch"] = {"draft": spec.launch.draft, "model": opts.model, "device": opts.device,
                           "tree": list(opts.tree) if opts.tree else None,
                           "args": [*opts.launch_args, *opts.method_args.get(spec.name, ())]}
    return entry


def run_benchmark(out: Path, methods: list[MethodSpec], datasets: list[BenchDataset], temperatures: list[float],
                  concurrencies: list[int], settings: RequestSettings, baseline: str, mtp: str | None,
                  launch_opts: LaunchOptions | None = None, warmup: int = 1, show_progress: bool = True,
                  plots: bool = True, argv: list[str] | None = None) -> dict:
    """Measure, resumably, then write summary.json / table.md / plots; returns the summary."""
    out = Path(out)
    names = [m.name for m in methods]
    if len(set(names)) != len(names):
        raise HassError(f"method names must be unique: {names}")
    if baseline not in names:
        raise HassError(f"baseline method {baseline!r} is not among the methods {names}")
    if mtp is not None and mtp not in names:
        raise HassError(f"MTP method {mtp!r} is not among the methods {names}")
    if any(m.launch is not None for m in methods):
        launch_opts = launch_opts or LaunchOptions()
        if launch_opts.log_dir is None:
            launch_opts = LaunchOptions(**{**launch_opts.__dict__, "log_dir": out / "logs"})
    manifest = results.merge_manifest(results.load_manifest(out), results.new_manifest(
        [_method_entry(m, launch_opts) for m in methods], datasets, temperatures, concurrencies,
        settings.identity(), baseline, mtp, argv if argv is not None else sys.argv))
    entries = {m["name"]: m for m in manifest["methods"]}
    manifest.update(status="running", error=None)
    results.write_manifest(out, manifest)
    try:
        for spec in methods:
            if not pending(out, spec.name, datasets, temperatures, concurrencies):
                continue  # resumed: this method is complete, do not start its server
            with launched(spec.launch, launch_opts) if spec.launch else contextlib.nullcontext(spec.url) as url:
                entries[spec.name].update(url=url, server_info=server_info(url))
                results.write_manifest(out, manifest)
                done = asyncio.run(run_method(Endpoint(spec.name, url), datasets, temperatures, concurrencies,
                                              settings, out, warmup=warmup, show_progress=show_progress))
                entries[spec.name]["prefix_cache_flushed"] = done["prefix_cache_flushed"]
        manifest["status"] = "complete"
    except KeyboardInterrupt:
        manifest["status"] = "interrupted"
        raise
    except BaseException as exc:
        manifest.update(status="failed", error=f"{type(exc).__name__}: {exc}")
        raise
    finally:
        results.write_manifest(out, manifest)
        if manifest["status"] != "complete":
            with contextlib.suppress(Exception):  # report what was measured; keep the original error
                results.write_report(out, plots=plots)
    return results.write_report(out, plots=plots)
