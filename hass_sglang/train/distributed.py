"""Data parallelism under torchrun: who am I, the process group, and the gradient mean.

`torchrun --nproc-per-node N -m hass_sglang.cli features|train ...` starts N processes with RANK
and WORLD_SIZE set; each joins the process group (gloo: the CPU backend) and works on its share.
Without torchrun everything here is a no-op for a world of one.
"""

from __future__ import annotations

import os

import torch
import torch.distributed as dist


def init_distributed() -> None:
    """Under torchrun (WORLD_SIZE > 1) join the process group: gloo, the CPU backend."""
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and not dist.is_initialized():
        dist.init_process_group("gloo")


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


def broadcast_parameters(module: torch.nn.Module) -> None:
    """Rank 0's weights everywhere, whatever each rank's RNG did before."""
    if rank_world()[1] > 1:
        for p in module.parameters():
            dist.broadcast(p.data, 0)


def average_gradients(params) -> None:
    """Data parallelism: the mean of the ranks' gradients (what DDP computes), one all_reduce each."""
    world = rank_world()[1]
    if world == 1:
        return
    for p in params:
        if p.grad is not None:
            dist.all_reduce(p.grad)
            p.grad /= world
