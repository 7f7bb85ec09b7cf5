"""Small helpers shared by every layer of kuosan (imports nothing from kuosan): tensor shapes,
the CPU's precision, and files written whole or not at all."""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

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


def cpu_has_fast_bf16() -> bool:
    """True when this CPU multiplies bf16 matrices in hardware (AMX or AVX512-BF16), where bf16
    autocast speeds training up; elsewhere bf16 is emulated and slower than fp32."""
    try:
        with open("/proc/cpuinfo") as fh:
            flags = next((line for line in fh if line.startswith("flags")), "").split()
    except OSError:
        return False
    return "amx_bf16" in flags or "avx512_bf16" in flags


def unwritable_reason(folder: str | Path) -> str | None:
    """Why files cannot be made in ``folder`` (its error text), or None when they can. Tried by making
    one, since permission bits say nothing for root, read-only mounts or /proc."""
    try:
        with tempfile.TemporaryFile(dir=folder):
            return None
    except OSError as e:
        return e.strerror or str(e)


@contextlib.contextmanager
def replaced_whole(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside ``path`` (same suffix) to write to; on success it replaces
    ``path`` in one rename, on any error it is removed: ``path`` is either the old file or the whole
    new one, never a part."""
    path = Path(path)
    tmp = path.with_name(f".{path.stem}.partial{path.suffix}")
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
