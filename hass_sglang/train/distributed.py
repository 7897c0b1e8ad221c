"""Where training runs and how it scales: the device, the process group under torchrun, and the
standard engines for data parallelism - DistributedDataParallel, or FSDP2 (`fully_shard`) for
heads too large to replicate (a DeepSeek MTP layer with its 256 experts).

`torchrun --nproc-per-node N -m hass_sglang.cli features|train ...` starts N processes with RANK,
LOCAL_RANK and WORLD_SIZE set; each joins the process group (nccl on CUDA, gloo on CPU) on its
own device. Without torchrun everything here is a no-op for a world of one.
"""

from __future__ import annotations

import atexit
import os
from typing import Literal

import torch
import torch.distributed as dist

from hass_sglang.errors import ConfigError

Parallelism = Literal["ddp", "fsdp"]


def resolve_device(spec: str = "auto") -> torch.device:
    """auto | cpu | cuda | cuda:N -> the device; under torchrun on CUDA, cuda is this rank's GPU (LOCAL_RANK)."""
    spec = (spec or "auto").lower()
    if spec == "auto":
        spec = "cuda" if torch.cuda.is_available() else "cpu"
    if spec == "cpu":
        return torch.device("cpu")
    if not spec.startswith("cuda"):
        raise ConfigError(f"unknown device {spec!r}; expected auto, cpu, cuda or cuda:N")
    if not torch.cuda.is_available():
        raise ConfigError(f"--device {spec}: no CUDA device here (torch.cuda.is_available() is False)")
    if spec == "cuda":
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    return torch.device(spec)


def init_distributed(device: torch.device | None = None) -> None:
    """Under torchrun (WORLD_SIZE > 1) join the process group: nccl for CUDA devices, gloo for CPU."""
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and not dist.is_initialized():
        cuda = device is not None and device.type == "cuda"
        if cuda:
            torch.cuda.set_device(device)
        dist.init_process_group("nccl" if cuda else "gloo")
        # Leave the group while the interpreter is still whole: a group alive at exit can abort the
        # process from its worker threads' destructors after the work is done (gloo under FSDP2 in
        # CI: "terminate called without an active exception", exit -6; pytorch/pytorch#190489).
        atexit.register(leave_distributed)


def leave_distributed() -> None:
    """Destroy this process's group (registered at exit by `init_distributed`; a no-op without one)."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def rank_world() -> tuple[int, int]:
    """(rank, world size) of this process; (0, 1) outside a process group."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def is_main_process() -> bool:
    """Rank 0, the process that logs and writes (also before the group exists: RANK from torchrun)."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank() == 0
    return os.environ.get("RANK", "0") == "0"


def barrier() -> None:
    if rank_world()[1] > 1:
        dist.barrier()


def all_reduce_sum(t: torch.Tensor) -> torch.Tensor:
    """The sum over ranks (in place; the tensor itself in a world of one)."""
    if rank_world()[1] > 1:
        dist.all_reduce(t)
    return t


def broadcast_parameters(module: torch.nn.Module) -> None:
    """Rank 0's weights everywhere, whatever each rank's RNG did before (DDP/FSDP also do this)."""
    if rank_world()[1] > 1:
        for p in module.parameters():
            dist.broadcast(p.data, 0)


def parallelize(model: torch.nn.Module, strategy: Parallelism, device: torch.device) -> torch.nn.Module:
    """The training module on the standard engine: DDP (gradients averaged across ranks in backward),
    or FSDP2 with every decoder layer and then the whole module sharded. A world of one: unchanged."""
    if rank_world()[1] == 1:
        return model
    if strategy == "ddp":
        from torch.nn.parallel import DistributedDataParallel

        return DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    if strategy == "fsdp":
        from torch.distributed.device_mesh import init_device_mesh
        from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

        mesh = init_device_mesh(device.type, (rank_world()[1],))
        # on GPUs a layer is gathered in bf16 (half the memory and traffic of its fp32 shards, which
        # stay the master weights) and gradients are reduced in fp32; CPU trains in fp32
        mp = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32) \
            if device.type == "cuda" else MixedPrecisionPolicy()
        for layer in getattr(getattr(model, "head", model), "layers", []):
            fully_shard(layer, mesh=mesh, mp_policy=mp)
        return fully_shard(model, mesh=mesh, mp_policy=mp)
    raise ConfigError(f"unknown parallelism {strategy!r}; expected ddp or fsdp")


def full_state(model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> tuple[dict, dict]:
    """Unsharded (model, optimizer) state on CPU on every rank, whatever the wrapper: what a
    checkpoint holds, so it resumes with any number of ranks and either engine."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_state_dict

    return get_state_dict(model, optimizer, options=StateDictOptions(full_state_dict=True, cpu_offload=True))


def load_full_state(model: torch.nn.Module, optimizer: torch.optim.Optimizer, model_state: dict,
                    optim_state: dict) -> None:
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_state_dict

    set_state_dict(model, optimizer, model_state_dict=model_state, optim_state_dict=optim_state,
                   options=StateDictOptions(full_state_dict=True))
