"""Data-parallel training on PyTorch's own engine: torchrun + DistributedDataParallel.

``torchrun --nproc_per_node=N -m kuosan train ...`` sets RANK / WORLD_SIZE / LOCAL_RANK; kuosan then
joins the process group (gloo on CPU, NCCL on GPU). Every process holds the (small, in-memory) data
set, draws the same global batch from the same generator and takes its own slice of it, so N
processes take exactly the optimizer steps one process would take with the same global batch.
Only rank 0 writes checkpoints, logs and pictures.
"""

from __future__ import annotations

import os

import torch
import torch.distributed as dist


def init_from_env(backend: str | None = None) -> bool:
    """Join the process group torchrun describes in the environment; False when not under torchrun
    (or WORLD_SIZE is 1)."""
    if dist.is_available() and dist.is_initialized():
        return True
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return False
    dist.init_process_group(backend or ("nccl" if torch.cuda.is_available() else "gloo"))
    return True


def rank_and_world() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def all_sum(values: list[float]) -> list[float]:
    """Sum a few floats over all processes (identity when not distributed)."""
    _, world = rank_and_world()
    if world == 1:
        return values
    t = torch.tensor(values, dtype=torch.float64)
    dist.all_reduce(t)
    return t.tolist()


def all_gather_bytes(t: torch.Tensor) -> list[torch.Tensor]:
    """Gather one uint8 tensor of equal size from every process (RNG states), in rank order."""
    _, world = rank_and_world()
    if world == 1:
        return [t]
    out = [torch.empty_like(t) for _ in range(world)]
    dist.all_gather(out, t)
    return out


def barrier() -> None:
    if rank_and_world()[1] > 1:
        dist.barrier()


def shutdown() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
