"""Fail-over through sglang-router: two HASS replicas on this CPU behind a real `sglang-router`
(loopback), a bounded locust load on the router, one replica killed (SIGKILL to its process group)
mid-run. Prints requests, failures, answered/s, p50/p95 before / during / after the kill, the
exactly-once check (each request answered once, with an answer id no other request got, or failed
visibly to the client: a retryable status, or a stream the killed replica had begun that broke;
the replicas' access logs count the answers begun, which equal answered + cut when nothing ran
twice) and what the router says about its workers.

    .venv/bin/python benchmarks/router_failover.py --users 4 --before 40 --during 30 --after 60 \
        --out runs/failover

Writes OUT/requests.jsonl (one line per request), OUT/summary.json and OUT/router.log,
OUT/replica-{a,b}.log. The router retries a failed request on the other worker
(--retry-max-retries) and stops sending to a worker its health checks fail.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from dataclasses import asdict
from pathlib import Path

from transformers import AutoConfig

from hass_sglang.bench.load import exactly_once_problems, phase_stats, phase_table, read_requests
from hass_sglang.drafts import resolve_draft
from hass_sglang.serving.server import ServerSpec, free_port, launched_server, stop_process_group
from hass_sglang.target import EMBEDDED_TARGET, resolve_target

HERE = Path(__file__).resolve().parent
# uvicorn's access log line of an answer (a stream's when it begins)
SERVED_LINE = '"POST /v1/chat/completions HTTP/1.1" 200'


def router_argv(worker_urls: list[str], port: int, prometheus_port: int) -> list[str]:
    return [sys.executable, "-m", "sglang_router.launch_router", "--host", "127.0.0.1", "--port", str(port),
            "--worker-urls", *worker_urls, "--policy", "round_robin",
            "--health-check-interval-secs", "2", "--health-failure-threshold", "2",
            "--retry-max-retries", "3", "--request-timeout-secs", "600",
            "--prometheus-host", "127.0.0.1", "--prometheus-port", str(prometheus_port)]


def get_json(url: str, timeout: float = 10):
    with urllib.request.urlopen(url, timeout=timeout) as r:
        return json.loads(r.read().decode() or "null")


@contextlib.contextmanager
def running_router(worker_urls: list[str], log_path: Path, timeout_s: float = 120):
    port, prom = free_port(), free_port()
    with open(log_path, "w") as log:
        proc = subprocess.Popen(router_argv(worker_urls, port, prom), stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True)
        url = f"http://127.0.0.1:{port}"
        try:
            deadline = time.time() + timeout_s
            while True:
                if proc.poll() is not None:
                    raise RuntimeError(f"sglang-router exited with {proc.returncode}; log: {log_path}")
                with contextlib.suppress(OSError, ValueError):
                    if get_json(url + "/v1/models", timeout=5):
                        break
                if time.time() > deadline:
                    raise RuntimeError(f"sglang-router not ready after {timeout_s}s; log: {log_path}")
                time.sleep(1)
            yield url, f"http://127.0.0.1:{prom}"
        finally:
            stop_process_group(proc, 20)


def run(out: Path, users: int, before: float, during: float, after: float, max_tokens: int,
        temperature: float, draft: str) -> dict:
    out.mkdir(parents=True, exist_ok=True)
    log = out / "requests.jsonl"
    log.unlink(missing_ok=True)
    model = str(resolve_target(EMBEDDED_TARGET))
    draft_path = str(resolve_draft(draft).folder(AutoConfig.from_pretrained(model)))
    spec = ServerSpec(model=model, draft=draft_path, device="cpu")
    with contextlib.ExitStack() as stack:
        a = stack.enter_context(launched_server(spec, out / "replica-a.log"))
        b = stack.enter_context(launched_server(spec, out / "replica-b.log"))
        router, prometheus = stack.enter_context(running_router([a.url, b.url], out / "router.log"))
        workers_before = get_json(router + "/workers")
        locust = subprocess.Popen(
            [str(Path(sys.executable).parent / "locust"), "-f", str(HERE / "locustfile.py"), "--headless",
             "--host", router, "--users", str(users), "--spawn-rate", str(users),
             "--run-time", f"{int(before + during + after)}s", "--only-summary", "--stop-timeout", "120",
             "--bench-max-tokens", str(max_tokens), "--bench-temperature", str(temperature),
             "--bench-requests-log", str(log), "--bench-summary", str(out / "locust.json")],
            stdout=open(out / "locust.log", "w"), stderr=subprocess.STDOUT)
        started = time.time()
        time.sleep(before)
        killed_at = time.time()
        os.killpg(a.pid, signal.SIGKILL)  # the whole replica: launch_server, scheduler, detokenizer
        print(f"[failover] killed replica {a.url} (pid {a.pid}) at +{killed_at - started:.1f} s", flush=True)
        time.sleep(min(during, 30))
        workers_after = get_json(router + "/workers")
        rc = locust.wait()
        ended = time.time()
        with contextlib.suppress(OSError):
            with urllib.request.urlopen(prometheus + "/metrics", timeout=10) as r:
                (out / "router-metrics.txt").write_text(r.read().decode())
    records = read_requests(log)
    # Work the replicas finished (their access logs): equal to the answers the clients got when the
    # router never ran one request to completion twice.
    served = sum((out / f"replica-{x}.log").read_text().count(SERVED_LINE) for x in "ab")
    answered = sum(1 for r in records if r.get("status") == 200 and not r.get("error"))
    # Streams the killed replica was answering: already begun, so not replayable by the router;
    # they break, the client sees it (no final chunk) and retries.
    cut = [{"rid": r["rid"], "started_s": r["start"] - killed_at, "ended_s": r["end"] - killed_at}
           for r in records if r.get("cut")]
    phases = [("before kill", started, killed_at), ("during (kill + %ds)" % during, killed_at, killed_at + during),
              ("after", killed_at + during, max(ended, killed_at + during))]
    stats = phase_stats(records, phases)
    summary = {"locust_exit": rc, "replicas": [a.url, b.url], "killed": a.url, "router": router,
               "workers_before": workers_before, "workers_after": workers_after,
               "phases": [asdict(s) for s in stats], "requests": len(records),
               "exactly_once_problems": exactly_once_problems(records, ids_echo_rid=False),
               "answered": answered, "served_by_replicas": served, "cut_streams": cut, "killed_at": killed_at,
               "statuses": sorted({str(r.get("status")) for r in records})}
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    print(phase_table(stats))
    print(f"requests {len(records)} (answered {answered}, streams cut by the kill {len(cut)}, "
          f"answers begun by the replicas {served}), "
          f"statuses {summary['statuses']}, "
          f"exactly-once problems: {summary['exactly_once_problems'] or 'none'}")
    print("router workers after the kill:", json.dumps(workers_after))
    return summary


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=Path("runs/failover"))
    ap.add_argument("--users", type=int, default=4)
    ap.add_argument("--before", type=float, default=40, help="seconds of load before the kill")
    ap.add_argument("--during", type=float, default=30, help="seconds counted as 'during' after the kill")
    ap.add_argument("--after", type=float, default=60)
    ap.add_argument("--max-tokens", type=int, default=16)
    ap.add_argument("--temperature", type=float, default=0.0)
    ap.add_argument("--draft", default="auto")
    a = ap.parse_args()
    run(a.out, a.users, a.before, a.during, a.after, a.max_tokens, a.temperature, a.draft)


if __name__ == "__main__":
    main()
