import subprocess
import sys

import pytest
import torch

import hass_sglang.train.trainer as trainer
from hass_sglang.checkpoint import load_draft, read_draft_metadata
from hass_sglang.train.curves import read_curve
from hass_sglang.train.data import convert
from hass_sglang.errors import HassError
from hass_sglang.eval_sets import shared_data_dir
from hass_sglang.train.features import FeatureConfig, FeatureSet, extract_features
from hass_sglang.train.trainer import TrainConfig, train


@pytest.fixture(scope="module")
def feats(tmp_path_factory, target):
    root = tmp_path_factory.mktemp("train")
    convert(str(shared_data_dir() / "gsm8k" / "train.jsonl"), "gsm8k", root / "d.json", limit=8)
    extract_features(target, FeatureConfig(data=str(root / "d.json"), target="smollm2", max_length=112), root / "f", progress=False)
    return root / "f"


def cfg(feats, out, **kw):
    base = dict(features=str(feats), out=str(out), epochs=2, batch_size=4, lr=3e-4, seed=1)
    return TrainConfig(**{**base, **kw})


@pytest.mark.parametrize("head, objective, precision", [("eagle", "hass", "auto"), ("mtp", "eagle2", "auto"),
                                                        ("eagle", "hass", "bf16")])
def test_training_learns_and_exports_a_loadable_draft(tmp_path, target, feats, head, objective, precision):
    export = train(cfg(feats, tmp_path / "run", head=head, objective=objective, epochs=3, precision=precision), target,
                   progress=False)
    meta = read_draft_metadata(export)
    hist = meta["history"]
    assert meta["objective"] == objective and len(hist) == 3
    assert hist[-1]["loss"] < hist[0]["loss"]
    assert hist[-1]["step1/top3"] > hist[0]["step1/top3"]
    steps = 3 if objective == "hass" else 1
    assert f"step{steps}/top3" in hist[0] and ("step1/topk" in hist[0]) == (objective == "hass")
    assert load_draft(export, target.config).head_type == head


def test_precision_bf16_runs_the_matmuls_in_bf16_on_cpu_and_auto_keeps_cpu_in_fp32():
    x, w = torch.randn(4, 8), torch.randn(3, 8)
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    with trainer.autocast_for("bf16", cpu):
        assert torch.nn.functional.linear(x, w).dtype == torch.bfloat16
    for precision in ("auto", "fp32"):
        with trainer.autocast_for(precision, cpu):
            assert torch.nn.functional.linear(x, w).dtype == torch.float32
    assert isinstance(trainer.autocast_for("auto", cuda), torch.autocast)  # bf16 on GPUs, as before
    with pytest.raises(Exception):
        TrainConfig(features="f", out="o", precision="fp16")


TRAIN_KW = dict(epochs=2, batch_size=2, val_prompts=1, val_max_new_tokens=8)  # 8 samples: 4 steps per epoch


def _killed_then_resumed(feats, out, target, monkeypatch, die_at: int, **kw):
    """A run interrupted at its `die_at`-th step (KeyboardInterrupt), then re-run to the end: the
    checkpoint the interrupted run left, and the export."""
    real, calls = trainer.batch_loss, {"n": 0}

    def dying(*a, **k):
        calls["n"] += 1
        if calls["n"] == die_at:
            raise KeyboardInterrupt
        return real(*a, **k)

    monkeypatch.setattr(trainer, "batch_loss", dying)
    with pytest.raises(KeyboardInterrupt):
        train(cfg(feats, out, **TRAIN_KW), target, progress=False, **kw)
    left = torch.load(out / "checkpoint.pt", weights_only=False)
    assert not (out / "draft").exists()
    watched = read_curve(out)  # `hass curves` on a run still training: its checkpoint's curve
    assert watched.source.endswith("checkpoint.pt") and list(watched.points) == left["curve"]
    monkeypatch.setattr(trainer, "batch_loss", real)
    return left, train(cfg(feats, out, **TRAIN_KW), target, progress=False, **kw)


