"""The `--dry-run` planner (train/plan.py): counts on the meta device equal real builds, the memory
model's relations (FSDP2 shards what DDP replicates), FSDP2's bytes per parameter against the policy
`distributed.parallelize` gives it on CUDA and what `fully_shard` does with it, the activation
estimate against the tensors autograd really saves, feature bytes against a real shard, and the
printed commands against the parsers that will read them. Fast: tiny heads on CPU (FSDP2 in a gloo
world of one), the big targets on meta only."""

from __future__ import annotations

import contextlib
import json
import math
import os
import shlex
import subprocess
import sys

import pytest
import torch
import torch.distributed as dist
from safetensors import safe_open
from transformers import AutoModelForCausalLM, DeepseekV3Config, LlamaConfig, LlamaForCausalLM

from hass_sglang.heads import build_head
from hass_sglang.target import EMBEDDED_TARGET, Target, load_target_config
from hass_sglang.tiny_deepseek import CONFIG as TINY_DEEPSEEK
from hass_sglang.train import distributed
from hass_sglang.train.align import AlignedDraft, step_losses, step_weight
from hass_sglang.train.plan import (BF16, FP32, FSDP2_CUDA, SHIPPED_TARGETS, TARGET_CONFIG_DIR, RunPaths,
                                    estimate_activations, head_shape, meta_head, plan_training, render,
                                    shipped_target_config)


def smollm2():
    return load_target_config(EMBEDDED_TARGET)


def tiny_deepseek():
    return DeepseekV3Config(**TINY_DEEPSEEK)


def r1_plan(parallel="fsdp", **kw):
    args = dict(head="mtp", gpus_per_node=8, nodes=2, parallel=parallel, batch_size=4, max_length=2048)
    return plan_training(shipped_target_config("deepseek-ai/DeepSeek-R1"), **{**args, **kw})


def test_shipped_configs_load_as_published():
    for hub_id, file in SHIPPED_TARGETS.items():
        published = json.loads((TARGET_CONFIG_DIR / file).read_text())
        config = shipped_target_config(hub_id)
        for key in ("model_type", "hidden_size", "vocab_size", "num_hidden_layers", "intermediate_size"):
            assert getattr(config, key) == published[key], (hub_id, key)
    r1 = shipped_target_config("deepseek-r1")
    assert (r1.num_hidden_layers, r1.num_nextn_predict_layers, r1.n_routed_experts) == (61, 1, 256)
    assert r1.quantization_config["quant_method"] == "fp8"  # kept as published: from_config ignores it


@pytest.mark.parametrize("config, kind", [(smollm2, "eagle"), (tiny_deepseek, "mtp")],
                         ids=["smollm2-eagle", "tiny-deepseek-mtp"])
def test_counts_on_meta_equal_a_real_build(config, kind):
    cfg = config()
    plan = plan_training(cfg, head=kind, gpus_per_node=2, nodes=1, parallel="fsdp", batch_size=1, max_length=64)
    with torch.random.fork_rng():
        head = build_head(kind, cfg, seed=0)
        target = AutoModelForCausalLM.from_config(cfg)
    assert plan.shape.params == sum(p.numel() for p in head.parameters())
    assert plan.shape.largest_layer == sum(p.numel() for p in head.layers[0].parameters())
    assert plan.target_params == sum(p.numel() for p in target.parameters())
    experts = [p for layer in head.layers if hasattr(layer.mlp, "experts") for p in layer.mlp.experts.parameters()]
    assert plan.shape.experts == sum(p.numel() for p in experts)
    assert (plan.shape.experts > 0) == (kind == "mtp" and cfg.model_type == "deepseek_v3")


