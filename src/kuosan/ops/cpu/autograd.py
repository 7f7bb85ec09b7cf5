"""The CPU kernels as autograd Functions, and where each applies.

- :class:`GroupNormAct` (``group_norm_act.cpp``): at the U-Net's sizes PyTorch's CPU GroupNorm is
  slow on channels-last tensors (its backward 5-14x slower than on NCHW ones, torch 2.13) while the
  convolutions are 1.5-2.5x faster on channels-last in bfloat16, and GroupNorm, SiLU and the
  additions are separate passes over memory. The kernel does it all in two passes forward and two
  backward, statistics in float32, saving only x and the (B, G) statistics.
- :class:`Conv2d` (``conv_backward.cpp``): the weight gradient on an AMX tile kernel
  (``conv_weight_grad.cpp``), as a forward convolution with batch and channels exchanged, or as
  oneDNN's single-threaded kernel on each half of the batch on two threads, where oneDNN's own
  multi-threaded kernel is slower (docs/speed.md has the measurements); the forward adds a residual
  inside oneDNN's convolution.
- :class:`SelfAttention` (``attention.cpp``): softmax(q k^T / sqrt(d)) v on AMX tiles, reading q, k,
  v in place from the projection.

Each Function's backward falls back to PyTorch operations where it must be differentiable itself
(``create_graph=True``, e.g. sliced score matching) or runs under a Python dispatch mode
(FlopCounterMode sees the operations).
"""

from __future__ import annotations

import torch
from torch.utils._python_dispatch import _get_current_dispatch_mode

from kuosan.ops import reference
from kuosan.ops.cpu import available, extension

# oneDNN's convolution with a fused addition takes bfloat16 only with AVX-512 (BW, VL, DQ) or
# AVX-NE-CONVERT; elsewhere a bfloat16 residual is added after the convolution
_BF16_POINTWISE = bool(getattr(torch.cpu, "_is_avx512_supported", lambda: False)())


class GroupNormAct(torch.autograd.Function):
    """``reference.group_norm_act`` with W, B per sample (B, C) (the affine with any scale-shift
    folded in). With ``passthrough`` the Function also returns x itself, for the block's residual
    path; the gradient that arrives there is added to dx inside the backward kernel, in place of
    autograd's separate addition of the two gradients of x (one pass over memory instead of three)."""

    @staticmethod
    def forward(ctx, x, e, W, B, groups: int, eps: float, act: bool, passthrough: bool):
        ctx.set_materialize_grads(False)
        b, c, h, w = x.shape
        tokens = x.permute(0, 2, 3, 1).reshape(b, h * w, c)  # a view for channels-last x
        e_ = e.float().contiguous() if e is not None else x.new_empty(0, dtype=torch.float32)
        W_, B_ = W.float().contiguous(), B.float().contiguous()
        y, mean, rstd = extension().group_norm_act_forward(tokens, e_, W_, B_, groups, eps, act)
        ctx.save_for_backward(tokens, e_, W_, B_, mean, rstd)
        ctx.act, ctx.shape = act, (b, c, h, w)
        ctx.dtypes = (e.dtype if e is not None else None, W.dtype, B.dtype)
        y = y.view(b, h, w, c).permute(0, 3, 1, 2)
        return (y, x) if passthrough else y

    @staticmethod
    def backward(ctx, dy, dskip=None):
        tokens, e_, W_, B_, mean, rstd = ctx.saved_tensors
        b, c, h, w = ctx.shape
        if dy is None:  # only the residual path reached the loss
            return dskip, None, None, None, None, None, None, None
        e_dtype, W_dtype, B_dtype = ctx.dtypes

        def tokens_of(t):  # (B, C, H, W) -> the (B, HW, C) rows of the kernel, a view if channels-last
            return t.to(tokens.dtype).permute(0, 2, 3, 1).reshape(b, h * w, c)

        skip = tokens_of(dskip) if dskip is not None else tokens.new_empty(0)
        dx, de, dW, dB = extension().group_norm_act_backward(
            tokens_of(dy), tokens, e_, W_, B_, mean, rstd, ctx.act, skip
        )
        de = de.to(e_dtype) if e_dtype is not None else None
        return dx.view(b, h, w, c).permute(0, 3, 1, 2), de, dW.to(W_dtype), dB.to(B_dtype), None, None, None, None


def group_norm_applies(x: torch.Tensor) -> bool:
    """Whether :class:`GroupNormAct` serves x: a channels-last float32/bfloat16 CPU feature map, the
    kernels built, not compiling."""
    return (
        x.device.type == "cpu"
        and x.dim() == 4
        and x.dtype in (torch.float32, torch.bfloat16)
        and x.is_contiguous(memory_format=torch.channels_last)
        and not torch.compiler.is_compiling()
        and available()
    )


