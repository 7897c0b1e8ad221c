"""`--dry-run` for `hass features` / `hass train` on big targets: a plan on paper from config.json
alone (no weights), with the real draft head built on the meta device.

What is computed, and from what:
- parameter counts: the head is `heads.build_head` on `torch.device("meta")` (the module training
  builds, so the count is the trained one: a DeepSeek MTP layer with all its routed experts), the
  target is transformers' `AutoModelForCausalLM.from_config` on meta (0.1 s for DeepSeek-R1's 671B;
  transformers has no MTP module, so the checkpoint's own `model.layers.61` is not in that count);
- feature bytes per token: exactly what `features._shard` stores per position;
- GPU memory per rank for DDP and FSDP2, modelled on the trainer as it is (`trainer.train`,
  `distributed.parallelize`) on CUDA: fp32 master weights, fp32 gradients, AdamW's two fp32 moments;
  DDP also keeps its gradient buckets (`gradient_as_bucket_view` is off) and runs on fp32 weights
  under bf16 autocast; FSDP2 shards every parameter on dim 0 and, under `parallelize`'s
  `MixedPrecisionPolicy(param_dtype=bfloat16, reduce_dtype=float32)`, all-gathers one decoder layer
  at a time in bf16 and reduce-scatters its gradients in fp32 (`Fsdp2UnitBytes`); every rank holds
  the target's embedding and lm_head in fp32 (`load_target_parts`, `lm_weight`); activations of the
  bf16-autocast step, per the formulas of `estimate_activations` (which differ by engine: FSDP2's
  forward sees bf16 weights, so autocast copies none of them).

Activations are an estimate, not a measurement: the per-token terms are counted from the tensors the
aligned forward saves for backward (checked against `torch.autograd.graph.saved_tensors_hooks` on
tiny heads in tests/test_train_plan.py, plain and under `fully_shard` with the trainer's policy), the
token-independent terms from what bf16 autocast copies. Memory terms are summed into one peak: an
upper bound, since some of them (an expert's zero gradient, the reduce-scatter input) never coexist.
"""

from __future__ import annotations

import copy
import math
import shlex
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch

from hass_sglang.errors import ConfigError
from hass_sglang.heads import DraftHead, HeadType, build_head, is_deepseek
from hass_sglang.train.distributed import Parallelism

FeaturesEngine = Literal["transformers", "sglang"]

GIB = 2**30
FP32, BF16 = 4, 2
STORAGE_BYTES = {"float32": 4, "bfloat16": 2}
# CUDA context, NCCL communicator buffers and allocator slack are not in any tensor count.
RESERVED_GIB = 2.0
MASTER_PORT = 29500

TARGET_CONFIG_DIR = Path(__file__).parent / "target_configs"
# The targets whose config.json ships with the package (README.md there: sources), by hub id.
SHIPPED_TARGETS = {
    "meta-llama/Llama-3.1-8B-Instruct": "llama-3.1-8b-instruct.json",
    "deepseek-ai/DeepSeek-R1": "deepseek-r1.json",
}


def shipped_target_config(name: str):
    """The transformers config of a shipped target, by hub id or file stem (offline: no hub)."""
    from transformers import AutoConfig

    by_stem = {Path(f).stem: f for f in SHIPPED_TARGETS.values()}
    file = SHIPPED_TARGETS.get(name) or by_stem.get(name.lower())
    if file is None:
        raise ConfigError(f"no shipped config for {name!r}; shipped: {sorted(SHIPPED_TARGETS)}")
    return AutoConfig.from_pretrained(TARGET_CONFIG_DIR / file)


@dataclass(frozen=True)
class RunPaths:
    """What the printed commands name: the target reference and the run's files."""

    target: str = "<target>"
    data: str = "data.json"
    features: str = "features"
    out: str = "run"
    endpoint: str = "http://<sglang-server>:30000"


@dataclass(frozen=True)
class FeatureBytes:
    """Bytes one stored position costs in a feature shard (`features._shard`)."""

    hidden: int  # the post-norm feature in the storage dtype
    teacher_p: int  # top-K probabilities, float32
    teacher_ids: int  # top-K ids, int32
    input_id: int  # int32
    loss_mask: int  # uint8
    per_sample: int = 8  # one int64 offsets entry per sample

    @property
    def per_token(self) -> int:
        return self.hidden + self.teacher_p + self.teacher_ids + self.input_id + self.loss_mask


