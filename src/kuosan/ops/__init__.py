"""The fused operations kuosan's networks are built from, behind one interface.

The contract: each operation is defined by its plain-PyTorch namesake in :mod:`kuosan.ops.reference`
and returns that up to floating-point rounding, for every input. Where a faster implementation
applies (today: kuosan's CPU kernels, :mod:`kuosan.ops.cpu`, on channels-last float32/bfloat16 CPU
tensors in training) it is taken; everything else (GPUs, NCHW tensors, ``torch.compile``, no C++
compiler, ``KUOSAN_FUSED=0``) runs the reference. Networks call only these functions and otherwise
hold plain ``nn.GroupNorm``, ``nn.Conv2d``, ``nn.Linear`` modules, so their state dicts are the
usual ones.

- :func:`group_norm_act` ``SiLU(GN(x + e) (1 + scale) + shift)``: the norm of a U-Net block;
- :func:`conv2d`, :func:`channel_linear`: a convolution (a Linear over each pixel's channels) plus
  an optional residual: the layer that ends a residual branch;
- :func:`attend`, :func:`self_attention`: multi-head scaled dot-product attention.
"""

from __future__ import annotations

import torch
from torch import nn

from kuosan.ops import reference
from kuosan.ops.cpu import autograd
from kuosan.ops.cpu import available as kernels_available


