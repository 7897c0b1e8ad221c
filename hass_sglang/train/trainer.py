"""`hass train`: EAGLE-2 / HASS training of a draft head on extracted features, resumable.

One process on CPU, or data-parallel under torchrun (`torchrun --nproc-per-node N -m
hass_sglang.cli train ...`; gloo on CPU, the only device wired so far; `distributed.py`): every rank
takes its slice of each global batch of N x batch_size sequences, gradients are averaged before the
optimizer step, so all ranks keep identical weights; rank 0 alone logs, validates and writes. The frozen
target contributes its embedding and lm_head only; the body's work was done once by
`hass features`.

State saved after every epoch (atomically, `checkpoint/`): head, optimizer, scheduler, epoch and
the metrics so far; the data order of epoch e is a function of (seed, e), so a run killed and
resumed reaches the same state as an uninterrupted one. The final head is exported as an
SGLang-loadable draft folder (`checkpoint.save_draft`).
"""

from __future__ import annotations

import copy
import math
import time
from collections import Counter
from pathlib import Path
from typing import Literal

import torch
from pydantic import BaseModel, ConfigDict, model_validator
from tqdm import tqdm

from hass_sglang.checkpoint import load_draft, load_target_mtp_layer, save_draft
from hass_sglang.errors import HassError
from hass_sglang.heads import build_head, is_deepseek
from hass_sglang.io import claim_run_settings, save_torch_atomic
from hass_sglang.train.align import aligned_forward, step_losses, step_weight
from hass_sglang.train.distributed import average_gradients, barrier, broadcast_parameters, rank_world
from hass_sglang.train.features import load_shard, read_manifest
from hass_sglang.train.losses import teacher_topk
from hass_sglang.tree import TreeShape


INIT_FROM_TARGET = "target"
# Validation tau runs the reference decoder with a 16-token tree (the CPU setting, cheap per epoch).
VALIDATION_TREE = TreeShape(4, 4, 16)


class TrainConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    features: str
    out: str
    head: Literal["eagle", "mtp"] = "eagle"
    objective: Literal["eagle2", "hass"] = "hass"
    align_steps: int = 3  # HASS aligning steps n (eagle2 always uses 1)
    distill_topk: int = 10  # HASS K (top-K distillation; not the draft tree's top-k)
    distill_weight: float = 1.0  # HASS w (weight of the top-K distillation loss)
    ce_weight: float = 0.1  # EAGLE's classification weight
    regression_weight: float = 1.0
    draft_vocab: int | None = None  # reduced draft vocabulary: the most frequent target next tokens
    # continual training: an existing draft folder, or "target": the target's own MTP layer
    # (`model.layers.<N>.*` of a DeepSeek checkpoint; the seed-002 recipe for DeepSeek-R1)
    init_from: str | None = None
    epochs: int = 1
    lr: float = 3e-4
    weight_decay: float = 0.0
    grad_clip: float = 0.5
    warmup_steps: int = 0
    batch_size: int = 4  # sequences per step
    seed: int = 0
    val_prompts: int = 0  # validation tau after every epoch on this many eval prompts (0 = off)
    val_max_new_tokens: int = 48

    @model_validator(mode="after")
    def _check(self) -> "TrainConfig":
        if self.align_steps < 1 or self.epochs < 1 or self.batch_size < 1 or self.distill_topk < 1:
            raise ValueError("align_steps, epochs, batch_size and distill_topk must be >= 1")
        if self.draft_vocab is not None and self.draft_vocab < 2:
            raise ValueError("draft_vocab must be >= 2")
        return self

    @property
    def steps(self) -> int:
        return self.align_steps if self.objective == "hass" else 1


