"""`hass doctor` (= scripts/gpu_check.sh) on this CPU: the check a GPU host runs first, here with
the CPU engine and in bf16, the dtype GPUs serve. Plain, HASS (EAGLE-2-shaped draft) and HASS
(Llama MTP draft) servers, one at a time; T=0 answers against plain SGLang; accept length."""

import json
import os
import subprocess
import sys

import pytest

from hass_sglang.tree import cpu_default_tree


def test_an_answer_is_explained_only_where_it_takes_plains_best_alternative_at_a_near_tie():
    from hass_sglang.bench.doctor import NEAR_TIE_NATS, Parting, parting

    half = NEAR_TIE_NATS / 2
    # (token, logprob, top-2): at an exact tie SGLang may list plain's own token second (seen in bf16)
    plain = [('"', -2.6, [("As", -2.6), ('"', -2.6)]), ("sky", -0.5, [("sky", -0.5), ("sea", -0.5 - half)]),
             (" is", -0.2, [(" is", -0.2), (" was", -2.0)])]
    assert parting(plain, '"sky is') is None
    assert parting(plain, "As it").near_tie and parting(plain, "As it") == Parting(0, 0.0, True)
    tie = parting(plain, '"sea was')
    assert tie == Parting(1, half, True) and tie.near_tie
    wide = parting(plain, '"sky was')  # the best alternative, but plain was sure (gap 1.8)
    assert wide.token == 2 and wide.took_runner_up and not wide.near_tie
    other = parting(plain, '"sun is')  # neither of plain's top two
    assert other.token == 1 and not other.took_runner_up and not other.near_tie
    longer = parting(plain, '"sky is blue')
    assert longer.token == 3 and not longer.near_tie
    # plain ended its turn (the end-of-turn token is in the logprobs, not in the text)
    ended = plain + [("<|im_end|>", -0.3, [("<|im_end|>", -0.3), (" today", -0.3 - half)])]
    assert parting(ended, '"sky is') is None
    assert parting(ended, '"sky is today').near_tie
    assert not parting(ended, '"sky is blue').took_runner_up
    stopped = [("A", -0.1, [("A", -0.1), ("B", -3.0)]), (" b", -0.4, [(" b", -0.4), ("", -0.4 - half)])]
    assert parting(stopped, "A").near_tie  # the answer ended where plain's runner-up was the end of turn
    html = [("<div>", -0.1, [("<div>", -0.1), ("<p>", -0.2)])]  # markup is text, not an end of turn
    assert parting(html, "<div>") is None and parting(html, "<p>").near_tie


@pytest.mark.slow
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
    # plain's answers carry the logprobs that tell a bf16 near-tie from a wrong token
    assert len(servers["plain"]["logprobs"]) == 6 and all(servers["plain"]["logprobs"])
    for name in ("hass", "mtp"):
        info = servers[name]["server_info"]
        assert info["speculative_algorithm"] == "EAGLE" and servers[name]["accept_length"] > 1.05
        tree = cpu_default_tree("bfloat16")  # the CPU tree of a bf16 server
        assert (info["speculative_num_steps"], info["speculative_eagle_topk"]) == (tree.num_steps, tree.topk)
