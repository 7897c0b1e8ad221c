"""`hass train`: EAGLE-2 / HASS training of a draft head on extracted features, resumable.

One process on CPU, or data-parallel under torchrun (`torchrun --nproc-per-node N -m
hass_sglang.cli train ...`; gloo on CPU, the only device wired so far; `distributed.py`): every rank
takes its slice of each global batch of N x batch_size sequences, gradients are averaged before the
optimizer step, so all ranks keep identical weights; rank 0 alone logs, validates and writes. The frozen
target contributes its embedding and lm_head only; the body's work was done once by
`hass features`.

State saved after every epoch and, with `save_every`, every that many steps inside one (atomically,
`checkpoint.pt`): head, optimizer, scheduler, position in the epoch and the metrics so far; the data
order of epoch e is a function of (seed, e), so a run killed and resumed reaches the same state as an
uninterrupted one, whatever the checkpoint cadence. Every checkpoint adds a point to the training
curve (metrics since the previous point, validation tau with `val_prompts`); the best validated head
is exported to `best/`, the final one to `draft/` (`checkpoint.save_draft`, SGLang-loadable).
"""

from __future__ import annotations

import contextlib
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
from hass_sglang.target import Target, TargetParts
from hass_sglang.train.align import AlignedDraft, step_denominators, step_losses, step_weight
from hass_sglang.train.distributed import (Parallelism, all_reduce_sum, barrier, broadcast_parameters, full_state,
                                           init_distributed, load_full_state, parallelize, rank_world, resolve_device)
from hass_sglang.train.features import FeatureSet
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
    length_grouped: bool = True  # batches of similar lengths (little padding; FeatureSet.batches)
    seed: int = 0
    # forward and losses under autocast: auto = bf16 on CUDA, fp32 on CPU; bf16 on a CPU uses its bf16
    # matmuls (AMX / AVX-512 bf16); master weights and AdamW state stay fp32 either way
    precision: Literal["auto", "fp32", "bf16"] = "auto"
    val_prompts: int = 0  # validation tau after every checkpoint on this many eval prompts (0 = off)
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