def feature_bytes(hidden_size: int, storage_dtype: str, teacher_topk: int) -> FeatureBytes:
    return FeatureBytes(hidden=hidden_size * STORAGE_BYTES[storage_dtype], teacher_p=teacher_topk * 4,
                        teacher_ids=teacher_topk * 4, input_id=4, loss_mask=1)


@dataclass(frozen=True)
class HeadShape:
    """Parameter counts of the head that decide memory, read off the module built on meta."""

    params: int
    largest_layer: int  # the biggest FSDP2 unit (`parallelize` shards each decoder layer)
    root: int  # parameters outside the layers (fc / eh_proj, norms): FSDP2's root unit
    experts: int  # routed-expert parameters (MoE heads), 0 otherwise
    largest_expert_tensor: int  # numel of the biggest fused expert tensor (gate_up_proj)
    world: int
    sharded: int  # per-rank numel under FSDP2 over `world` ranks

    @property
    def dense(self) -> int:
        return self.params - self.experts


def meta_head(kind: HeadType, target_config) -> DraftHead:
    """The draft head `hass train` builds, on the meta device: shapes and counts, no memory. seed=None
    keeps the caller's global RNG untouched (meta init draws nothing anyway)."""
    with torch.device("meta"):
        return build_head(kind, target_config, hot_token_ids=None, seed=None)


def fsdp_shard_numel(shape: torch.Size, world: int) -> int:
    """Per-rank numel of one parameter under FSDP2: dim 0 split in `world` padded chunks."""
    rest = math.prod(shape[1:]) if len(shape) > 1 else 1
    return math.ceil(shape[0] / world) * rest if len(shape) else 1


def head_shape(head: DraftHead, world: int) -> HeadShape:
    params = sum(p.numel() for p in head.parameters())
    layers = [sum(p.numel() for p in layer.parameters()) for layer in head.layers]
    expert_tensors = [p.numel() for layer in head.layers if hasattr(layer.mlp, "experts")
                      for p in layer.mlp.experts.parameters()]
    sharded = sum(fsdp_shard_numel(p.shape, world) for p in head.parameters())
    return HeadShape(params=params, largest_layer=max(layers), root=params - sum(layers),
                     experts=sum(expert_tensors), largest_expert_tensor=max(expert_tensors, default=0),
                     world=world, sharded=sharded)


def count_target_params(target_config) -> int:
    """The target's parameters, counted on meta (transformers' model: without a DeepSeek MTP layer)."""
    from transformers import AutoModelForCausalLM

    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(copy.deepcopy(target_config))
    return sum(p.numel() for p in model.parameters())


# ---------------------------------------------------------------------------------------------
# activations
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SavedElements:
    """Elements per token per aligning step that backward keeps: in the compute dtype, and in fp32
    (RMSNorm upcasts its input and keeps the normalised fp32 tensor)."""

    compute: int
    fp32: int


def _norm(dim: int) -> SavedElements:
    return SavedElements(0, 2 * dim)


def _add(*parts: SavedElements) -> SavedElements:
    return SavedElements(sum(p.compute for p in parts), sum(p.fp32 for p in parts))


def llama_layer_elements(cfg, cache_steps: float, input_norm: bool) -> SavedElements:
    """A Llama decoder layer: q/k/v input, RoPE (q, k and their rotate_half), SDPA's q, cached k/v
    (`cache_steps` steps' worth on average: HASS step j attends to the keys of steps 1..j) and
    output, o_proj input, the MLP's input, gate, up, silu(gate) and product."""
    h, i = cfg.hidden_size, cfg.intermediate_size
    head_dim = getattr(cfg, "head_dim", None) or h // cfg.num_attention_heads
    q, kv = cfg.num_attention_heads * head_dim, cfg.num_key_value_heads * head_dim
    attention = h + 2 * q + 2 * kv + q + 2 * kv * cache_steps + q + q
    mlp = h + 4 * i
    norms = _add(_norm(h), _norm(h) if input_norm else SavedElements(0, 0))
    return _add(SavedElements(int(attention + mlp), 0), norms)