def test_fsdp_shards_what_ddp_replicates():
    plan = r1_plan()
    ddp, fsdp, world = plan.ddp, plan.fsdp, plan.world
    for part in ("weights", "grads", "optimizer"):
        assert math.isclose(getattr(fsdp, part) * world, getattr(ddp, part), rel_tol=1e-3), part
    assert ddp.weights == FP32 * plan.shape.params and ddp.optimizer == 2 * ddp.weights
    assert ddp.ddp_buckets == ddp.grads and fsdp.ddp_buckets == 0  # DDP keeps a second gradient copy
    # FSDP2 pays what it unshards, one layer at a time, in bf16 (2 bytes a parameter: weights and
    # gradients), plus the fp32 reduce-scatter input; the root stays gathered with its gradients
    b = FSDP2_CUDA
    assert b.weights == b.grads == b.staging == BF16 and b.reduce_input == FP32
    assert b.unit_peak == b.grads + max(b.weights + b.staging, b.reduce_input)
    assert fsdp.fsdp_unsharded == b.unit_peak * plan.shape.largest_layer + (b.weights + b.grads) * plan.shape.root
    assert ddp.fsdp_unsharded == 0
    assert fsdp.frozen_target == ddp.frozen_target == 2 * FP32 * plan.vocab_size * plan.hidden_size
    assert ddp.activations == plan.activations.total and fsdp.activations == plan.fsdp_activations.total
    assert fsdp.init_peak == ddp.init_peak + FP32 * plan.shape.sharded  # fully_shard copies the shards out
    single = r1_plan(gpus_per_node=1, nodes=1)  # a world of one runs unwrapped: no shards, no buckets
    assert single.fsdp.weights == single.ddp.weights and single.ddp.ddp_buckets == 0


