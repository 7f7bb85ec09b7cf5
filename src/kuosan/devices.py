"""Where kuosan computes and in what precision: one policy for every command.

``resolve_device("auto")`` is CUDA when PyTorch sees a GPU (``cuda:LOCAL_RANK`` under torchrun),
else the CPU; Apple's MPS is taken only when asked for. ``resolve_precision(device, "auto")`` is bf16
autocast on a GPU that has bf16 (Ampere and newer), fp16 with a gradient scaler on one that has not,
and on the CPU bf16 where it has bf16 matrix units, fp32 elsewhere. The capability queries are the
small functions below (``cuda_available`` ...), so that a test can stand in for a machine it is not.

Random numbers are drawn on the CPU from a ``torch.Generator`` and moved (diffusers' ``randn_tensor``
convention): a seed gives the same noise on every device.
"""

from __future__ import annotations

import contextlib
import os

import torch

from kuosan.utils import cpu_has_fast_bf16

DEVICES = ("auto", "cpu", "cuda", "cuda:N", "mps")
PRECISIONS = ("auto", "fp32", "bf16", "fp16")
DTYPES = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


class DeviceError(ValueError):
    """A device that is not there, or a precision it cannot compute in (one line)."""


# --- capability queries (the only places that ask the machine) ------------------------------------


def cuda_available() -> bool:
    return torch.cuda.is_available()


def cuda_count() -> int:
    return torch.cuda.device_count()


def cuda_capability(index: int) -> tuple[int, int]:
    return torch.cuda.get_device_capability(index)


def mps_available() -> bool:
    return bool(getattr(torch.backends, "mps", None)) and torch.backends.mps.is_available()


# --- the policy ------------------------------------------------------------------------------------


def resolve_device(spec: str | torch.device | None = "auto") -> torch.device:
    """The device a command runs on: "auto" (CUDA if available, ``cuda:LOCAL_RANK`` under torchrun;
    else the CPU), "cpu", "cuda", "cuda:N" or "mps". DeviceError for one that is not there."""
    spec = "auto" if spec is None else str(spec)
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if spec == "auto":
        return torch.device("cuda", local_rank) if cuda_available() else torch.device("cpu")
    if spec == "cpu":
        return torch.device("cpu")
    if spec == "mps":
        if not mps_available():
            raise DeviceError("device mps is not available here (PyTorch sees no Apple GPU)")
        return torch.device("mps")
    if spec == "cuda" or spec.startswith("cuda:"):
        index = local_rank if spec == "cuda" else spec.partition(":")[2]
        if not str(index).isdigit():
            raise DeviceError(f"device {spec!r}: write cuda or cuda:N with N a GPU index")
        if not cuda_available():
            raise DeviceError(f"device {spec} is not available here (PyTorch sees no CUDA GPU: {_why_no_cuda()})")
        if int(index) >= cuda_count():
            raise DeviceError(f"device cuda:{index} is not there: this machine has {cuda_count()} CUDA GPU(s)")
        return torch.device("cuda", int(index))
    raise DeviceError(f"device {spec!r} is not one of {', '.join(DEVICES)}")


def _why_no_cuda() -> str:
    return "this PyTorch is a CPU build" if torch.version.cuda is None else "no GPU or driver found"


def resolve_precision(device: torch.device, precision: str = "auto") -> str:
    """The autocast precision of training or sampling on ``device``: "fp32", "bf16" or "fp16"."""
    if precision not in PRECISIONS:
        raise DeviceError(f"precision {precision!r} is not one of {', '.join(PRECISIONS)}")
    kind = device.type
    if precision == "auto":
        if kind == "cuda":
            return "bf16" if cuda_bf16(device) else "fp16"
        if kind == "cpu":
            return "bf16" if cpu_has_fast_bf16() else "fp32"
        return "fp32"
    if precision == "fp16" and kind == "cpu":
        raise DeviceError("precision fp16 is for GPUs; on the CPU use bf16 or fp32")
    if precision == "bf16" and kind == "cuda" and not cuda_bf16(device):
        raise DeviceError(f"{device} has no bf16 (compute capability below 8.0); use fp16 or fp32")
    return precision


def cuda_bf16(device: torch.device) -> bool:
    """bf16 arithmetic at speed: compute capability 8.0 (Ampere) and newer."""
    return cuda_capability(device.index or 0)[0] >= 8


def autocast(device: torch.device, precision: str):
    """The autocast context of ``precision`` on ``device`` (a no-op for fp32)."""
    dtype = DTYPES[precision]
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=dtype)


def needs_grad_scaler(precision: str) -> bool:
    """fp16 gradients underflow without loss scaling; bf16 and fp32 need none."""
    return precision == "fp16"


def set_tf32(device: torch.device, enabled: bool) -> None:
    """TF32 tensor-core matmuls and convolutions on Ampere and newer GPUs (10-bit mantissa inputs,
    float32 accumulation); nothing on other devices."""
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = enabled
        torch.backends.cudnn.allow_tf32 = enabled


def synchronize(device: torch.device) -> None:
    """Wait for the device's queued work (for honest timings)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type == "mps":
        torch.mps.synchronize()


def randn(shape, *, generator: torch.Generator | None, device: torch.device, dtype=torch.float32) -> torch.Tensor:
    """Standard normal noise drawn where ``generator`` is (a CPU generator: the same numbers on every
    device, diffusers' ``randn_tensor`` convention) and moved to ``device``."""
    where = generator.device if generator is not None else device
    return torch.randn(shape, generator=generator, dtype=dtype, device=where).to(device)


__all__ = [
    "DEVICES",
    "PRECISIONS",
    "DeviceError",
    "autocast",
    "cuda_available",
    "needs_grad_scaler",
    "randn",
    "resolve_device",
    "resolve_precision",
    "set_tf32",
    "synchronize",
]
