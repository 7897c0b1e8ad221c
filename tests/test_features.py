import math
import random

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import hass_sglang.train.features as features
from hass_sglang.train.data import convert
from hass_sglang.errors import HassError
from hass_sglang.eval_sets import shared_data_dir
from hass_sglang.train.features import FeatureConfig, epoch_batches, extract_features, load_shard, read_manifest
from hass_sglang.kv_cache import new_cache


@pytest.fixture(scope="module")
def small_data(tmp_path_factory):
    out = tmp_path_factory.mktemp("data") / "gsm8k.json"
    convert(str(shared_data_dir() / "gsm8k" / "train.jsonl"), "gsm8k", out, limit=7)
    return out


def all_samples(out_dir, hidden_size):
    m = read_manifest(out_dir)
    return [s for e in m["shards"] if e["file"] for s in load_shard(out_dir, e, hidden_size)]


def test_features_match_an_unbatched_forward_and_manifest_counts(tmp_path, target, small_data):
    # fp32 storage: bit-level agreement is the point here (the default, bf16, is checked below)
    cfg = FeatureConfig(data=str(small_data), target="smollm2", max_length=96, shard_size=3, batch_tokens=256,
                        storage_dtype="float32")
    m = extract_features(target, cfg, tmp_path / "f", progress=False)
    assert m["complete"] and m["samples"] == 7 and len(m["shards"]) == 3
    assert m["truncated"] > 0 and m["versions"]["torch"] == torch.__version__
    samples = all_samples(tmp_path / "f", 576)
    assert sum(len(s["input_ids"]) for s in samples) == m["tokens"]
    s = samples[0]
    ids = s["input_ids"].long()[None]
    want = target.hidden(ids, torch.arange(ids.shape[1])[None], new_cache())[0]
    assert torch.allclose(s["hidden"], want, atol=1e-4)
    # the stored teacher is the target's own top-10 next-token distribution at every position
    p = torch.softmax(target.logits(want).float(), -1)
    assert s["teacher_ids"].shape == (ids.shape[1], 10)
    assert torch.equal(s["teacher_ids"][:, 0].long(), p.argmax(-1))
    assert torch.allclose(s["teacher_p"], p.gather(-1, s["teacher_ids"].long()), atol=1e-4)
    assert s["loss_mask"].sum() > 0 and s["loss_mask"][0] == 0