def test_r1_mtp_head_verdicts_follow_from_the_numbers():
    plan = r1_plan()
    usable, s = plan.usable_bytes, plan.shape
    # DDP: the replicated fp32 weights, gradients and AdamW moments alone (16 bytes a parameter) exceed a GPU
    assert plan.ddp.states == 16 * s.params > usable and not plan.fits("ddp")
    # FSDP2 shards them 16 ways, but unshards the MoE layer whole: at its reduce-scatter copy-in the
    # bf16 gradients and the fp32 input alone, beside the shards and the frozen target, exceed a GPU
    f = plan.fsdp
    assert f.states < plan.ddp.states / plan.world * 1.001
    assert plan.fits("fsdp") == (f.peak <= usable)
    assert f.peak < plan.ddp.peak
    copy_in = f.states + (FSDP2_CUDA.grads + FSDP2_CUDA.reduce_input) * s.largest_layer + f.frozen_target
    assert copy_in > usable and not plan.fits("fsdp")
    # DDP (fp32 weights under autocast): the eager expert loop's per-step bf16 copies are the largest
    # activation term; FSDP2's bf16 weights are used as they are (a slice is a view): no copies
    a, fa = plan.activations, plan.fsdp_activations
    assert a.expert_copies == plan.align_steps * BF16 * s.experts
    assert a.expert_copies == max(a.layers, a.loss, a.mask, a.lm_head_copies, a.expert_copies, a.autocast_cache)
    assert fa.expert_copies == fa.autocast_cache == 0 and 2 * fa.mask == a.mask
    assert (fa.layers, fa.loss, fa.lm_head_copies) == (a.layers, a.loss, a.lm_head_copies)
    # what is left to attack: the unsharded layer outweighs every other term, the states and each activation
    assert f.fsdp_unsharded > max(f.states, f.frozen_target, fa.layers, fa.loss, fa.mask, fa.lm_head_copies,
                                  fa.transient)
    assert fa.transient == max(a.transient // 2, plan.batch_size * plan.max_length * (FP32 + BF16) * plan.vocab_size)
    # nothing `hass train` takes makes it fit: one step, one sequence, shorter features, more nodes
    # (the unit is unsharded whole whatever the world): the floor is token-independent
    for kw in ({"align_steps": 1, "batch_size": 1}, {"align_steps": 1, "batch_size": 1, "max_length": 512},
               {"nodes": 4, "align_steps": 1, "batch_size": 1}):
        other = r1_plan(**kw)
        assert not other.fits("fsdp") and other.fsdp.fsdp_unsharded == f.fsdp_unsharded, kw
    assert plan.seconds < 10  # meta only: no weights built or read


def test_llama_eagle_plan_is_consistent():
    plan = plan_training(shipped_target_config("meta-llama/Llama-3.1-8B-Instruct"), head="eagle", gpus_per_node=8,
                         nodes=1, parallel="ddp", batch_size=4, max_length=2048)
    assert plan.shape.experts == 0 and plan.activations.expert_copies == 0
    assert plan.fits() == (plan.ddp.peak <= plan.usable_bytes)
    assert plan.features_engine == "transformers"  # an 8B target fits a GPU: no SGLang server needed
    assert r1_plan().features_engine == "sglang"


def _cuda_fsdp_policy(monkeypatch):
    """The MixedPrecisionPolicy `distributed.parallelize(..., "fsdp", cuda)` hands `fully_shard`,
    caught on a CPU host: a world of 16 and the mesh are faked, `fully_shard` only records."""
    from torch.distributed import device_mesh, fsdp

    policies = []
    monkeypatch.setattr(distributed, "rank_world", lambda: (0, 16))
    monkeypatch.setattr(device_mesh, "init_device_mesh", lambda *a, **k: None)
    monkeypatch.setattr(fsdp, "fully_shard", lambda module, **kw: policies.append(kw["mp_policy"]) or module)
    head = meta_head("eagle", smollm2())
    distributed.parallelize(AlignedDraft(head, 1), "fsdp", torch.device("cuda", 0))
    assert len(policies) == len(head.layers) + 1 and len(set(policies)) == 1  # every layer, then the root
    return policies[0]


@contextlib.contextmanager
def _gloo_world_of_one():
    """A real process group of one rank (gloo, in-process store): `fully_shard` runs its CPU path."""
    dist.init_process_group("gloo", rank=0, world_size=1, store=dist.HashStore())
    try:
        yield
    finally:
        dist.destroy_process_group()


def _fully_shard(module: AlignedDraft, policy) -> AlignedDraft:
    """What `parallelize` does with the policy: every decoder layer, then the whole module."""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    mesh = init_device_mesh("cpu", (1,))
    for layer in module.head.layers:
        fully_shard(layer, mesh=mesh, mp_policy=policy)
    return fully_shard(module, mesh=mesh, mp_policy=policy)


def test_fsdp2_unit_bytes_are_what_fully_shard_does_with_the_trainers_policy(monkeypatch):
    """`Fsdp2UnitBytes` against torch's FSDP2: the policy `parallelize` gives CUDA runs, applied on CPU
    to a tiny DeepSeek MTP head in HASS's 3-step forward under bf16 autocast. The forward sees bf16
    weights; the layer, called once per step, is reduced once per backward, from bf16 gradients
    (its unsharded numel of them) into an fp32 reduce-scatter input; the sharded gradient is fp32."""
    from torch.distributed.fsdp._fully_shard import _fsdp_param_group

    policy = _cuda_fsdp_policy(monkeypatch)
    monkeypatch.undo()
    itemsize = lambda dtype: torch.empty((), dtype=dtype).element_size()  # noqa: E731
    assert itemsize(policy.param_dtype) == FSDP2_CUDA.weights == FSDP2_CUDA.staging
    assert itemsize(policy.reduce_dtype) == FSDP2_CUDA.reduce_input
    reduces, forward_dtypes = [], []
    real_reduce = _fsdp_param_group.foreach_reduce

    def foreach_reduce(params, grads, *args, **kwargs):
        dtypes, numel = {g.dtype for g in grads}, sum(g.numel() for g in grads)
        out = real_reduce(params, grads, *args, **kwargs)
        reduces.append((dtypes, numel, out[0].dtype, out[0].numel()))  # out[0]: the reduce-scatter input
        return out

    monkeypatch.setattr(_fsdp_param_group, "foreach_reduce", foreach_reduce)
    cfg, t, steps = tiny_deepseek(), 32, 3
    with _gloo_world_of_one(), torch.random.fork_rng():
        head = build_head("mtp", cfg, seed=0)
        sizes = [sum(p.numel() for p in head.layers[0].parameters()), sum(p.numel() for p in head.parameters())]
        model = _fully_shard(AlignedDraft(head, steps), policy)
        head.layers[0].mlp.experts.register_forward_hook(
            lambda mod, args, out: forward_dtypes.append({p.dtype for p in mod.parameters()}))
        embeds, feats = torch.randn(1, t, cfg.hidden_size), torch.randn(1, t, cfg.hidden_size)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            outs = model(embeds, feats, torch.ones(1, t, dtype=torch.bool))
        sum(o.float().square().mean() for o in outs).backward()
        grads = {p.grad.to_local().dtype for p in model.parameters()}
    assert [{policy.param_dtype}] * steps == forward_dtypes
    layer, root = sizes[0], sizes[1] - sizes[0]
    assert [(numel, itemsize(rs_dtype), rs_numel) for _, numel, rs_dtype, rs_numel in reduces] == \
        [(layer, FSDP2_CUDA.reduce_input, layer), (root, FSDP2_CUDA.reduce_input, root)]  # a world of one: no padding
    assert all({itemsize(d) for d in dtypes} == {FSDP2_CUDA.grads} for dtypes, *_ in reduces)
    assert grads == {torch.float32}


@pytest.mark.parametrize("config, kind", [(smollm2, "eagle"), (smollm2, "mtp"), (tiny_deepseek, "mtp")],
                         ids=["smollm2-eagle", "smollm2-mtp", "tiny-deepseek-mtp"])
@pytest.mark.parametrize("mode", ["fp32", "bf16-autocast", "fsdp2-bf16"])
def test_activation_estimate_matches_the_tensors_autograd_saves(config, kind, mode, monkeypatch):
    """What backward keeps, measured with saved_tensors_hooks (distinct storages, the head's and the
    inputs' own excluded), against the estimate: the head's aligned forward, then the losses of all
    steps (over a 4096-row lm_head: the loss terms scale with V). CPU autocast casts weights by
    CUDA's rules (leaf parameters cached once, other fp32 tensors at every call). fsdp2-bf16: the
    head under `fully_shard` with the policy `parallelize` gives CUDA runs (bf16 weights in forward,
    their all-gathered storage excluded like the head's own: `Fsdp2UnitBytes` counts it). The
    per-token formula counts RMSNorm outputs as fp32 (what fp32 inputs give); FSDP2 casts the
    inputs to bf16, so there it overestimates, most on the tiny heads where norms weigh most."""
    cfg, vocab, t, steps = config(), 4096, 64, 3
    policy = _cuda_fsdp_policy(monkeypatch) if mode == "fsdp2-bf16" else None
    monkeypatch.undo()
    with torch.random.fork_rng(), torch.no_grad():
        head = build_head(kind, cfg, seed=0)
        lm = torch.randn(vocab, cfg.hidden_size)
    est = estimate_activations(head, head_shape(head, 1), batch_size=1, max_length=t, steps=steps, vocab_size=vocab,
                               compute_bytes=FP32 if mode == "fp32" else BF16, autocast=mode != "fp32",
                               bf16_weights=mode == "fsdp2-bf16")
    with _gloo_world_of_one() if policy else contextlib.nullcontext():
        forward, losses = _saved_bytes(head, lm, t, steps, mode != "fp32", policy)
    high = 1.3 if policy else 1.25
    assert 0.75 < (est.layers + est.mask + est.expert_copies + est.autocast_cache) / forward < high
    assert 0.9 < (est.loss + est.lm_head_copies) / losses < 1.1


def _storages(tensors) -> set[int]:
    from torch.distributed.tensor import DTensor

    return {(x.to_local() if isinstance(x, DTensor) else x).untyped_storage().data_ptr() for x in tensors}


def _saved_bytes(head, lm, t: int, steps: int, autocast: bool, fsdp_policy=None) -> tuple[int, int]:
    """Bytes autograd keeps for backward: (the aligned forward's, the losses' on top). With
    `fsdp_policy`, the head runs under `fully_shard` (in a process group): its parameters are then
    the bf16 unsharded ones while their module runs, so they are looked up at every save."""
    g = torch.Generator().manual_seed(0)
    h, v = head.hidden_size, lm.shape[0]
    embeds, feats = torch.randn(1, t, h, generator=g), torch.randn(1, t, h, generator=g)
    valid = torch.ones(1, t, dtype=torch.bool)
    model = AlignedDraft(head, steps)
    if fsdp_policy is not None:
        model = _fully_shard(model, fsdp_policy)
    inputs = _storages([lm, embeds, feats])
    kept: dict[int, int] = {}

    def pack(x):
        storage = x.untyped_storage()
        if storage.data_ptr() not in inputs | _storages(head.parameters()):
            kept[storage.data_ptr()] = storage.nbytes()
        return x

    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast), \
            torch.autograd.graph.saved_tensors_hooks(pack, lambda x: x):
        outs = model(embeds, feats, valid)
        forward = sum(kept.values())
        top_p = torch.softmax(torch.randn(1, t, 10, generator=g), -1)
        top_i = torch.randint(0, v, (1, t, 10), generator=g)
        for j, out in enumerate(outs, 1):
            step_losses(out, feats, top_p, top_i, lm, step_weight(torch.ones(1, t), valid, j), True)
    return forward, sum(kept.values()) - forward