def _load_samples(features_dir: Path, hidden_size: int, lm_weight: torch.Tensor, k: int) -> list[dict]:
    manifest = read_manifest(features_dir)
    if manifest is None or not manifest.get("complete"):
        raise HassError(f"{features_dir}: no complete feature set (run or resume `hass features` first)")
    if manifest["hidden_size"] != hidden_size:
        raise HassError(f"features in {features_dir} have hidden size {manifest['hidden_size']}, the target has {hidden_size}")
    samples = [s for e in manifest["shards"] if e["file"] for s in load_shard(features_dir, e, hidden_size)]
    for s in samples:
        if "teacher_p" not in s or s["teacher_p"].shape[-1] < k:  # older feature sets: compute once here
            with torch.no_grad():
                s["teacher_p"], s["teacher_ids"] = teacher_topk(torch.nn.functional.linear(s["hidden"].float(), lm_weight), k)
        s["teacher_p"], s["teacher_ids"] = s["teacher_p"][:, :k].float(), s["teacher_ids"][:, :k].long()
    return samples


def hot_vocabulary(samples: list[dict], size: int, always: set[int]) -> torch.Tensor:
    """The `size` most frequent target greedy next tokens over the loss positions (plus `always`,
    e.g. the end-of-turn ids), sorted by id: the reduced draft vocabulary (FR-Spec / EAGLE-3 style)."""
    counts = Counter()
    for s in samples:
        mask = s["loss_mask"].bool()
        counts.update(s["teacher_ids"][:, 0][mask].tolist())
    chosen = set(always)
    for tok, _ in sorted(counts.items(), key=lambda x: (-x[1], x[0])):
        if len(chosen) >= size:
            break
        chosen.add(tok)
    return torch.tensor(sorted(chosen), dtype=torch.long)


def _batch(samples: list[dict], vocab_map: torch.Tensor) -> dict[str, torch.Tensor]:
    """Right-padded batch; `teacher_*` rows shifted by one so row t describes x_{t+2}, the token the
    draft's prediction of f_{t+1} scores, with ids mapped to draft-vocabulary indices."""
    t = max(len(s["input_ids"]) for s in samples)
    b = len(samples)
    h = samples[0]["hidden"].shape[-1]
    k = samples[0]["teacher_p"].shape[-1]
    out = {
        "input_ids": torch.zeros(b, t, dtype=torch.long),
        "loss_mask": torch.zeros(b, t, dtype=torch.float32),
        "valid": torch.zeros(b, t, dtype=torch.bool),
        "hidden": torch.zeros(b, t, h, dtype=torch.float32),
        "teacher_p": torch.zeros(b, t, k, dtype=torch.float32),
        "teacher_idx": torch.full((b, t, k), -1, dtype=torch.long),
    }
    for i, s in enumerate(samples):
        n = len(s["input_ids"])
        out["input_ids"][i, :n] = s["input_ids"].long()
        out["loss_mask"][i, :n] = s["loss_mask"].float()
        out["valid"][i, :n] = True
        out["hidden"][i, :n] = s["hidden"].float()
        out["teacher_p"][i, : n - 1] = s["teacher_p"][1:]
        out["teacher_idx"][i, : n - 1] = vocab_map[s["teacher_ids"][1:]]
    return out


def batch_loss(head, embed, draft_lm_weight, batch, cfg: TrainConfig) -> tuple[torch.Tensor, dict[str, float]]:
    """Total loss of one batch over all aligning steps, and per-step metrics."""
    ids, feats, valid = batch["input_ids"], batch["hidden"], batch["valid"]
    # the pair at t sees x_{t+1}; the last position gets a dummy token and is never counted
    next_ids = torch.cat((ids[:, 1:], ids[:, -1:]), dim=1)
    with torch.no_grad():
        embeds_next = embed(next_ids).float()
    outs = aligned_forward(head, embeds_next, feats, valid, cfg.steps)
    total = torch.zeros(())
    metrics: dict[str, float] = {}
    for j, out in enumerate(outs, 1):
        w = step_weight(batch["loss_mask"], valid, j)
        parts = step_losses(out, feats, batch["teacher_p"], batch["teacher_idx"], draft_lm_weight, w, cfg.objective == "hass")
        loss = cfg.regression_weight * parts["regression"] + cfg.ce_weight * parts["ce"]
        if "topk" in parts:
            loss = loss + cfg.distill_weight * parts["topk"]
        total = total + loss
        for k, v in parts.items():
            metrics[f"step{j}/{k}"] = float(v.detach())
    total = total / len(outs)
    metrics["loss"] = float(total.detach())
    return total, metrics