def deepseek_layer_elements(cfg, cache_steps: float) -> SavedElements:
    """A DeepSeek-V3 layer: MLA (low-rank q and kv projections with their norms, RoPE on the rope
    part, concatenated q/k, cached k/v, output) and MoE (router, per routed expert its gathered
    input, gate_up, silu, product and weighted output; the shared expert)."""
    h, heads = cfg.hidden_size, cfg.num_attention_heads
    nope, rope, v = cfg.qk_nope_head_dim, cfg.qk_rope_head_dim, cfg.v_head_dim
    qk, q_lora, kv_lora = nope + rope, cfg.q_lora_rank, cfg.kv_lora_rank
    q_path = (2 * q_lora if q_lora else 0) + heads * qk + 2 * heads * rope
    kv_path = (kv_lora + rope) + kv_lora + heads * (nope + v) + 2 * rope
    sdpa = heads * qk + heads * qk * cache_steps + heads * v * cache_steps + heads * v + heads * v
    inter = cfg.moe_intermediate_size
    moe = cfg.n_routed_experts + cfg.num_experts_per_tok * (2 * h + 4 * inter) + h + 4 * inter * cfg.n_shared_experts
    norms = _add(_norm(h), _norm(h), _norm(q_lora) if q_lora else SavedElements(0, 0), _norm(kv_lora))
    return _add(SavedElements(int(h + q_path + kv_path + sdpa + moe), 0), norms)


def head_elements(head: DraftHead, steps: int) -> SavedElements:
    """Per token per aligning step, for the whole head (input fusion, layers, final norm)."""
    cfg, h = head.config, head.hidden_size
    cache_steps = (steps + 1) / 2
    if head.head_type == "eagle":  # fc([e; f]) into a layer without input norm, no final norm
        fuse, final = SavedElements(2 * h, 0), SavedElements(0, 0)
    else:  # enorm(e), hnorm(f), eh_proj, ..., shared_head.norm
        fuse, final = _add(SavedElements(2 * h, 0), _norm(h), _norm(h)), _norm(h)
    if is_deepseek(cfg):
        layer = deepseek_layer_elements(cfg, cache_steps)
    else:
        layer = llama_layer_elements(cfg, cache_steps, input_norm=head.head_type != "eagle")
    return _add(fuse, *([layer] * len(head.layers)), final)


@dataclass(frozen=True)
class ActivationEstimate:
    """Bytes one rank keeps for backward during one step (all aligning steps), and the transient
    peak on top of them."""

    layers: int  # the head's saved tensors, per token per step
    loss: int  # two fp32 log-softmax outputs over the vocabulary (CE, top-K distillation), SmoothL1's fp32 operands
    mask: int  # the fp32 alignment mask [B, 1, T, j*T] of each step j
    lm_head_copies: int  # a bf16 copy of the fp32 lm_head per step (F.linear keeps it for backward)
    expert_copies: int  # a bf16 copy of every routed expert per step (the eager expert loop casts a slice each call)
    autocast_cache: int  # bf16 copies of the head's other (leaf) parameters, cast once per step
    transient: int  # the larger of: one step's logits (fp32 + bf16), one expert's full-size zero gradient

    @property
    def saved(self) -> int:
        return self.layers + self.loss + self.mask + self.lm_head_copies + self.expert_copies + self.autocast_cache

    @property
    def total(self) -> int:
        return self.saved + self.transient


