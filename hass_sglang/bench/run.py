"""One benchmark run: every method (one at a time; `--launch` servers are started and stopped in
turn), every (T, concurrency, dataset) cell, the manifest kept up to date, the report written at the
end — also after Ctrl-C or an error, from whatever was measured."""

from __future__ import annotations

import asyncio
import contextlib
import json
import sys
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from hass_sglang.bench import results
from hass_sglang.bench.launch import LaunchOptions, LaunchSpec, launched
from hass_sglang.bench.questions import BenchDataset
from hass_sglang.bench.runner import Endpoint, RequestSettings, pending, run_method
from hass_sglang.errors import HassError

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
