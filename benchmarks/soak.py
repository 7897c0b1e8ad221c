"""Soak: one HASS server on this CPU (shipped draft, CPU tree) under a bounded locust load for
--minutes; every --window seconds: answered/s, p50/p95, failures, the scheduler's RSS and SGLang's
`sglang:spec_accept_length` from /metrics. Ends with the RSS growth after warm-up against
--rss-bound-mib and the accept length's spread.

    .venv/bin/python benchmarks/soak.py --minutes 10 --users 4 --out runs/soak

Writes OUT/requests.jsonl, OUT/samples.jsonl (one line per window), OUT/summary.json, OUT/server.log.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import subprocess
import sys
import time
import urllib.request
from dataclasses import asdict
from pathlib import Path

import psutil
from prometheus_client.parser import text_string_to_metric_families
from transformers import AutoConfig

from hass_sglang.bench.load import exactly_once_problems, phase_stats, phase_table, read_requests
from hass_sglang.drafts import resolve_draft
from hass_sglang.serving.server import ServerSpec, launched_server
from hass_sglang.target import EMBEDDED_TARGET, resolve_target

HERE = Path(__file__).resolve().parent


def gauge(metrics_text: str, name: str) -> float | None:
    for family in text_string_to_metric_families(metrics_text):
        for sample in family.samples:
            if sample.name == name:
                return sample.value
    return None


def scheduler_rss_mib(server_pid: int) -> float | None:
    """RSS of the server's scheduler: the process SGLang titles `sglang::scheduler...`, or the
    launch_server process itself when it runs none (SGLANG_USE_CPU_ENGINE keeps the scheduler in it)."""
    try:
        server = psutil.Process(server_pid)
        for child in server.children(recursive=True):
            with contextlib.suppress(psutil.Error):
                if "sglang::scheduler" in " ".join(child.cmdline()):
                    return child.memory_info().rss / 2**20
        return server.memory_info().rss / 2**20
    except psutil.Error:
        return None


def run(out: Path, minutes: float, users: int, window_s: float, max_tokens: int, temperature: float, draft: str,
        warmup_windows: int, rss_bound_mib: float) -> dict:
    out.mkdir(parents=True, exist_ok=True)
    log, samples_path = out / "requests.jsonl", out / "samples.jsonl"
    log.unlink(missing_ok=True)
    samples_path.unlink(missing_ok=True)
    model = str(resolve_target(EMBEDDED_TARGET))
    spec = ServerSpec(model=model, draft=str(resolve_draft(draft).folder(AutoConfig.from_pretrained(model))),
                      device="cpu")
    duration = minutes * 60
    with launched_server(spec, out / "server.log") as server:
        locust = subprocess.Popen(
            [str(Path(sys.executable).parent / "locust"), "-f", str(HERE / "locustfile.py"), "--headless",
             "--host", server.url, "--users", str(users), "--spawn-rate", str(users),
             "--run-time", f"{int(duration)}s", "--only-summary", "--stop-timeout", "120",
             "--bench-max-tokens", str(max_tokens), "--bench-temperature", str(temperature),
             "--bench-requests-log", str(log), "--bench-summary", str(out / "locust.json")],
            stdout=open(out / "locust.log", "w"), stderr=subprocess.STDOUT)
        started = time.time()
        windows = []
        while locust.poll() is None:
            t0 = time.time()
            remaining = started + duration - t0
            if remaining < 1:
                break
            time.sleep(min(window_s, remaining))
            with urllib.request.urlopen(server.url + "/metrics", timeout=30) as r:
                accept = gauge(r.read().decode(), "sglang:spec_accept_length")
            sample = {"from": t0, "to": time.time(), "rss_mib": scheduler_rss_mib(server.pid),
                      "accept_length": accept}
            windows.append(sample)
            with open(samples_path, "a") as f:
                f.write(json.dumps(sample) + "\n")
            print(f"[soak] +{sample['to'] - started:5.0f} s  scheduler RSS {sample['rss_mib'] or 0:.0f} MiB  "
                  f"accept length {accept}", flush=True)
        rc = locust.wait()
        if windows:  # the last window takes the drain: requests in flight when the load stopped
            windows[-1]["to"] = time.time()
    records = read_requests(log)
    stats = phase_stats(records, [(f"+{w['from'] - started:.0f} s", w["from"], w["to"]) for w in windows])
    rss = [w["rss_mib"] for w in windows if w["rss_mib"] is not None]
    growth = (max(rss[warmup_windows:]) - rss[min(warmup_windows, len(rss)) - 1]) if len(rss) > warmup_windows else None
    accept = [w["accept_length"] for w in windows if w["accept_length"]]
    summary = {"locust_exit": rc, "minutes": minutes, "users": users, "requests": len(records),
               "failures": sum(s.failures for s in stats),
               "exactly_once_problems": exactly_once_problems(records),
               "rss_mib_first": rss[0] if rss else None, "rss_mib_last": rss[-1] if rss else None,
               "rss_growth_after_warmup_mib": growth, "rss_bound_mib": rss_bound_mib,
               "rss_within_bound": growth is not None and growth <= rss_bound_mib,
               "accept_length_min": min(accept, default=None), "accept_length_max": max(accept, default=None),
               "windows": [dict(asdict(s), rss_mib=w["rss_mib"], accept_length=w["accept_length"])
                           for s, w in zip(stats, windows)]}
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    rows = phase_table(stats).splitlines()
    rows[0] += " scheduler RSS MiB | accept length |"
    rows[1] += "---:|---:|"
    rows[2:] = [r + f" {w['rss_mib'] or 0:.0f} | {w['accept_length'] or 0:.2f} |" for r, w in zip(rows[2:], windows)]
    print("\n".join(rows))
    print(f"requests {len(records)}, failures {summary['failures']}, exactly-once problems "
          f"{len(summary['exactly_once_problems'])}; scheduler RSS {summary['rss_mib_first']} -> "
          f"{summary['rss_mib_last']} MiB, growth after {warmup_windows} warm-up windows {growth} MiB "
          f"(bound {rss_bound_mib}, within: {summary['rss_within_bound']}); accept length "
          f"{summary['accept_length_min']} .. {summary['accept_length_max']}")
    return summary


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=Path("runs/soak"))
    ap.add_argument("--minutes", type=float, default=10)
    ap.add_argument("--users", type=int, default=4)
    ap.add_argument("--window", type=float, default=60, help="seconds per sample window")
    ap.add_argument("--max-tokens", type=int, default=64)
    ap.add_argument("--temperature", type=float, default=0.0)
    ap.add_argument("--draft", default="auto")
    ap.add_argument("--warmup-windows", type=int, default=2, help="windows before the RSS baseline")
    ap.add_argument("--rss-bound-mib", type=float, default=64, help="allowed RSS growth after warm-up")
    a = ap.parse_args()
    run(a.out, a.minutes, a.users, a.window, a.max_tokens, a.temperature, a.draft, a.warmup_windows,
        a.rss_bound_mib)


if __name__ == "__main__":
    main()
