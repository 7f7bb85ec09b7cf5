"""Small tensor helpers shared by every layer of kuosan (imports nothing from kuosan)."""
from __future__ import annotations

import torch


def append_dims(x: torch.Tensor, ndim: int) -> torch.Tensor:
    """Append trailing singleton dimensions to ``x`` until it has ``ndim`` dimensions.

    Used to broadcast per-sample scalars of shape (B,) against data of shape (B, ...).
    """
    missing = ndim - x.ndim
    if missing < 0:
        raise ValueError(f"input has {x.ndim} dims but target ndim is {ndim}, which is less")
    return x[(...,) + (None,) * missing]


def mean_flat(x: torch.Tensor) -> torch.Tensor:
    """Mean over all non-batch dimensions: (B, ...) -> (B,)."""
    return x.flatten(1).mean(1)


def sum_flat(x: torch.Tensor) -> torch.Tensor:
    """Sum over all non-batch dimensions: (B, ...) -> (B,)."""
    return x.flatten(1).sum(1)