def group_norm_act(
    x: torch.Tensor,
    norm: nn.GroupNorm,
    *,
    e: torch.Tensor | None = None,
    scale: torch.Tensor | None = None,
    shift: torch.Tensor | None = None,
    act: bool = False,
    passthrough: bool = False,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """``reference.group_norm_act`` with the groups, affine and eps of ``norm``; e, scale, shift are
    optional (B, C) inputs. The output has x's dtype (float32 where PyTorch's GroupNorm upcasts under
    autocast) and memory format.

    ``passthrough=True`` returns ``(out, x)``: x again, for the block's residual path to use in place
    of x, so that the CPU kernel's backward adds the two gradients of x as it writes dx."""
    if autograd.group_norm_applies(x):
        b = x.shape[0]
        W, B = norm.weight.expand(b, -1), norm.bias.expand(b, -1)
        if scale is not None:
            W, B = W * (1 + scale), B * (1 + scale) + shift
        return autograd.GroupNormAct.apply(x, e, W, B, norm.num_groups, norm.eps, act, passthrough)
    h = reference.group_norm_act(
        x, norm.num_groups, norm.weight, norm.bias, norm.eps, e=e, scale=scale, shift=shift, act=act
    )
    return (h, x) if passthrough else h


def conv_backward_applies(x: torch.Tensor, conv: nn.Conv2d) -> bool:
    """Whether :func:`conv2d` takes the CPU kernels' backward for ``conv(x)`` (zero padding given as
    numbers, and ``autograd.conv_backward_applies``)."""
    return (
        conv.padding_mode == "zeros"
        and not isinstance(conv.padding, str)
        and autograd.conv_backward_applies(x, conv.weight)
    )


def conv2d(x: torch.Tensor, conv: nn.Conv2d, residual: torch.Tensor | None = None) -> torch.Tensor:
    """``conv(x)`` (plus ``residual``) for an ``nn.Conv2d``. Under autocast the inputs are cast as
    autocast would."""
    if not conv_backward_applies(x, conv) or (not torch.is_autocast_enabled("cpu") and x.dtype != conv.weight.dtype):
        y = nn.Conv2d.forward(conv, x)
        return y if residual is None else y + residual
    return autograd.conv2d(x, conv.weight, conv.bias, conv.stride, conv.padding, conv.dilation, conv.groups, residual)


def channel_linear(x: torch.Tensor, linear: nn.Linear, residual: torch.Tensor | None = None) -> torch.Tensor:
    """``linear`` over the channels of every pixel of x (B, C, H, W) -> (B, O, H, W) (plus ``residual``):
    a 1x1 convolution with the Linear's weight viewed as (O, C, 1, 1). Where the CPU kernels apply it
    is :func:`conv2d`'s convolution (whose weight and bias gradient is the AMX kernel's: one pass, no
    transposed copy of the output gradient; whose forward adds the residual); otherwise ``F.linear``
    on the (B, H, W, C) view. A projection that is not a plain Linear (one with a LoRA adapter,
    ``networks/lora.py``, whose forward adds its low-rank update) is called as a module on that view."""
    if type(linear) is not nn.Linear:
        y = linear(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)
        return y if residual is None else y + residual
    if not autograd.conv_backward_applies(x, linear.weight) or (
        not torch.is_autocast_enabled("cpu") and x.dtype != linear.weight.dtype
    ):
        return reference.channel_linear(x, linear.weight, linear.bias, residual)
    return autograd.conv2d(x, linear.weight[:, :, None, None], linear.bias, (1, 1), (0, 0), (1, 1), 1, residual)


def self_attention(qkv: torch.Tensor, heads: int) -> torch.Tensor:
    """``reference.self_attention``: multi-head softmax(q k^T / sqrt(d)) v with q, k, v the thirds of
    the projection qkv (B, N, 3 heads d) -> (B, N, heads d). The AMX kernel where it applies
    (``autograd.self_attention_applies``: q, k, v read in place, one gradient tensor), else
    :func:`attend` on the thirds (chunks of the last dimension, whose gradients assemble with one
    concatenation)."""
    if autograd.self_attention_applies(qkv, heads):
        return autograd.SelfAttention.apply(qkv, heads, (qkv.shape[-1] // (3 * heads)) ** -0.5)
    b, n, c3 = qkv.shape
    d = c3 // (3 * heads)
    q, k, v = (t.reshape(b, n, heads, d).transpose(1, 2) for t in qkv.chunk(3, dim=-1))
    return attend(q, k, v).transpose(1, 2).reshape(b, n, c3 // 3)


def attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    r"""``reference.attention``: softmax(q k^T / sqrt(d)) v over (B, heads, N, d), keys removed by a
    boolean ``mask`` (True = may attend) getting weight exactly 0.

    On CPU, half/bfloat16 inputs (e.g. under ``torch.autocast("cpu", torch.bfloat16)``) take one of
    two routes, both with a float32 softmax (what improved-diffusion uses for stability): at U-Net
    sizes where the two products dominate (N <= 64 tokens, or N <= 256 with d >= 64) the products
    run in bfloat16 on the matrix units and only the (N, M) logits are float32; otherwise torch's
    float32 flash kernel runs (its bfloat16 kernel is slower than the float32 one at U-Net token
    counts). Measured forward+backward, torch 2.13, one thread, batch 32: N=256, d=128: 14 ms vs
    40 ms float32 flash; N=256, 4 heads of d=32: 93 ms vs 52 ms; N=1024, d=16: 2.2 s vs 0.36 s.
    On GPUs the fused reduced-precision kernels are used as they are."""
    if q.device.type == "cpu" and q.dtype in (torch.bfloat16, torch.float16):
        n, m, d = q.shape[-2], k.shape[-2], q.shape[-1]
        if max(n, m) <= 64 or (max(n, m) <= 256 and d >= 64):
            # dense operands: a product of strided views (q, k, v sliced from one qkv projection)
            # runs 3-6x slower in oneDNN (0.36 vs 2.2 ms at B=32, N=256, d=128); the copies cost 0.1 ms
            k, v = k.contiguous(), v.contiguous()
            logits = (q * d**-0.5) @ k.transpose(-1, -2)
            if mask is not None:
                logits = logits.masked_fill(~mask, float("-inf"))
            with torch.autocast("cpu", enabled=False):  # the CPU kernel exponentiates and sums in float32
                weights = logits.softmax(-1)
            return weights @ v
        with torch.autocast("cpu", enabled=False):
            out = reference.attention(q.float(), k.float(), v.float(), mask)
        return out.to(q.dtype)
    return reference.attention(q, k, v, mask)


__all__ = [
    "attend",
    "channel_linear",
    "conv2d",
    "conv_backward_applies",
    "group_norm_act",
    "kernels_available",
    "reference",
    "self_attention",
]