def test_feature_bytes_per_token_match_a_real_shard(tmp_path):
    from transformers import AutoTokenizer

    from hass_sglang.eval_sets import shared_data_dir
    from hass_sglang.target import resolve_target
    from hass_sglang.train.data import convert
    from hass_sglang.train.features import FeatureConfig, extract_features

    folder = resolve_target(EMBEDDED_TARGET)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    cfg = LlamaConfig(vocab_size=len(tokenizer), hidden_size=48, intermediate_size=64, num_hidden_layers=1,
                      num_attention_heads=2, num_key_value_heads=1)
    with torch.random.fork_rng():
        torch.manual_seed(0)
        model = LlamaForCausalLM(cfg).eval()
    target = Target(model=model, tokenizer=tokenizer, path=folder)
    data = tmp_path / "data.json"
    convert(str(shared_data_dir() / "gsm8k" / "train.jsonl"), "gsm8k", data, limit=3)
    for storage, k in (("bfloat16", 10), ("float32", 4)):
        out = tmp_path / f"f-{storage}"
        m = extract_features(target, FeatureConfig(data=str(data), target="tiny", max_length=256, shard_size=8,
                                                   storage_dtype=storage, teacher_topk=k), out, progress=False)
        plan = plan_training(cfg, head="eagle", gpus_per_node=1, nodes=1, parallel="ddp", batch_size=1,
                             max_length=256, storage_dtype=storage, teacher_topk=k)
        [entry] = m["shards"]
        with safe_open(str(out / entry["file"]), framework="pt") as fh:
            sizes = {name: fh.get_tensor(name).nbytes for name in fh.keys()}
        assert sum(v for name, v in sizes.items() if name != "offsets") == m["tokens"] * plan.features.per_token
        assert sizes["offsets"] == plan.features.per_sample * (m["samples"] + 1)


