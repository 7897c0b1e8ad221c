"""Serving under load, run as users run the benchmark scripts:

- fail-over through a real sglang-router (benchmarks/router_failover.py): two HASS CPU replicas on
  loopback, a bounded locust load, one replica SIGKILLed mid-run. Asserted: every request answered
  exactly once or failed visibly (a retryable status; a stream the killed replica had begun
  breaks, and only those), the replicas began exactly as many answers as the clients got or saw
  cut (nothing ran twice), answers keep coming after the kill, and the router reports the killed
  worker unhealthy and the other healthy.
- the soak script (benchmarks/soak.py) on a short run: windows, scheduler RSS, accept length.
"""

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[1]


def test_a_killed_replica_fails_over_without_losing_or_repeating_a_request(tmp_path):
    out = tmp_path / "failover"
    run = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "router_failover.py"), "--users", "3",
                          "--before", "25", "--during", "20", "--after", "25", "--max-tokens", "16", "--out", str(out)],
                         capture_output=True, text=True, timeout=900)
    print(run.stdout[-4000:])
    assert run.returncode == 0, run.stderr[-4000:]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["exactly_once_problems"] == []
    assert summary["answered"] > 0
    assert summary["served_by_replicas"] == summary["answered"] + len(summary["cut_streams"])  # nothing ran twice
    # The only streams cut are the ones the killed replica was answering when it died.
    assert len(summary["cut_streams"]) <= 3
    assert all(c["started_s"] < 0 <= c["ended_s"] < 20 for c in summary["cut_streams"]), summary["cut_streams"]
    before, during, after = summary["phases"]
    assert before["requests"] > 0 and after["requests"] > 0 and after["failures"] == 0
    health = {w["url"]: w["is_healthy"] for w in summary["workers_after"]["workers"]}
    assert health == {summary["killed"]: False, next(u for u in summary["replicas"] if u != summary["killed"]): True}
    assert all(w["is_healthy"] for w in summary["workers_before"]["workers"])
    assert "| before kill |" in run.stdout and "| after |" in run.stdout


def test_soak_script_reports_windows_memory_and_accept_length(tmp_path):
    """benchmarks/soak.py, 30 s instead of 10 min: straight to SGLang, whose answers carry the
    request's own rid, so exactly-once is checked on ids too."""
    out = tmp_path / "soak"
    run = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "soak.py"), "--minutes", "0.5", "--users", "2",
                          "--window", "10", "--max-tokens", "16", "--warmup-windows", "1", "--out", str(out)],
                         capture_output=True, text=True, timeout=600)
    print(run.stdout[-3000:])
    assert run.returncode == 0, run.stderr[-4000:]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["requests"] > 0 and summary["failures"] == 0 and summary["exactly_once_problems"] == []
    assert len(summary["windows"]) == 3 and sum(w["requests"] for w in summary["windows"]) == summary["requests"]
    # SGLang's gauge starts at 0 until its first decode log interval
    assert all(w["rss_mib"] > 100 and w["accept_length"] is not None for w in summary["windows"])
    assert summary["windows"][-1]["accept_length"] >= 1.0
    assert summary["rss_growth_after_warmup_mib"] is not None