def test_killed_runs_resume_from_epoch_and_mid_epoch_checkpoints_to_the_same_weights_and_curve(
        tmp_path, target, feats, monkeypatch):
    """Killed at the first step of epoch 2 (after an epoch checkpoint), or after a `save_every`
    checkpoint inside epoch 1: both resume to the weights and history of an uninterrupted run (the
    cadence never changes the weights) and to its curve. Every point carries a validation tau and
    the best head is exported to best/."""
    full = train(cfg(feats, tmp_path / "full", **TRAIN_KW), target, progress=False, save_every=3)
    left, epochs = _killed_then_resumed(feats, tmp_path / "epochs", target, monkeypatch, die_at=5)
    assert (left["epoch"], left["step_in_epoch"]) == (1, 0)
    left, resumed = _killed_then_resumed(feats, tmp_path / "resumed", target, monkeypatch, die_at=4, save_every=3)
    assert (left["epoch"], left["step_in_epoch"]) == (0, 3)

    weights = [load_draft(d, target.config).state_dict() for d in (full, epochs, resumed)]
    assert all(torch.equal(weights[0][k], w[k]) for w in weights[1:] for k in weights[0])
    meta_full, meta_resumed = read_draft_metadata(full), read_draft_metadata(resumed)
    assert meta_full["history"] == meta_resumed["history"] == read_draft_metadata(epochs)["history"]
    assert meta_full["curve"] == meta_resumed["curve"]
    curve = meta_full["curve"]
    assert [p["step"] for p in curve] == [3, 4, 7, 8] and [p["epoch"] for p in curve] == [0.75, 1.0, 1.75, 2.0]
    assert all(p["val_tau"] >= 1.0 and "loss" in p for p in curve)
    assert [p["step"] for p in read_draft_metadata(epochs)["curve"]] == [4, 8]
    # the epoch-end points' taus are the history's, and the best point's head is the one in best/
    assert [h["val_tau"] for h in meta_full["history"]] == [curve[1]["val_tau"], curve[3]["val_tau"]]
    best = max(curve, key=lambda p: p["val_tau"])
    assert meta_full["best"] == {k: best[k] for k in ("step", "epoch", "val_tau")}
    assert read_draft_metadata(tmp_path / "full" / "best")["best"] == meta_full["best"]
    finished = read_curve(tmp_path / "full")
    assert list(finished.points) == curve and finished.best == best
    # `hass curves`: a finished run and a shipped draft (per-epoch history only) -> table + PNG
    png = tmp_path / "curves.png"
    shown = subprocess.run([sys.executable, "-m", "hass_sglang.cli", "curves", str(tmp_path / "full"),
                            "smollm2-135m-hass-eagle", "--out", str(png)], capture_output=True, text=True, check=True).stdout
    assert f"| full | {best['step']} | {best['epoch']:.2f} |" in shown and f"{best['val_tau']:.2f} * |" in shown
    assert "smollm2-135m-hass-eagle: " in shown and "best val tau" in shown and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with pytest.raises(HassError, match="save_every"):
        train(cfg(feats, tmp_path / "bad"), target, progress=False, save_every=-1)


def test_continual_training_and_bad_config(tmp_path, target, feats):
    first = train(cfg(feats, tmp_path / "a", head="mtp", objective="eagle2", epochs=1), target, progress=False)
    cont = train(cfg(feats, tmp_path / "b", head="mtp", objective="hass", epochs=1, init_from=str(first), lr=1e-4), target, progress=False)
    assert read_draft_metadata(cont)["init_from"] == str(first)
    with pytest.raises(HassError, match="is a mtp head, not eagle"):
        train(cfg(feats, tmp_path / "c", head="eagle", init_from=str(first)), target, progress=False)
    with pytest.raises(HassError, match="different config"):
        train(cfg(feats, tmp_path / "a", head="mtp", objective="eagle2", epochs=3), target, progress=False)
    with pytest.raises(Exception):
        TrainConfig(features="f", out="o", objectiv="hass")