def test_render_prints_both_engines_and_commands_the_parsers_accept():
    """The printed lines, as the programs that will read them parse them: torchrun's own parser, and
    `hass train` run as a user runs it (tests never import the CLI: test_layout.py); here it gets
    past its parser and stops at the missing GPU or target, never at an argparse usage error."""
    from torch.distributed.run import get_args_parser

    paths = RunPaths(target="deepseek-ai/DeepSeek-R1", data="/data/r1.json", features="/data/r1-features",
                     out="/data/r1-run", endpoint="http://deepseek-r1-hass-api:30000")
    plan = r1_plan(paths=paths)
    text = render(plan)
    assert "| GiB per GPU | DDP | FSDP2" in text and "**fits 80 GiB**" in text
    for _, cmd in plan.commands:
        assert cmd in text
    argv = {cmd.split()[0]: shlex.split(cmd.replace("$NODE_RANK", "1").replace("$MASTER_ADDR", "node-0"))
            for _, cmd in plan.commands}
    run = get_args_parser().parse_args(argv["torchrun"][1:])
    assert (run.nnodes, run.nproc_per_node, run.node_rank, run.module) == ("2", "8", 1, True)
    assert run.training_script == "hass_sglang.cli"
    train = run.training_script_args
    assert train[0] == "train" and _flag(train, "--parallel") == "fsdp" and _flag(train, "--device") == "cuda"
    assert _flag(train, "--init-from") == "target" and _flag(train, "--features") == paths.features
    assert argv["hass"][1:3] == ["features", "--engine"] and _flag(argv["hass"], "--endpoint") == paths.endpoint
    r = subprocess.run([sys.executable, "-m", "hass_sglang.cli", *train], capture_output=True, text=True, timeout=300,
                       env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert r.returncode != 0 and "usage: hass" not in r.stderr, r.stderr


def _flag(argv: list[str], name: str) -> str | None:
    return argv[argv.index(name) + 1] if name in argv else None


def test_rejects_unknown_choices():
    with pytest.raises(ValueError):
        plan_training(smollm2(), head="medusa", gpus_per_node=1, nodes=1, parallel="ddp", batch_size=1, max_length=8)
    with pytest.raises(ValueError):
        plan_training(smollm2(), head="eagle", gpus_per_node=0, nodes=1, parallel="ddp", batch_size=1, max_length=8)