def estimate_activations(head: DraftHead, shape: HeadShape, *, batch_size: int, max_length: int, steps: int,
                         vocab_size: int, compute_bytes: int = BF16, autocast: bool = True,
                         bf16_weights: bool = False) -> ActivationEstimate:
    """Activations of one training step of `batch_size` sequences padded to `max_length` on one rank.

    Per token per step: the head's saved tensors (`head_elements`, compute dtype / fp32), 8 x V + 8 x H
    bytes for the losses (cross-entropy and top-K distillation each keep an fp32 log-softmax over
    the vocabulary; SmoothL1 keeps the fp32 next-feature target and a difference) and
    4 x T x (steps + 1) / 2 bytes for the mask. Per step, independent of tokens, under bf16 autocast
    only (fp32 weights are otherwise used in place): a bf16 lm_head copy (2 V H) and, for MoE heads,
    a bf16 copy of each routed expert (2 x experts: with B x T x top-k routings >= experts every
    expert is hit). Once: autocast's cache of the dense parameters (2 x dense). Transient: one
    step's logits, fp32 + bf16 (6 V bytes per token), or one expert's backward, whose `select`
    allocates the full fused expert tensor as a zero gradient in the weights' dtype (4 x largest
    expert tensor in fp32).

    `bf16_weights`: the forward sees bf16 parameters, as under FSDP2 with `parallelize`'s policy on
    CUDA (`param_dtype=bfloat16`). Autocast then copies none of the head's weights (no expert copies,
    no weight cache: a slice of a bf16 parameter is a view of the all-gathered unit, already counted
    in `Fsdp2UnitBytes`), the root casts its float inputs to bf16 (`cast_forward_inputs`), so the
    masks, built in the embeddings' dtype, are bf16, and the expert's zero gradient is bf16. The
    frozen fp32 lm_head is outside the wrapped module: its per-step bf16 copy stays."""
    tokens = batch_size * max_length
    el = head_elements(head, steps)
    per_token_layers = el.compute * compute_bytes + el.fp32 * FP32
    logits_bytes = (FP32 + (BF16 if autocast else 0)) * vocab_size
    copies = autocast and not bf16_weights
    mask_bytes, grad_bytes = (BF16, BF16) if bf16_weights else (FP32, FP32)
    return ActivationEstimate(
        layers=steps * tokens * per_token_layers,
        loss=steps * tokens * 2 * FP32 * (vocab_size + head.hidden_size),
        mask=batch_size * mask_bytes * max_length * max_length * steps * (steps + 1) // 2,
        lm_head_copies=steps * BF16 * vocab_size * head.hidden_size if autocast else 0,
        expert_copies=steps * BF16 * shape.experts if copies else 0,
        autocast_cache=BF16 * shape.dense if copies else 0,
        transient=max(tokens * logits_bytes, grad_bytes * shape.largest_expert_tensor),
    )


# ---------------------------------------------------------------------------------------------
# memory per GPU, host memory
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Fsdp2UnitBytes:
    """Bytes per parameter of an FSDP2 unit (one `fully_shard`-ed decoder layer) while it is
    unsharded, under `distributed.parallelize`'s policy on CUDA, `MixedPrecisionPolicy(param_dtype=
    bfloat16, reduce_dtype=float32)`, as torch 2.14's `torch/distributed/fsdp/_fully_shard/` runs it:

    - `weights`: the all-gather outputs, in param_dtype: the forward and backward use these bf16
      tensors (the fp32 shards stay the master weights the optimizer steps);
    - `staging`: the flat all-gather buffer, in param_dtype, copied out per parameter
      (`split_with_sizes_copy`); in backward freed right after the copy-out, in forward kept until
      the next unshard's wait (two flat buffers then, with no gradients: under the backward peak);
    - `grads`: autograd's gradient of the unsharded parameter, in its dtype, bf16. A layer the HASS
      forward calls once per aligning step is one leaf for autograd: its gradient is summed over the
      steps (in bf16) and reduced once, at the post-backward of its first call (the last to run);
    - `reduce_input`: the reduce-scatter input in reduce_dtype, fp32: `foreach_reduce` allocates it
      after the unit is resharded (the bf16 weights are freed first), casts the bf16 gradients into
      it (`chunk_cat`), then frees them; FSDP2 keeps it referenced until the next unit's
      post-backward (`reduce_scatter_max_input_buffers`, default 1). The reduced fp32 shard becomes
      (or is added to) the sharded fp32 gradient.

    The unit's peak is the larger of two moments: a later step's re-gather in backward (weights,
    staging and the gradients summed so far) and the copy-in (gradients and reduce-scatter input).
    FSDP2's root (the parameters outside the layers) is not resharded after forward: its bf16
    weights and gradients live through backward, beside the layer's peak. Every head `build_head`
    makes has one decoder layer, so no other layer's reduce-scatter input is alive at that peak."""

    weights: int = BF16
    staging: int = BF16
    grads: int = BF16
    reduce_input: int = FP32

    @property
    def unit_peak(self) -> int:
        return self.grads + max(self.weights + self.staging, self.reduce_input)

    @property
    def root(self) -> int:
        return self.weights + self.grads


FSDP2_CUDA = Fsdp2UnitBytes()


