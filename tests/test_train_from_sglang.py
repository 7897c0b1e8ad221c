"""Training data from SGLang itself: target features (`hass features --engine sglang`) and
self-distilled answers (`hass regenerate --endpoint`, and `--serve` with its own server) from real
SGLang CPU servers on loopback, checked against the transformers paths on SmolLM2."""

import json
import os
import socket
import subprocess
import sys

import pytest
import torch

import hass_sglang.train.regenerate as regen
from hass_sglang.eval_sets import shared_data_dir
from hass_sglang.serving.server import ServerSpec, running_server
from hass_sglang.target import TargetParts
from hass_sglang.train.data import convert, load_sharegpt
from hass_sglang.train.features import FeatureConfig, FeatureSet, SGLangHiddenStates, extract_features

pytestmark = pytest.mark.slow

FLAGS = ("--enable-return-hidden-states", "--disable-radix-cache")


@pytest.fixture(scope="module")
def server(target, tmp_path_factory):
    """A plain fp32 SGLang CPU server of the embedded target that returns hidden states."""
    log = tmp_path_factory.mktemp("sglang") / "server.log"
    with running_server(ServerSpec(model=str(target.path), device="cpu", dtype="float32", extra=FLAGS), log) as url:
        yield url


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    out = tmp_path_factory.mktemp("d") / "gsm8k.json"
    convert(str(shared_data_dir() / "gsm8k" / "train.jsonl"), "gsm8k", out, limit=6)
    return out


def test_sglang_features_match_the_transformers_path(server, target, data, tmp_path):
    """SGLang returns the post-norm last hidden state, like transformers' last_hidden_state: same
    features (fp32 target, fp32 storage) within 1e-4 of the feature scale (measured 1.1e-6), same teacher top-1."""
    common = dict(data=str(data), target="smollm2", max_length=128, shard_size=4, storage_dtype="float32")
    ref = extract_features(target, FeatureConfig(**common), tmp_path / "hf", progress=False)
    remote = SGLangHiddenStates(server, TargetParts.of(target), target.tokenizer, concurrency=3)
    got = extract_features(remote, FeatureConfig(**common, engine="sglang"), tmp_path / "sgl", progress=False)
    assert got["config"]["engine"] == "sglang" and got["samples"] == ref["samples"] == 6
    a, b = FeatureSet(tmp_path / "hf", 576), FeatureSet(tmp_path / "sgl", 576)
    worst, agree, total = 0.0, 0, 0
    for (sa, sb) in zip(a, b):
        assert torch.equal(sa["input_ids"], sb["input_ids"]) and torch.equal(sa["loss_mask"], sb["loss_mask"])
        scale = sa["hidden"].abs().max()
        worst = max(worst, float((sa["hidden"] - sb["hidden"]).abs().max() / scale))
        agree += int((sa["teacher_ids"][:, 0] == sb["teacher_ids"][:, 0]).sum())
        total += len(sa["input_ids"])
    print(f"max |diff| / max |feature| = {worst:.2e}; teacher top-1 agreement {agree}/{total}")
    assert worst < 1e-4
    assert agree >= 0.99 * total


def test_regenerate_through_the_endpoint_is_exactly_once_and_equals_transformers(server, target, data, tmp_path,
                                                                              monkeypatch):
    base = dict(data=[str(data)], max_new_tokens=24, batch_size=2)
    local = regen.regenerate(target, regen.RegenerateConfig(**base), tmp_path / "hf.json", progress=False)
    cfg = regen.RegenerateConfig(**base, engine="endpoint")
    endpoint = regen.Endpoint(server, target.tokenizer, concurrency=3)
    real, calls = regen.Endpoint.answer, {"n": 0}

    def dying(self, *a, **k):
        calls["n"] += 1
        if calls["n"] == 4:  # a request of the second batch fails for good
            raise ConnectionError("endpoint gone")
        return real(self, *a, **k)

    monkeypatch.setattr(regen.Endpoint, "answer", dying)
    out = tmp_path / "sgl.json"
    with pytest.raises(ConnectionError):
        regen.regenerate(endpoint, cfg, out, progress=False)
    parts = tmp_path / "sgl.json.parts"
    first = parts / "part-00000.json.gz"
    assert first.is_file() and not out.exists()
    kept = {p.name: p.stat().st_mtime_ns for p in parts.glob("part-*.json.gz")}
    monkeypatch.setattr(regen.Endpoint, "answer", real)
    report = regen.regenerate(endpoint, cfg, out, progress=False)
    assert all(parts.joinpath(n).stat().st_mtime_ns == t for n, t in kept.items())  # finished batches not redone
    convs = load_sharegpt(out)
    assert report.kept == local.kept == 6 and len({c.id for c in convs}) == 6  # each conversation exactly once
    ref = {c.id: c.messages[-1]["content"] for c in load_sharegpt(tmp_path / "hf.json")}
    same = sum(c.messages[-1]["content"] == ref[c.id] for c in convs)
    assert same >= 5, f"only {same}/6 greedy answers equal the transformers ones"
    assert report.new_tokens > 0 and json.loads((parts / "settings.json").read_text())["engine"] == "endpoint"
    with pytest.raises(Exception, match="different settings"):  # a parts folder of the other engine is refused
        regen.regenerate(target, regen.RegenerateConfig(**base), out, progress=False)


def test_regenerate_serve_runs_its_own_plain_sglang_server(target, data, tmp_path):
    """`hass regenerate --serve`: a plain SGLang server of the target is started here, answers every
    conversation once (the target's greedy answer, fp32), is stopped at the end; the output is gzip."""
    from hass_sglang.sampling import SamplingParams
    from hass_sglang.vanilla import generate_vanilla

    out = tmp_path / "served.json.gz"
    run = subprocess.run([sys.executable, "-m", "hass_sglang.cli", "regenerate", "--serve", "--data", str(data),
                          "--out", str(out), "--max-new-tokens", "12", "--concurrency", "3", "--target-dtype",
                          "float32", "--batch-size", "4"], capture_output=True, text=True, timeout=900)
    assert run.returncode == 0, run.stderr[-2000:]
    said = run.stdout
    assert "--max-running-requests 3" in said and "--port 0" not in said and "6 conversations" in said
    convs = load_sharegpt(out)
    assert len({c.id for c in convs}) == 6
    parts = tmp_path / "served.json.gz.parts"
    assert json.loads((parts / "settings.json").read_text())["engine"] == "endpoint"
    assert sorted(p.name for p in parts.glob("part-*")) == ["part-00000.json.gz", "part-00001.json.gz"]
    same = 0
    for conv in convs:
        want = generate_vanilla(target, target.chat_prompt_ids(conv.messages[0]["content"]), 12, SamplingParams()).tokens
        same += conv.messages[1]["content"] == target.tokenizer.decode(want, skip_special_tokens=True).strip()
    assert same >= 5, f"only {same}/6 answers are the target's greedy ones"
    port = int(said.split("--port ")[1].split()[0])
    with socket.socket() as s:  # the server is gone
        assert s.connect_ex(("127.0.0.1", port)) != 0
