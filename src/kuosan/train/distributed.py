"""Data-parallel training on PyTorch's own engine: torchrun + DistributedDataParallel.

``torchrun --nproc_per_node=N -m kuosan train ...`` sets RANK / WORLD_SIZE / LOCAL_RANK; kuosan then
joins the process group (gloo on CPU; NCCL on GPUs, one per process, cuda:LOCAL_RANK). Every process
holds the (small, in-memory) data set, draws the same global batch from the same generator and takes
its own slice of it, so N processes take exactly the optimizer steps one process would take with the
same global batch. Only rank 0 writes checkpoints, logs and pictures.

Several machines: the same command on each, with the rendezvous flags, e.g. on two nodes of 8 GPUs
``torchrun --nnodes=2 --nproc_per_node=8 --rdzv_backend=c10d --rdzv_endpoint=HOST:29500
--rdzv_id=RUN -m kuosan train ...`` (HOST: any one of the nodes, reachable from all).
"""

from __future__ import annotations

import os

import torch
import torch.distributed as dist


def init_from_env(device: torch.device | None = None, backend: str | None = None) -> bool:
    """Join the process group torchrun describes in the environment; False when not under torchrun
    (or WORLD_SIZE is 1). The backend follows the device the process trains on: NCCL for a GPU (which
    becomes the process's current CUDA device), gloo for the CPU."""
    if dist.is_available() and dist.is_initialized():
        return True
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return False
    on_gpu = device is not None and device.type == "cuda"
    if on_gpu:
        torch.cuda.set_device(device)
    dist.init_process_group(backend or ("nccl" if on_gpu else "gloo"))
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
    t = torch.tensor(values, dtype=torch.float64, device=_comm_device())
    dist.all_reduce(t)
    return t.tolist()


def all_gather_bytes(t: torch.Tensor) -> list[torch.Tensor]:
    """Gather one uint8 tensor of equal size from every process (RNG states), in rank order."""
    _, world = rank_and_world()
    if world == 1:
        return [t]
    t = t.to(_comm_device())
    out = [torch.empty_like(t) for _ in range(world)]
    dist.all_gather(out, t)
    return [o.cpu() for o in out]


def _comm_device() -> torch.device:
    """Where the process group's tensors must be: the current GPU for NCCL, the CPU for gloo."""
    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def barrier() -> None:
    if rank_and_world()[1] > 1:
        dist.barrier()


def shutdown() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