@dataclass(frozen=True)
class MemoryEstimate:
    """Bytes per GPU under one engine."""

    parallel: str
    weights: int  # fp32 master weights (a shard under FSDP2)
    grads: int  # fp32 gradients (a shard under FSDP2)
    optimizer: int  # AdamW exp_avg + exp_avg_sq, fp32
    ddp_buckets: int  # DDP's flat gradient buckets (a second gradient copy)
    fsdp_unsharded: int  # FSDP2: the largest layer unsharded (`Fsdp2UnitBytes`), the root's bf16 weights + grads
    frozen_target: int  # embedding + lm_head, fp32 (both, even when tied: two `.to(device)` copies)
    activations: int  # this engine's `ActivationEstimate.total`
    init_peak: int  # before the first step: the whole fp32 head on the GPU (moved before `fully_shard`)

    @property
    def states(self) -> int:
        return self.weights + self.grads + self.optimizer

    @property
    def step_peak(self) -> int:
        return self.states + self.ddp_buckets + self.fsdp_unsharded + self.frozen_target + self.activations

    @property
    def peak(self) -> int:
        return max(self.step_peak, self.init_peak)


def memory_per_gpu(parallel: Parallelism, shape: HeadShape, world: int, frozen_target: int,
                   activations: int, fsdp_bytes: Fsdp2UnitBytes = FSDP2_CUDA) -> MemoryEstimate:
    """DDP replicates the head and its optimizer; FSDP2 shards them over the world (a world of one
    runs unwrapped: `parallelize` returns the module as is). The init peak: the fp32 head moved to
    the GPU whole (`trainer.train` moves it before `broadcast_parameters` and `parallelize`) beside
    the frozen target; `fully_shard` copies the shards out of it and the originals are freed when it
    returns, so FSDP2 adds the fp32 shards."""
    full = shape.params
    if parallel == "fsdp" and world > 1:
        shard = shape.sharded
        unsharded = fsdp_bytes.unit_peak * shape.largest_layer + fsdp_bytes.root * shape.root
        return MemoryEstimate("fsdp", FP32 * shard, FP32 * shard, 2 * FP32 * shard, 0, unsharded, frozen_target,
                              activations, FP32 * (full + shard) + frozen_target)
    buckets = FP32 * full if parallel == "ddp" and world > 1 else 0
    return MemoryEstimate(parallel, FP32 * full, FP32 * full, 2 * FP32 * full, buckets, 0, frozen_target,
                          activations, FP32 * full + frozen_target)


def frozen_target_bytes(vocab_size: int, hidden_size: int) -> int:
    return 2 * FP32 * vocab_size * hidden_size


def host_bytes_per_node(shape: HeadShape, gpus_per_node: int, vocab_size: int, hidden_size: int, tied: bool) -> int:
    """Node 0's RAM at its peak: every rank builds the fp32 head and reads the embedding and lm_head
    in fp32 on the CPU; rank 0 also keeps a template copy of the head and, when it checkpoints, the
    full model and optimizer state (12 bytes per parameter)."""
    parts = (1 if tied else 2) * FP32 * vocab_size * hidden_size
    return gpus_per_node * (FP32 * shape.params + parts) + FP32 * shape.params + 3 * FP32 * shape.params


# ---------------------------------------------------------------------------------------------
# the plan
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TrainingPlan:
    target: str
    model_type: str
    head: str
    gpus_per_node: int
    nodes: int
    parallel: str
    batch_size: int
    max_length: int
    align_steps: int
    storage_dtype: str
    teacher_topk: int
    gpu_memory_gib: float
    hidden_size: int
    vocab_size: int
    target_params: int
    shape: HeadShape
    features: FeatureBytes
    activations: ActivationEstimate  # DDP (and a world of one): fp32 weights under bf16 autocast
    fsdp_activations: ActivationEstimate  # FSDP2 on CUDA: bf16-gathered weights (`bf16_weights`)
    ddp: MemoryEstimate
    fsdp: MemoryEstimate
    host_bytes_per_node: int
    features_engine: str
    commands: tuple[tuple[str, str], ...]  # (what it does, the command line)
    seconds: float  # how long planning took

    @property
    def world(self) -> int:
        return self.gpus_per_node * self.nodes

    @property
    def usable_bytes(self) -> int:
        return int((self.gpu_memory_gib - RESERVED_GIB) * GIB)

    @property
    def memory(self) -> MemoryEstimate:
        return self.fsdp if self.parallel == "fsdp" else self.ddp

    def fits(self, parallel: str | None = None) -> bool:
        mem = self.memory if parallel is None else (self.fsdp if parallel == "fsdp" else self.ddp)
        return mem.peak <= self.usable_bytes