class Conv2d(torch.autograd.Function):
    """``F.conv2d`` whose backward is ``conv_backward.cpp``: the input gradient is oneDNN's; the
    weight gradient is the AMX tile kernel (bf16 3x3 and 1x1), a forward convolution with batch and
    channels exchanged (stride 1, at most 16 output pixels) or halves of the batch on two threads,
    where that is faster.

    With a ``residual`` (the block's skip path, same shape, dtype and layout as the output) the
    forward is oneDNN's convolution with the addition fused into its output stage (one pass over
    memory less than a separate addition), and the residual's gradient is dy itself."""

    @staticmethod
    def forward(ctx, x, weight, bias, stride, padding, dilation, groups: int, residual=None):
        ctx.save_for_backward(x, weight)
        ctx.conf = (list(stride), list(padding), list(dilation), groups, bias is not None)
        if residual is None:
            return torch.nn.functional.conv2d(x, weight, bias, stride, padding, dilation, groups)
        if _get_current_dispatch_mode() is not None:  # a mode (FlopCounterMode) sees the plain operations
            return torch.nn.functional.conv2d(x, weight, bias, stride, padding, dilation, groups) + residual
        return torch.ops.mkldnn._convolution_pointwise.binary(
            x, residual, weight, bias, list(padding), list(stride), list(dilation), groups, "add", None, None, [], None
        )

    @staticmethod
    def backward(ctx, dy):
        x, w = ctx.saved_tensors
        stride, padding, dilation, groups, has_bias = ctx.conf
        need_x, need_w, need_b = ctx.needs_input_grad[:3]
        mask = [need_x, need_w, need_b and has_bias]
        dy = dy.to(x.dtype)
        if torch.is_grad_enabled() or _get_current_dispatch_mode() is not None:
            # differentiable; and a Python mode sees the operations PyTorch's own backward runs
            bias_sizes = [w.shape[0]] if has_bias else None
            dx, dw, db = torch.ops.aten.convolution_backward(
                dy, x, w, bias_sizes, stride, padding, dilation, False, [0, 0], groups, mask
            )
        else:
            dx, dw, db, _ = extension().conv2d_backward(dy, x, w, stride, padding, dilation, groups, *mask)
        return dx, dw, db, None, None, None, None, dy if ctx.needs_input_grad[7] else None


def conv_backward_applies(x: torch.Tensor, weight: torch.Tensor) -> bool:
    """Whether :class:`Conv2d` serves a convolution of x with ``weight``: training (grad enabled,
    weight trainable) on a channels-last float32/bfloat16 CPU tensor, the kernels built, not compiling."""
    return (
        torch.is_grad_enabled()
        and weight.requires_grad
        and x.device.type == "cpu"
        and x.dim() == 4
        and x.shape[0] > 0
        and x.dtype in (torch.float32, torch.bfloat16)
        and x.is_contiguous(memory_format=torch.channels_last)
        and not torch.compiler.is_compiling()
        and available()
    )


def conv2d(x, weight, bias, stride, padding, dilation, groups, residual):
    """:class:`Conv2d` with autocast's casts made outside it (so the casts' own backward returns
    float32 gradients to float32 parameters). A residual in the convolution's dtype and channels-last
    layout is added inside the convolution; otherwise by a separate addition (same up to rounding)."""
    dtype = torch.get_autocast_dtype("cpu") if torch.is_autocast_enabled("cpu") else x.dtype
    bias = None if bias is None else bias.to(dtype)
    fuse = (
        residual is not None
        and residual.dtype == dtype
        and residual.device.type == "cpu"
        and residual.is_contiguous(memory_format=torch.channels_last)
        and (dtype != torch.bfloat16 or _BF16_POINTWISE)
    )
    with torch.autocast("cpu", enabled=False):
        y = Conv2d.apply(
            x.to(dtype), weight.to(dtype), bias, stride, padding, dilation, groups, residual if fuse else None
        )
    return y if residual is None or fuse else y + residual


class SelfAttention(torch.autograd.Function):
    """``reference.self_attention`` on the AMX kernel (``attention.cpp``); it saves the attention
    weights P for the backward. A backward that must be differentiable (``create_graph=True``) or runs
    under a Python dispatch mode recomputes through the reference instead."""

    @staticmethod
    def forward(ctx, qkv, heads: int, scale: float):
        out, P = extension().amx_attention_forward(qkv, heads, scale)
        ctx.save_for_backward(qkv, P)
        ctx.heads, ctx.scale = heads, scale
        return out

    @staticmethod
    def backward(ctx, dout):
        qkv, P = ctx.saved_tensors
        if torch.is_grad_enabled() or _get_current_dispatch_mode() is not None:
            with torch.enable_grad():
                x = qkv if qkv.requires_grad else qkv.detach().requires_grad_()
                (dqkv,) = torch.autograd.grad(
                    reference.self_attention(x, ctx.heads), x, dout.to(qkv.dtype), create_graph=torch.is_grad_enabled()
                )
            return dqkv, None, None
        return extension().amx_attention_backward(dout, qkv, P, ctx.heads, ctx.scale), None, None


def self_attention_applies(qkv: torch.Tensor, heads: int) -> bool:
    """Whether :class:`SelfAttention` serves qkv: a contiguous bfloat16 CPU qkv (B, N, 3 heads d) with N
    a multiple of 16 (N <= 1024) and d of 32, CPUs with AMX, torch on at most two threads, not
    compiling and no Python dispatch mode (FlopCounterMode sees the operations)."""
    return (
        qkv.device.type == "cpu"
        and qkv.dtype == torch.bfloat16
        and not torch.compiler.is_compiling()
        and _get_current_dispatch_mode() is None
        and available()
        and extension().amx_attention_applies(qkv, heads)
    )