def autocast_for(precision: str, dev: torch.device):
    """The autocast context of a training step (fp32 master weights and optimizer state either way)."""
    if precision == "bf16" or (precision == "auto" and dev.type == "cuda"):
        return torch.autocast(dev.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def _teacher(sample: dict, lm_weight: torch.Tensor, k: int) -> dict:
    """The sample with its teacher top-K (computed here for feature sets written without it)."""
    if "teacher_p" not in sample or sample["teacher_p"].shape[-1] < k:
        with torch.no_grad():
            p, ids = teacher_topk(torch.nn.functional.linear(sample["hidden"].float(), lm_weight.float()), k)
        sample = {**sample, "teacher_p": p, "teacher_ids": ids}
    return {**sample, "teacher_p": sample["teacher_p"][:, :k].float(), "teacher_ids": sample["teacher_ids"][:, :k].long()}


def hot_vocabulary(samples, size: int, always: set[int]) -> torch.Tensor:
    """The `size` most frequent target greedy next tokens over the loss positions (plus `always`,
    e.g. the end-of-turn ids), sorted by id: the reduced draft vocabulary (FR-Spec / EAGLE-3 style).
    `samples`: any iterable of samples with `teacher_ids` (a FeatureSet streams them)."""
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


def batch_loss(model, embed, draft_lm_weight, batch, cfg: TrainConfig, scale: float = 1.0
               ) -> tuple[torch.Tensor, dict[str, float]]:
    """Total loss of this rank's share of one batch over all aligning steps, and per-step metrics.

    `model`: the head's aligned forward (`AlignedDraft`, possibly wrapped by DDP/FSDP2). Under data
    parallelism every mean is taken over the *global* batch (the counts summed over ranks) and the
    loss multiplied by the world size, which DDP's gradient averaging divides out: the gradients are
    those one process would get on the whole batch. `scale` 0 makes a rank without samples (a short
    last batch) take part in the collective steps without contributing."""
    ids, feats, valid = batch["input_ids"], batch["hidden"], batch["valid"]
    # the pair at t sees x_{t+1}; the last position gets a dummy token and is never counted
    next_ids = torch.cat((ids[:, 1:], ids[:, -1:]), dim=1)
    with torch.no_grad():
        embeds_next = embed(next_ids).float()
    outs = model(embeds_next, feats, valid)
    weights = [step_weight(batch["loss_mask"], valid, j) * scale for j in range(1, len(outs) + 1)]
    counts = torch.stack([torch.stack(c) for c in step_denominators(weights, batch["teacher_idx"][..., 0])])
    _, world = rank_world()
    counts = all_reduce_sum(counts.detach().clone())
    total = torch.zeros((), device=feats.device)
    metrics: dict[str, torch.Tensor] = {}
    for j, (out, w) in enumerate(zip(outs, weights), 1):
        parts = step_losses(out, feats, batch["teacher_p"], batch["teacher_idx"], draft_lm_weight, w,
                            cfg.objective == "hass", (counts[j - 1, 0], counts[j - 1, 1]))
        loss = cfg.regression_weight * parts["regression"] + cfg.ce_weight * parts["ce"]
        if "topk" in parts:
            loss = loss + cfg.distill_weight * parts["topk"]
        total = total + loss
        for k, v in parts.items():
            metrics[f"step{j}/{k}"] = v.detach().float()
    total = total / len(outs)
    metrics["loss"] = total.detach().float()
    # every value is this rank's share of a global-batch mean: their sums over ranks are the global
    # values (one collective on the device, nccl takes no CPU tensors; one host sync per step)
    names = list(metrics)
    values = all_reduce_sum(torch.stack([metrics[k] for k in names]).double()).tolist()
    return total * world, dict(zip(names, values))


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
    on held-out eval questions (`validation_questions`: the last of each set in turn, never among
    the first questions the benchmarks decode): what training is for, logged per checkpoint."""
    from hass_sglang.eval_sets import validation_questions
    from hass_sglang.speculative import SpeculativeDecoder

    dec = SpeculativeDecoder(target, copy.deepcopy(head).eval(), VALIDATION_TREE)
    tokens = forwards = 0
    for _, q in validation_questions(prompts):
        res = dec.generate(target.chat_prompt_ids(q.turns[0]), max_new_tokens)
        tokens += len(res.tokens)
        forwards += res.target_forwards
    return tokens / max(forwards, 1)


def _initial_head(cfg: TrainConfig, parts: TargetParts, features: FeatureSet):
    """The head training starts from: the target's own MTP layer, an existing draft, or a fresh head."""
    if cfg.init_from == INIT_FROM_TARGET:
        if cfg.head != "mtp":
            raise HassError("--init-from target continues the target's own MTP layer: it needs --head mtp")
        if cfg.draft_vocab is not None:
            raise HassError("--draft-vocab cannot change the vocabulary of the target's MTP layer")
        return load_target_mtp_layer(parts.path, parts.config)
    if cfg.init_from:
        head = load_draft(cfg.init_from, parts.config)
        if head.head_type != cfg.head:
            raise HassError(f"--init-from {cfg.init_from} is a {head.head_type} head, not {cfg.head}")
        if cfg.draft_vocab is not None:
            raise HassError("--draft-vocab cannot change the vocabulary of an --init-from draft")
        return head
    if cfg.draft_vocab is not None and is_deepseek(parts.config):
        raise HassError("--draft-vocab: SGLang's DeepseekV3ForCausalLMNextN scores the full vocabulary "
                        "(models/deepseek_nextn.py has no hot_vocab_size); train DeepSeek MTP drafts without it")
    hot = None
    if cfg.draft_vocab is not None:
        lm = parts.lm_head_weight.float()
        hot = hot_vocabulary((_teacher(s, lm, 1) for s in features), cfg.draft_vocab, parts.eos_token_ids)
    return init_for_training(build_head(cfg.head, parts.config, hot_token_ids=hot, seed=cfg.seed))


CHECKPOINT_FORMAT = 2  # 2: unsharded model/optimizer state by parameter name (any world size, DDP or FSDP2)


def train(cfg: TrainConfig, target: Target | TargetParts, progress: bool = True, device: str = "auto",
          parallel: Parallelism = "ddp", save_every: int = 0) -> Path:
    """Train (or resume) and export; returns the exported draft folder.

    `target`: a loaded `Target` (validation tau needs it) or only its `TargetParts` (embedding,
    lm_head, config: how big targets train). `device`: auto | cpu | cuda[:N]; `parallel`: the engine
    under torchrun, ddp or fsdp (FSDP2). `save_every`: also checkpoint (and validate) every that many
    steps inside an epoch (0: at epoch ends only); not a training setting: it never changes the weights."""
    if save_every < 0:
        raise HassError(f"save_every must be >= 0 steps, got {save_every}")
    dev = resolve_device(device)
    init_distributed(dev)
    rank, world = rank_world()
    parts = target if isinstance(target, TargetParts) else TargetParts.of(target)
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    ckpt = out / "checkpoint.pt"
    settings = cfg.model_dump(mode="json")
    claim_run_settings(out / "train_config.json", settings, HassError, write=False)
    barrier()  # every rank checked the config before rank 0 writes it
    if rank == 0:
        claim_run_settings(out / "train_config.json", settings, HassError)

    features = FeatureSet(cfg.features, int(parts.config.hidden_size))
    if len(features) == 0:
        raise HassError(f"{cfg.features} holds no samples: nothing to train on")
    head = _initial_head(cfg, parts, features).float()
    template = copy.deepcopy(head) if rank == 0 else None  # rank 0 rebuilds the full head from states
    head.to(dev)
    broadcast_parameters(head)  # on the device (nccl); identical starting weights whatever each rank's RNG did
    lm_weight = parts.lm_head_weight.to(dev, torch.float32)
    embed_weight = parts.embed_weight.to(dev)
    vocab_size = lm_weight.shape[0]
    if head.hot_token_ids is None:
        vocab_map = torch.arange(vocab_size)
    else:
        vocab_map = torch.full((vocab_size,), -1, dtype=torch.long)
        vocab_map[head.hot_token_ids] = torch.arange(head.hot_token_ids.numel())
    draft_lm_weight = head.draft_lm_head_weight(lm_weight)
    model = parallelize(AlignedDraft(head.train(), cfg.steps), parallel, dev)
    global_batch = cfg.batch_size * world
    steps_per_epoch = math.ceil(len(features) / global_batch)  # FeatureSet.batches: one may be short
    total_steps = steps_per_epoch * cfg.epochs
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay, betas=(0.9, 0.95))

    def lr_at(step: int) -> float:  # linear warmup, cosine decay
        if step < cfg.warmup_steps:
            return (step + 1) / cfg.warmup_steps
        frac = (step - cfg.warmup_steps) / max(total_steps - cfg.warmup_steps, 1)
        return 0.5 * (1 + math.cos(math.pi * min(frac, 1.0)))

    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_at)
    # position: completed epochs + steps done in the current one; `window`: metric sums since the last curve point
    start_epoch, start_step, history, curve, sums, window = 0, 0, [], [], {}, {}
    if ckpt.is_file():
        state = torch.load(ckpt, weights_only=False, map_location="cpu", mmap=True)
        if state.get("format") != CHECKPOINT_FORMAT:
            raise HassError(f"{ckpt} was written by an older hass train; finish it with that version or use a new --out")
        load_full_state(model, opt, state["model"], state["optimizer"])
        sched.load_state_dict(state["scheduler"])
        start_epoch, history = state["epoch"], state["history"]
        start_step, curve = state.get("step_in_epoch", 0), state.get("curve", [])
        sums, window = state.get("sums", {}), state.get("window", {})
        del state
    best = max((p for p in curve if "val_tau" in p), key=lambda p: p["val_tau"], default=None)

    def checkpoint(epochs_done: int, step_in_epoch: int) -> None:
        """Add a curve point (validated with val_prompts; a new best is exported to best/) and save
        the state atomically. A collective: every rank calls it, rank 0 validates and writes."""
        nonlocal best
        model_state, optim_state = full_state(model, opt)
        n = window.pop("steps")
        done = epochs_done * steps_per_epoch + step_in_epoch
        point = {"step": done, "epoch": round(done / steps_per_epoch, 4), **{k: v / n for k, v in window.items()}}
        window.clear()
        if rank > 0:
            return
        template.load_state_dict(_unprefixed(model_state))
        if cfg.val_prompts and isinstance(target, Target):
            point["val_tau"] = validation_tau(target, template, cfg.val_prompts, cfg.val_max_new_tokens)
            if best is None or point["val_tau"] > best["val_tau"]:
                best = point
                _export(template, out / "best", cfg, parts, len(features), history, curve + [point], world, parallel,
                        dev, best)
        curve.append(point)
        if step_in_epoch == 0 and "val_tau" in point:
            history[-1]["val_tau"] = point["val_tau"]
        print(f"[train] step {done}/{total_steps}: " + ", ".join(
            f"{k} {v:.3f}" for k, v in point.items() if k == "loss" or k.endswith(("top1", "val_tau"))), flush=True)
        save_torch_atomic(ckpt, {"format": CHECKPOINT_FORMAT, "model": model_state, "optimizer": optim_state,
                                 "scheduler": sched.state_dict(), "epoch": epochs_done, "step_in_epoch": step_in_epoch,
                                 "history": history, "curve": curve, "sums": sums, "window": window})

    autocast = autocast_for(cfg.precision, dev)
    t_start = time.perf_counter()
    for epoch in range(start_epoch, cfg.epochs):
        batches = features.batches(cfg.seed, epoch, global_batch, cfg.length_grouped)
        first = start_step if epoch == start_epoch else 0
        if first == 0:
            sums = {}
        bar = tqdm(range(first, steps_per_epoch), initial=first, total=steps_per_epoch,
                   desc=f"epoch {epoch + 1}/{cfg.epochs}", disable=not progress or rank > 0)
        for i in bar:
            chunk = batches[i]
            mine = chunk[rank::world]
            scale = 1.0 if mine else 0.0  # a short last batch: a spare rank joins the collectives with weight 0
            samples = [_teacher(features.sample(*key), parts.lm_head_weight, cfg.distill_topk) for key in mine or chunk[:1]]
            batch = {k: v.to(dev, non_blocking=True) for k, v in _batch(samples, vocab_map).items()}
            with autocast:
                loss, metrics = batch_loss(model, lambda ids: torch.nn.functional.embedding(ids, embed_weight),
                                           draft_lm_weight, batch, cfg, scale)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
            opt.step()
            sched.step()
            for k, v in metrics.items():
                sums[k] = sums.get(k, 0.0) + v
                window[k] = window.get(k, 0.0) + v
            window["steps"] = window.get("steps", 0) + 1
            bar.set_postfix(loss=f"{metrics['loss']:.3f}", top1=f"{metrics['step1/top1']:.3f}")
            if save_every and (i + 1) % save_every == 0 and i + 1 < steps_per_epoch:
                checkpoint(epoch, i + 1)
        history.append({"epoch": epoch + 1, **{k: v / steps_per_epoch for k, v in sums.items()}})
        checkpoint(epoch + 1, 0)
    seconds = time.perf_counter() - t_start
    export = out / "draft"
    if start_epoch == cfg.epochs and rank == 0:  # resumed a finished run: the weights come from the checkpoint
        template.load_state_dict(_unprefixed(full_state(model, opt)[0]))
    elif start_epoch == cfg.epochs:
        full_state(model, opt)
    barrier()
    if rank > 0:
        return export
    _export(template, export, cfg, parts, len(features), history, curve, world, parallel, dev, best, seconds)
    return export


def _export(head, folder: Path, cfg: TrainConfig, parts: TargetParts, samples: int, history: list, curve: list,
            world: int, parallel: str, dev: torch.device, best: dict | None, seconds: float | None = None) -> None:
    """The head as an SGLang draft folder in the dtype SGLang serves the target in, with the run's curves."""
    metadata = {
        "objective": cfg.objective, "align_steps": cfg.steps, "epochs": cfg.epochs, "samples": samples,
        "init_from": cfg.init_from, "history": history, "curve": curve,
        "best": None if best is None else {"step": best["step"], "epoch": best["epoch"], "val_tau": best["val_tau"]},
        "world_size": world, "parallel": parallel if world > 1 else None, "device": dev.type,
    }
    if seconds is not None:
        metadata["train_seconds_last_session"] = round(seconds, 1)
    save_draft(head.eval(), folder, parts.config, metadata=metadata, dtype=parts.checkpoint_dtype)
    head.train()


def _unprefixed(model_state: dict) -> dict:
    """AlignedDraft's state (`head.*`) as the head's own."""
    return {k.removeprefix("head."): v for k, v in model_state.items()}