@torch.no_grad()
def init_for_training(head):
    """Start a fresh head as a near-identity on the feature path: the input projection passes the
    previous feature through ([small random | identity]) and the attention and MLP outputs start at
    zero, so the first prediction of f_{t+1} is f_t. (A fully random start, or the target's last
    layer copied as-is, trains far worse: ../shared/notes/cpu-calibration.md.)"""
    h = head.hidden_size
    proj = head.fc if head.head_type == "eagle" else head.eh_proj
    proj.weight[:, :h].normal_(0.0, 0.02)
    proj.weight[:, h:].copy_(torch.eye(h))
    if proj.bias is not None:
        proj.bias.zero_()
    for layer in head.layers:
        layer.self_attn.o_proj.weight.zero_()
        mlp = layer.mlp
        if hasattr(mlp, "experts"):  # DeepSeek MoE: routed experts (fused [E, H, I]) and the shared one
            mlp.experts.down_proj.zero_()
            mlp.shared_experts.down_proj.weight.zero_()
        else:
            mlp.down_proj.weight.zero_()
    return head


def validation_tau(target, head, prompts: int, max_new_tokens: int) -> float:
    """Greedy tau of a copy of `head` in the reference decoder (a 16-token tree, the CPU setting)
    on the first question of each eval set in turn: what training is for, logged per epoch."""
    from hass_sglang.eval_sets import EVAL_SETS
    from hass_sglang.evaluate import eval_prompts
    from hass_sglang.speculative import SpeculativeDecoder

    chosen = [eval_prompts(target, [EVAL_SETS[i % len(EVAL_SETS)]], i // len(EVAL_SETS) + 1)[-1] for i in range(prompts)]
    dec = SpeculativeDecoder(target, copy.deepcopy(head).eval(), VALIDATION_TREE)
    tokens = forwards = 0
    for _, _, ids in chosen:
        res = dec.generate(ids, max_new_tokens)
        tokens += len(res.tokens)
        forwards += res.target_forwards
    return tokens / max(forwards, 1)


def train(cfg: TrainConfig, target, progress: bool = True) -> Path:
    """Train (or resume) and export; returns the exported draft folder."""
    rank, world = rank_world()
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    ckpt = out / "checkpoint.pt"
    settings = cfg.model_dump(mode="json")
    claim_run_settings(out / "train_config.json", settings, HassError, write=False)
    barrier()  # every rank checked the config before rank 0 writes it
    if rank == 0:
        claim_run_settings(out / "train_config.json", settings, HassError)

    lm_weight = target.lm_head.weight.detach().float()
    samples = _load_samples(Path(cfg.features), int(target.config.hidden_size), lm_weight, cfg.distill_topk)
    if cfg.init_from == INIT_FROM_TARGET:
        if cfg.head != "mtp":
            raise HassError("--init-from target continues the target's own MTP layer: it needs --head mtp")
        if cfg.draft_vocab is not None:
            raise HassError("--draft-vocab cannot change the vocabulary of the target's MTP layer")
        head = load_target_mtp_layer(target.path, target.config)
    elif cfg.init_from:
        head = load_draft(cfg.init_from, target.config)
        if head.head_type != cfg.head:
            raise HassError(f"--init-from {cfg.init_from} is a {head.head_type} head, not {cfg.head}")
        if cfg.draft_vocab is not None:
            raise HassError("--draft-vocab cannot change the vocabulary of an --init-from draft")
    else:
        if cfg.draft_vocab is not None and is_deepseek(target.config):
            raise HassError("--draft-vocab: SGLang's DeepseekV3ForCausalLMNextN scores the full vocabulary "
                            "(models/deepseek_nextn.py has no hot_vocab_size); train DeepSeek MTP drafts without it")
        hot = None if cfg.draft_vocab is None else hot_vocabulary(samples, cfg.draft_vocab, target.eos_token_ids)
        head = init_for_training(build_head(cfg.head, target.config, hot_token_ids=hot, seed=cfg.seed))
    head.float().train()
    broadcast_parameters(head)  # identical starting weights whatever each rank's RNG did before
    embed = target.embed_tokens
    vocab_size = lm_weight.shape[0]
    if head.hot_token_ids is None:
        vocab_map = torch.arange(vocab_size)
    else:
        vocab_map = torch.full((vocab_size,), -1, dtype=torch.long)
        vocab_map[head.hot_token_ids] = torch.arange(head.hot_token_ids.numel())
    draft_lm_weight = head.draft_lm_head_weight(lm_weight)
    global_batch = cfg.batch_size * world
    steps_per_epoch = math.ceil(len(samples) / global_batch)
    total_steps = steps_per_epoch * cfg.epochs
    opt = torch.optim.AdamW(head.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay, betas=(0.9, 0.95))

    def lr_at(step: int) -> float:  # linear warmup, cosine decay
        if step < cfg.warmup_steps:
            return (step + 1) / cfg.warmup_steps
        frac = (step - cfg.warmup_steps) / max(total_steps - cfg.warmup_steps, 1)
        return 0.5 * (1 + math.cos(math.pi * min(frac, 1.0)))

    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_at)
    start_epoch, history = 0, []
    if ckpt.is_file():
        state = torch.load(ckpt, weights_only=False)
        head.load_state_dict(state["head"])
        opt.load_state_dict(state["optimizer"])
        sched.load_state_dict(state["scheduler"])
        start_epoch, history = state["epoch"], state["history"]
    t_start = time.perf_counter()
    for epoch in range(start_epoch, cfg.epochs):
        order = torch.randperm(len(samples), generator=torch.Generator().manual_seed(cfg.seed * 1000 + epoch)).tolist()
        sums: dict[str, float] = {}
        bar = tqdm(range(steps_per_epoch), desc=f"epoch {epoch + 1}/{cfg.epochs}", disable=not progress or rank > 0)
        for i in bar:
            chunk = order[i * global_batch : (i + 1) * global_batch]
            mine = chunk[rank::world] or chunk[:1]  # a short last batch: spare ranks repeat one sample
            batch = _batch([samples[k] for k in mine], vocab_map)
            loss, metrics = batch_loss(head, embed, draft_lm_weight, batch, cfg)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            average_gradients(head.parameters())
            torch.nn.utils.clip_grad_norm_(head.parameters(), cfg.grad_clip)
            opt.step()
            sched.step()
            for k, v in metrics.items():
                sums[k] = sums.get(k, 0.0) + v
            bar.set_postfix(loss=f"{metrics['loss']:.3f}", top1=f"{metrics['step1/top1']:.3f}")
        history.append({"epoch": epoch + 1, **{k: v / steps_per_epoch for k, v in sums.items()}})
        if rank > 0:
            continue  # rank 0 validates and writes; the others hold the same weights
        if cfg.val_prompts:
            history[-1]["val_tau"] = validation_tau(target, head, cfg.val_prompts, cfg.val_max_new_tokens)
            head.float().train()
        print(f"[train] epoch {epoch + 1}: " + ", ".join(
            f"{k} {v:.3f}" for k, v in history[-1].items() if k == "loss" or k.endswith(("top1", "val_tau"))), flush=True)
        save_torch_atomic(ckpt, {"head": head.state_dict(), "optimizer": opt.state_dict(), "scheduler": sched.state_dict(),
                           "epoch": epoch + 1, "history": history})
    seconds = time.perf_counter() - t_start
    export = out / "draft"
    barrier()
    if rank > 0:
        return export
    save_draft(head.eval(), export, target.config, metadata={
        "objective": cfg.objective, "align_steps": cfg.steps, "epochs": cfg.epochs, "samples": len(samples),
        "init_from": cfg.init_from, "history": history, "train_seconds_last_session": round(seconds, 1),
    }, dtype=target.checkpoint_dtype)  # the dtype SGLang will serve the target in
    return export