def _features_engine(target_params: int, gpu_memory_gib: float) -> FeaturesEngine:
    """transformers on every GPU (data-parallel under torchrun) while the bf16 target fits one GPU
    beside its activations (half the card); a bigger target runs where it is served, in SGLang."""
    return "transformers" if BF16 * target_params <= 0.5 * (gpu_memory_gib - RESERVED_GIB) * GIB else "sglang"


def _torchrun(gpus_per_node: int, nodes: int) -> list[str]:
    if nodes == 1:
        return ["torchrun", "--standalone", "--nproc-per-node", str(gpus_per_node)]
    # static rendezvous: node ranks are given (e.g. a Job's completion index), node 0 is the master
    return ["torchrun", "--nnodes", str(nodes), "--nproc-per-node", str(gpus_per_node), "--node-rank", "$NODE_RANK",
            "--master-addr", "$MASTER_ADDR", "--master-port", str(MASTER_PORT)]


def _shell(argv: list[str]) -> str:
    """A pasteable line: arguments quoted, the $NODE_RANK / $MASTER_ADDR references left to the shell."""
    return " ".join(a if a.startswith("$") else shlex.quote(a) for a in argv)


def plan_commands(paths: RunPaths, *, head: HeadType, parallel: Parallelism, gpus_per_node: int, nodes: int,
                  batch_size: int, max_length: int, align_steps: int, storage_dtype: str, teacher_topk: int,
                  engine: FeaturesEngine, init_from_target: bool) -> tuple[tuple[str, str], ...]:
    """(what it does, command line) of each step: features (an SGLang server and `hass features
    --engine sglang`, or transformers under torchrun), then `torchrun ... train`."""
    feature_args = ["--target", paths.target, "--data", paths.data, "--out", paths.features, "--max-length",
                    str(max_length), "--storage-dtype", storage_dtype, "--teacher-topk", str(teacher_topk)]
    if engine == "sglang":
        server = ["python3", "-m", "sglang.launch_server", "--model-path", paths.target,
                  "--enable-return-hidden-states", "--disable-radix-cache",
                  "--chunked-prefill-size", str(max(max_length, 8192))]
        features = ("features from the SGLang server (one process; the server holds the target)",
                    _shell(["hass", "features", "--engine", "sglang", "--endpoint", paths.endpoint, *feature_args]))
        cmds = [("the target, served for features (add its --tp-size / --nnodes as for serving; no prefix reuse, "
                 "whole-prompt prefill: SGLangHiddenStates checks both)", _shell(server)), features]
    else:
        cmds = [("features with the target on every GPU (data-parallel shards; run on each node)",
                 _shell([*_torchrun(gpus_per_node, nodes), "-m", "hass_sglang.cli", "features", *feature_args,
                         "--device", "cuda", "--target-dtype", "bfloat16"]))]
    train = [*_torchrun(gpus_per_node, nodes), "-m", "hass_sglang.cli", "train", "--target", paths.target,
             "--features", paths.features, "--out", paths.out, "--head", head, "--parallel", parallel,
             "--device", "cuda", "--batch-size", str(batch_size)]
    objective = ["--objective", "hass", "--align-steps", str(align_steps)] if align_steps > 1 else ["--objective", "eagle2"]
    train += objective
    if teacher_topk:
        train += ["--distill-topk", str(teacher_topk)]  # what the features store: no top-K recomputed from the lm_head
    if init_from_target:
        train += ["--init-from", "target"]  # continue the target's own MTP layer (the DeepSeek-R1 recipe)
    cmds.append((f"train ({'run on each node' if nodes > 1 else 'one node'})", _shell(train)))
    return tuple(cmds)


