"""Fail-over through a real sglang-router: two HASS CPU replicas on loopback, a bounded locust
load, one replica SIGKILLed mid-run (benchmarks/router_failover.py, run as users run it).

Asserted: every request answered exactly once or failed with a retryable status, the replicas
finished exactly as many requests as the clients got answers (nothing ran twice), answers keep
coming after the kill, and the router reports the killed worker unhealthy and the other healthy.
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
    assert summary["served_by_replicas"] == summary["answered"] > 0
    before, during, after = summary["phases"]
    assert before["requests"] > 0 and after["requests"] > 0 and after["failures"] == 0
    health = {w["url"]: w["is_healthy"] for w in summary["workers_after"]["workers"]}
    assert health == {summary["killed"]: False, next(u for u in summary["replicas"] if u != summary["killed"]): True}
    assert all(w["is_healthy"] for w in summary["workers_before"]["workers"])
    assert "| before kill |" in run.stdout and "| after |" in run.stdout
