"""Serving under load, run as users run the benchmark scripts:

- fail-over through a real sglang-router (benchmarks/router_failover.py): two HASS CPU replicas on
  loopback, a bounded locust load, one replica SIGKILLed mid-run. Asserted: every request answered
  exactly once or failed visibly (a retryable status; a stream the killed replica had begun
  breaks, and only those), the replicas began exactly as many answers as the clients got or saw
  cut (nothing ran twice), answers keep coming after the kill, and the router reports the killed
  worker unhealthy and the other healthy.
(benchmarks/soak.py, the 10-minute soak, is a benchmark, not a test: its numbers are in docs/serving.md.)
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