def plan_training(
    target_config,
    *,
    head: HeadType = "eagle",
    gpus_per_node: int,
    nodes: int,
    parallel: Parallelism,
    batch_size: int,
    max_length: int,
    storage_dtype: str = "bfloat16",
    teacher_topk: int = 10,
    gpu_memory_gib: float = 80.0,
    align_steps: int = 3,
    paths: RunPaths | None = None,
) -> TrainingPlan:
    """The plan for training a `head` draft of this target on nodes x gpus_per_node GPUs.

    `target_config`: the target's transformers config (`load_target_config`, `shipped_target_config`).
    `batch_size`: sequences per GPU per step (`hass train --batch-size`); `max_length`: tokens per
    sequence (`hass features --max-length`); `align_steps`: HASS n (1 = EAGLE-2)."""
    started = time.perf_counter()
    if head not in ("eagle", "mtp") or parallel not in ("ddp", "fsdp") or storage_dtype not in STORAGE_BYTES:
        raise ConfigError(f"head eagle|mtp, parallel ddp|fsdp, storage_dtype {'|'.join(STORAGE_BYTES)}; "
                          f"got {head!r}, {parallel!r}, {storage_dtype!r}")
    if min(gpus_per_node, nodes, batch_size, max_length, align_steps) < 1 or teacher_topk < 0 \
            or gpu_memory_gib <= RESERVED_GIB:
        raise ConfigError("gpus_per_node, nodes, batch_size, max_length, align_steps must be >= 1, teacher_topk >= 0, "
                          f"gpu_memory_gib > {RESERVED_GIB}")
    world = gpus_per_node * nodes
    module = meta_head(head, target_config)
    shape = head_shape(module, world)
    hidden, vocab = int(target_config.hidden_size), int(target_config.vocab_size)
    activations = estimate_activations(module, shape, batch_size=batch_size, max_length=max_length, steps=align_steps,
                                       vocab_size=vocab)
    # a world of one runs unwrapped (`parallelize`): fp32 weights, as under DDP
    fsdp_activations = estimate_activations(module, shape, batch_size=batch_size, max_length=max_length,
                                            steps=align_steps, vocab_size=vocab, bf16_weights=world > 1)
    frozen = frozen_target_bytes(vocab, hidden)
    target_params = count_target_params(target_config)
    engine = _features_engine(target_params, gpu_memory_gib)
    name = paths.target if paths else _target_name(target_config)
    paths = paths or RunPaths(target=name)
    commands = plan_commands(paths, head=head, parallel=parallel, gpus_per_node=gpus_per_node, nodes=nodes,
                             batch_size=batch_size, max_length=max_length, align_steps=align_steps,
                             storage_dtype=storage_dtype, teacher_topk=teacher_topk, engine=engine,
                             init_from_target=head == "mtp" and is_deepseek(target_config))
    return TrainingPlan(
        target=name, model_type=str(target_config.model_type), head=head, gpus_per_node=gpus_per_node, nodes=nodes,
        parallel=parallel, batch_size=batch_size, max_length=max_length, align_steps=align_steps,
        storage_dtype=storage_dtype, teacher_topk=teacher_topk, gpu_memory_gib=gpu_memory_gib, hidden_size=hidden,
        vocab_size=vocab, target_params=target_params, shape=shape,
        features=feature_bytes(hidden, storage_dtype, teacher_topk), activations=activations,
        fsdp_activations=fsdp_activations,
        ddp=memory_per_gpu("ddp", shape, world, frozen, activations.total),
        fsdp=memory_per_gpu("fsdp", shape, world, frozen, fsdp_activations.total),
        host_bytes_per_node=host_bytes_per_node(shape, gpus_per_node, vocab, hidden,
                                                bool(getattr(target_config, "tie_word_embeddings", False))),
        features_engine=engine, commands=commands, seconds=time.perf_counter() - started,
    )


def _target_name(target_config) -> str:
    """The hub id of a shipped config, else the folder it was read from."""
    where = str(getattr(target_config, "_name_or_path", "") or "")
    for hub_id, file in SHIPPED_TARGETS.items():
        if where.endswith(file):
            return hub_id
    return where or "<target>"


# ---------------------------------------------------------------------------------------------
# rendering
# ---------------------------------------------------------------------------------------------


def _b(n: int) -> str:
    return f"{n / 1e9:.2f} B" if n >= 1e9 else f"{n / 1e6:.1f} M"


def _gib(n: int) -> str:
    return f"{n / GIB:.1f}"