def test_killed_run_resumes_to_the_same_result(tmp_path, target, small_data, monkeypatch):
    cfg = FeatureConfig(data=str(small_data), target="smollm2", max_length=128, shard_size=2, batch_tokens=256)
    full = extract_features(target, cfg, tmp_path / "full", progress=False)
    assert full["samples"] == 7 and len(full["shards"]) == 4
    assert full["config"]["storage_dtype"] == "bfloat16"  # the default, recorded in the manifest
    assert all_samples(tmp_path / "full", 576)[0]["hidden"].dtype == torch.bfloat16
    real = features._features
    calls = {"n": 0}

    def dying(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt  # a kill in the middle of the second shard
        return real(*args, **kwargs)

    monkeypatch.setattr(features, "_features", dying)
    with pytest.raises(KeyboardInterrupt):
        extract_features(target, cfg, tmp_path / "resumed", progress=False)
    partial = read_manifest(tmp_path / "resumed")
    assert not partial["complete"] and 0 < len(partial["shards"]) < len(full["shards"])
    monkeypatch.setattr(features, "_features", real)
    resumed = extract_features(target, cfg, tmp_path / "resumed", progress=False)
    for key in ("samples", "tokens", "loss_tokens", "truncated", "skipped"):
        assert resumed[key] == full[key]
    a, b = all_samples(tmp_path / "full", 576), all_samples(tmp_path / "resumed", 576)
    assert len(a) == len(b) and all(torch.equal(x["input_ids"], y["input_ids"]) and torch.equal(x["hidden"], y["hidden"]) for x, y in zip(a, b))
    assert not list((tmp_path / "resumed").glob(".*tmp*"))


def test_config_change_and_hidden_size_mismatch_are_refused(tmp_path, target, small_data):
    cfg = FeatureConfig(data=str(small_data), target="smollm2", max_length=128, shard_size=7)
    extract_features(target, cfg, tmp_path / "f", progress=False)
    with pytest.raises(HassError, match="different config"):
        extract_features(target, cfg.model_copy(update={"max_length": 129}), tmp_path / "f", progress=False)
    entry = read_manifest(tmp_path / "f")["shards"][0]
    with pytest.raises(HassError, match="hidden size 576, model has 4096"):
        load_shard(tmp_path / "f", entry, 4096)
    with pytest.raises(Exception):
        FeatureConfig(data="x", target="y", max_lenght=3)


@pytest.mark.slow
def test_data_parallel_extraction_under_torchrun_equals_one_process(tmp_path, target, small_data):
    """Two gloo ranks split the shards (index modulo 2); rank 0 merges one manifest."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    cfg = FeatureConfig(data=str(small_data), target="smollm2-135m-instruct", max_length=128, shard_size=2, batch_tokens=256)
    # one thread, as each rank below: 1 and 2 threads reduce in different orders, and a last-bit fp32
    # difference can round to a different bf16 value (the storage dtype), 1 ulp = 0.0078 at the hidden's scale
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        one = extract_features(target, cfg, tmp_path / "one", progress=False)
    finally:
        torch.set_num_threads(threads)
    env = {**os.environ, "PYTHONPATH": str(Path(features.__file__).resolve().parents[1])}  # this checkout's code
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-port", "29533",
           "-m", "hass_sglang.cli", "features", "--data", str(small_data), "--out", str(tmp_path / "two"),
           "--max-length", "128", "--shard-size", "2", "--batch-tokens", "256", "--threads", "1"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=900, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    two = read_manifest(tmp_path / "two")
    assert two["complete"] and [e["index"] for e in two["shards"]] == [0, 1, 2, 3]
    for key in ("samples", "tokens", "loss_tokens", "truncated", "skipped"):
        assert two[key] == one[key]
    assert not list((tmp_path / "two").glob("progress.rank*.json"))
    a, b = all_samples(tmp_path / "one", 576), all_samples(tmp_path / "two", 576)
    assert all(torch.equal(x["input_ids"], y["input_ids"]) and torch.allclose(x["hidden"], y["hidden"], atol=1e-4)
               for x, y in zip(a, b, strict=True))


@settings(max_examples=200, deadline=None)
@given(shard_sizes=st.lists(st.integers(0, 20), min_size=1, max_size=12), size=st.integers(1, 9),
       window=st.integers(1, 5), seed=st.integers(0, 3), epoch=st.integers(0, 2))
def test_epoch_batches_hold_every_sample_once_in_ceil_n_over_size_batches(shard_sizes, size, window, seed, epoch):
    rng = random.Random(seed)
    lengths = [[rng.randint(1, 700) for _ in range(n)] for n in shard_sizes]
    keys = sorted((s, j) for s, n in enumerate(shard_sizes) for j in range(n))
    for by_length in (True, False):
        batches = epoch_batches(lengths, seed, epoch, size, window, by_length)
        assert sorted(k for b in batches for k in b) == keys
        assert len(batches) == math.ceil(len(keys) / size) and all(0 < len(b) <= size for b in batches)
        assert sum(len(b) < size for b in batches) <= 1
        assert batches == epoch_batches(lengths, seed, epoch, size, window, by_length)  # (seed, epoch) decide


def test_length_grouped_batches_carry_little_padding_and_change_every_epoch():
    rng = random.Random(0)
    lengths = [[rng.randint(20, 768) for _ in range(64)] for _ in range(16)]

    def padded_over_real(batches):
        return sum(max(lengths[s][j] for s, j in b) * len(b) for b in batches) / sum(map(sum, lengths))

    grouped, mixed = epoch_batches(lengths, 0, 0, 8, 4), epoch_batches(lengths, 0, 0, 8, 4, by_length=False)
    assert padded_over_real(grouped) < 1.05 < 1.3 < padded_over_real(mixed)
    assert epoch_batches(lengths, 0, 1, 8, 4) != grouped and epoch_batches(lengths, 1, 0, 8, 4) != grouped
    # the batch order is shuffled, not shortest first
    firsts = [max(lengths[s][j] for s, j in b) for b in grouped[:8]]
    assert firsts != sorted(firsts)
