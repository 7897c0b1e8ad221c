"""`hass doctor` (= scripts/gpu_check.sh) on this CPU: the check a GPU host runs first, here with
the CPU engine and in bf16, the dtype GPUs serve. Plain, HASS (EAGLE-2-shaped draft) and HASS
(Llama MTP draft) servers, one at a time; T=0 answers against plain SGLang; accept length."""

import json
import os
import subprocess
import sys

import pytest

pytestmark = pytest.mark.slow


def test_doctor_serves_plain_hass_and_mtp_in_bf16_and_passes(tmp_path):
    out = tmp_path / "doctor.json"
    r = subprocess.run([sys.executable, "-m", "hass_sglang.cli", "doctor", "--per-set", "1", "--max-tokens", "24",
                        "--out", str(out), "--log-dir", str(tmp_path / "logs")],
                       capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"}, timeout=1500)
    print(r.stdout[-4000:])
    assert r.returncode == 0, r.stdout[-4000:] + r.stderr[-4000:]
    assert "doctor: all checks passed" in r.stdout and "| hass | EAGLE |" in r.stdout
    report = json.loads(out.read_text())
    assert report["failures"] == []
    servers = report["servers"]
    assert set(servers) == {"plain", "hass", "mtp"}
    for name, s in servers.items():
        assert s["error"] is None and s["server_info"]["dtype"] == "bfloat16" and len(s["texts"]) == 6, name
    assert servers["plain"]["server_info"]["speculative_algorithm"] in (None, "NONE")
    for name in ("hass", "mtp"):
        info = servers[name]["server_info"]
        assert info["speculative_algorithm"] == "EAGLE" and servers[name]["accept_length"] > 1.05
        assert (info["speculative_num_steps"], info["speculative_eagle_topk"]) == (3, 1)  # the CPU tree