def test_reduced_draft_vocabulary_is_trained_and_exported(tmp_path, target, feats):
    lm = target.lm_head.weight.detach().float()
    samples = [trainer._teacher(s, lm, 10) for s in FeatureSet(feats, 576)]
    hot = trainer.hot_vocabulary(samples, 64, target.eos_token_ids)
    assert hot.numel() == 64 and set(target.eos_token_ids) <= set(hot.tolist())
    counts = torch.bincount(torch.cat([s["teacher_ids"][:, 0][s["loss_mask"].bool()] for s in samples]), minlength=49152)
    assert int(counts.argmax()) in hot.tolist()  # the most frequent greedy token is in
    export = train(cfg(feats, tmp_path / "hot", draft_vocab=64, epochs=2, val_prompts=1, val_max_new_tokens=8), target,
                   progress=False)
    head = load_draft(export, target.config)
    assert torch.equal(head.hot_token_ids, hot)
    hist = read_draft_metadata(export)["history"]
    assert hist[-1]["loss"] < hist[0]["loss"]
    assert all(h["val_tau"] >= 1.0 for h in hist)  # tokens per target forward through the reference decoder
    with pytest.raises(HassError, match="cannot change the vocabulary"):
        train(cfg(feats, tmp_path / "x", init_from=str(export), draft_vocab=32), target, progress=False)


def _torchrun(feats, out, *flags, ranks=2, wait=True):
    """`hass train` under torchrun with this checkout's code (gloo on CPU)."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(ranks),
           "-m", "hass_sglang.cli", "train", "--features", str(feats), "--out", str(out), "--lr", "3e-4",
           "--seed", "1", "--threads", "1", "--device", "cpu", "--objective", "hass", "--align-steps", "2", *flags]
    env = {**os.environ, "PYTHONPATH": str(Path(trainer.__file__).resolve().parents[2])}  # this checkout's code
    if not wait:
        return subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=900, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out / "draft"


def _weights(draft, config):
    return load_draft(draft, config).float().state_dict()


@pytest.mark.slow
def test_ddp_and_fsdp2_match_one_process_and_resume_after_a_kill(tmp_path, target, feats):
    """Two gloo ranks x batch 2 under DDP and under FSDP2 follow the loss curve of one process x
    batch 4 (the same global batches, in the same order), and a 2-rank run killed after its first
    checkpoint resumes to the same weights as one never interrupted."""
    import os
    import signal
    import time

    single = train(cfg(feats, tmp_path / "one", objective="hass", align_steps=2, epochs=3, batch_size=4), target,
                   progress=False, device="cpu")
    ddp = _torchrun(feats, tmp_path / "ddp", "--epochs", "3", "--batch-size", "2", "--parallel", "ddp")
    fsdp = _torchrun(feats, tmp_path / "fsdp", "--epochs", "3", "--batch-size", "2", "--parallel", "fsdp")
    ref = read_draft_metadata(single)["history"]
    w_ref = _weights(single, target.config)
    for run in (ddp, fsdp):
        meta = read_draft_metadata(run)
        assert meta["world_size"] == 2 and meta["history"][-1]["loss"] < meta["history"][0]["loss"]
        for mine, theirs in zip(meta["history"], ref):
            for key in ("loss", "step1/regression", "step2/topk", "step1/top1"):
                # same global batch, padded differently per rank: float32 reduction order only
                assert mine[key] == pytest.approx(theirs[key], rel=1e-4, abs=1e-5), (run, key)
        w = _weights(run, target.config)
        # the export is in the target's dtype; compare at that precision
        assert all(torch.allclose(w[k], w_ref[k], rtol=2e-2, atol=2e-3) for k in w_ref), run

    killed = _torchrun(feats, tmp_path / "kill", "--epochs", "3", "--batch-size", "2", wait=False)
    ckpt = tmp_path / "kill" / "checkpoint.pt"
    deadline = time.time() + 600
    while not ckpt.is_file() and killed.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    os.killpg(killed.pid, signal.SIGKILL)
    killed.wait()
    assert torch.load(ckpt, weights_only=False)["epoch"] < 3, "the run finished before it could be killed"
    assert not (tmp_path / "kill" / "draft").exists()
    resumed = _torchrun(feats, tmp_path / "kill", "--epochs", "3", "--batch-size", "2")
    a, b = _weights(ddp, target.config), _weights(resumed, target.config)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert read_draft_metadata(resumed)["history"] == read_draft_metadata(ddp)["history"]