def render(plan: TrainingPlan) -> str:
    """The plan as Markdown: one table of sizes, one of memory per GPU (DDP and FSDP2), one of the
    activations behind it, the commands."""
    s, f = plan.shape, plan.features
    engine = {"ddp": "DDP", "fsdp": "FSDP2"}
    tokens = plan.batch_size * plan.max_length
    experts = f"; routed experts {_b(s.experts)}" if s.experts else ""
    target_note = " (transformers' model: the checkpoint's own MTP layer is not in it)" if is_deepseek(plan) else ""
    lines = [
        f"### {plan.target}: {plan.head} head, {plan.nodes} node{'s' if plan.nodes > 1 else ''} x "
        f"{plan.gpus_per_node} GPUs ({plan.gpu_memory_gib:g} GiB), {engine[plan.parallel]}",
        "",
        "| | |",
        "|---|---|",
        f"| target parameters | {_b(plan.target_params)}{target_note} |",
        f"| head parameters (trainable) | {_b(s.params)} (largest FSDP2 unit {_b(s.largest_layer)}{experts}) |",
        f"| feature bytes per token | {f.per_token:,} = hidden {plan.hidden_size} x "
        f"{STORAGE_BYTES[plan.storage_dtype]} "
        f"({plan.storage_dtype}) + top-{plan.teacher_topk} probs {f.teacher_p} (fp32) + ids {f.teacher_ids} (int32) "
        f"+ input_id 4 + loss_mask 1 (+ {f.per_sample} per sample) |",
        f"| features for 1M tokens | {f.per_token * 1e6 / 1e9:.2f} GB |",
        f"| features from | {plan.features_engine} |",
        f"| step | {plan.batch_size} x {plan.max_length} tokens per GPU, {plan.batch_size * plan.world} sequences "
        f"per step over {plan.world} GPUs, {plan.align_steps} aligning step(s) |",
        f"| host RAM, node 0 (peak) | {_gib(plan.host_bytes_per_node)} GiB |",
        f"| planned in | {plan.seconds:.2f} s |",
        "",
        f"| GiB per GPU | DDP | FSDP2 (world {plan.world}) |",
        "|---|---:|---:|",
    ]
    rows = [("head weights fp32", "weights"), ("gradients fp32", "grads"), ("AdamW moments 2 x fp32", "optimizer"),
            ("DDP gradient buckets", "ddp_buckets"),
            ("FSDP2 unsharded layer (bf16 weights + bf16 grads + fp32 reduce-scatter input)", "fsdp_unsharded"),
            ("embedding + lm_head fp32", "frozen_target"), ("activations (below)", "activations"),
            ("**step peak**", "step_peak"), ("init peak (whole head on GPU)", "init_peak")]
    for label, attr in rows:
        lines.append(f"| {label} | {_gib(getattr(plan.ddp, attr))} | {_gib(getattr(plan.fsdp, attr))} |")
    usable = plan.gpu_memory_gib - RESERVED_GIB
    lines.append(f"| **fits {plan.gpu_memory_gib:g} GiB** ({usable:g} usable) | "
                 f"{'yes' if plan.fits('ddp') else '**no**'} | {'yes' if plan.fits('fsdp') else '**no**'} |")
    lines += [
        "",
        f"| activations, GiB ({tokens} tokens x {plan.align_steps} step(s), bf16 autocast) | DDP (fp32 weights) "
        f"| FSDP2 (bf16 weights) |",
        "|---|---:|---:|",
    ]
    act_rows = [("head layers (saved for backward)", "layers"), ("losses (fp32 log-softmaxes)", "loss"),
                ("alignment masks", "mask"), ("lm_head bf16 copies", "lm_head_copies"),
                ("expert bf16 copies", "expert_copies"), ("autocast weight cache", "autocast_cache"),
                ("transient (logits, or one expert's zero gradient)", "transient"), ("total", "total")]
    for label, attr in act_rows:
        lines.append(f"| {label} | {_gib(getattr(plan.activations, attr))} "
                     f"| {_gib(getattr(plan.fsdp_activations, attr))} |")
    lines += [
        "",
        "Formulas: `hass_sglang.train.plan.estimate_activations`, `Fsdp2UnitBytes`; the peak sums every term.",
        "",
        "```bash",
    ]
    for what, cmd in plan.commands:
        lines += [f"# {what}", cmd]
    lines.append("```")
    return "\n".join(lines)
