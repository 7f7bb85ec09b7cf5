r"""GroupNorm fused with what follows it in a U-Net block, for channels-last CPU tensors.

.. math::
    x' = x + e_{b,c}, \qquad
    z = \frac{x' - \mu_{b,g}}{\sqrt{\sigma^2_{b,g} + \epsilon}}\; W_{b,c} + B_{b,c}, \qquad
    y = \mathrm{SiLU}(z)\ \text{(or } z\text{)}

with :math:`\mu, \sigma^2` the mean and biased variance of :math:`x'` over the pixels and the
channels of group g (Wu & He 2018). One function covers the three uses in the U-Net: the plain
``SiLU(GN(x))`` (W, B the GroupNorm affine), DDPM's ``GN(h + emb)`` (the additive e), and
improved-diffusion's scale-shift norm ``GN(h) (1 + s) + b`` (W = w (1 + s), B = b (1 + s) + shift).

Why: at the U-Net's sizes PyTorch's CPU GroupNorm is slow on channels-last tensors (its backward
is 5-14x slower than on NCHW ones, torch 2.13) while the convolutions are 1.5-2.5x faster on
channels-last in bfloat16; GroupNorm, SiLU and the additions are separate passes over memory. A
C++ kernel (``group_norm_act.cpp``, built by ``torch.utils.cpp_extension`` on first use and cached)
does the whole thing in two passes forward and two backward, statistics in float32, and saves only
``x`` and the (B, G) statistics for the backward. Where it cannot be used (no compiler, NCHW or
non-CPU tensors, under ``torch.compile``, ``KUOSAN_FUSED=0``) the same function runs as plain
PyTorch operations, so results agree to rounding (tests/test_fused.py).

The same extension holds the convolution backward of :func:`conv2d` (``conv_backward.cpp``): the
weight gradient on kuosan's AMX tile kernel (``conv_weight_grad.cpp``), as a forward convolution
with batch and channels exchanged, or as oneDNN's single-threaded kernel on each half of the batch
on two threads, where oneDNN's own multi-threaded kernel is slower (docs/speed.md has the
measurements).
"""
from __future__ import annotations

import os
import warnings
import zlib
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.utils._python_dispatch import _get_current_dispatch_mode

_EXT = None
_EXT_FAILED = False


def _extension():
    """The compiled kernel, or None if it cannot be built here (warns once)."""
    global _EXT, _EXT_FAILED
    if _EXT is not None or _EXT_FAILED:
        return _EXT
    try:
        from torch.utils.cpp_extension import load

        here = Path(__file__).parent
        sources = [str(here / f) for f in ("kernels.cpp", "group_norm_act.cpp", "conv_backward.cpp",
                                             "conv_weight_grad.cpp", "attention.cpp")]
        # the norm kernel's AVX-512 loops use 512-bit vectors themselves (intrinsics); the
        # compiler's own choice of width stays its default (docs/speed.md)
        flags = ["-O3", "-march=native", "-ffast-math", "-fopenmp"]
        # the build cache is keyed on the sources and flags: the headers' digest makes it see them too
        headers = b"".join(p.read_bytes() for p in sorted(here.glob("*.h")))
        flags.append(f"-DKUOSAN_HEADERS={zlib.crc32(headers)}")
        _EXT = load(name="kuosan_kernels", sources=sources, verbose=False, extra_cflags=flags,
                    extra_ldflags=["-fopenmp"])
    except Exception as exc:  # no compiler, no ninja, unsupported platform: fall back to PyTorch ops
        _EXT_FAILED = True
        warnings.warn(f"kuosan: fused CPU kernels unavailable ({type(exc).__name__}: "
                      f"{str(exc).strip().splitlines()[-1] if str(exc).strip() else ''}); using PyTorch ops",
                      stacklevel=3)
    return _EXT


def fused_available() -> bool:
    """True if the C++ kernel is built (or builds now) and not disabled by ``KUOSAN_FUSED=0``."""
    return os.environ.get("KUOSAN_FUSED", "1") != "0" and _extension() is not None


class _GroupNormAct(torch.autograd.Function):
    """With ``passthrough`` the Function also returns x itself, for the block's residual path; the
    gradient that arrives there is added to dx inside the backward kernel, in place of autograd's
    separate addition of the two gradients of x (one pass over memory instead of three)."""

    @staticmethod
    def forward(ctx, x, e, W, B, groups: int, eps: float, act: bool, passthrough: bool):
        ctx.set_materialize_grads(False)
        b, c, h, w = x.shape
        tokens = x.permute(0, 2, 3, 1).reshape(b, h * w, c)  # a view for channels-last x
        e_ = e.float().contiguous() if e is not None else x.new_empty(0, dtype=torch.float32)
        W_, B_ = W.float().contiguous(), B.float().contiguous()
        y, mean, rstd = _EXT.group_norm_act_forward(tokens, e_, W_, B_, groups, eps, act)
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
        dx, de, dW, dB = _EXT.group_norm_act_backward(tokens_of(dy), tokens, e_, W_, B_, mean, rstd, ctx.act, skip)
        de = de.to(e_dtype) if e_dtype is not None else None
        return dx.view(b, h, w, c).permute(0, 3, 1, 2), de, dW.to(W_dtype), dB.to(B_dtype), None, None, None, None


def fusable(x: torch.Tensor) -> bool:
    """Whether :func:`group_norm_act` takes the fused kernel for ``x``."""
    return (x.device.type == "cpu" and x.dim() == 4 and x.dtype in (torch.float32, torch.bfloat16)
            and x.is_contiguous(memory_format=torch.channels_last) and not torch.compiler.is_compiling()
            and fused_available())


def group_norm_act(x: torch.Tensor, groups: int, weight: torch.Tensor, bias: torch.Tensor, eps: float = 1e-6, *,
                   e: torch.Tensor | None = None, scale: torch.Tensor | None = None,
                   shift: torch.Tensor | None = None, act: bool = False,
                   passthrough: bool = False) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """``GN(x + e) * (1 + scale) + shift``, then SiLU if ``act``, for x (B, C, H, W).

    ``weight``, ``bias`` (C,) are the GroupNorm affine; ``e``, ``scale``, ``shift`` (B, C) are
    optional per-sample inputs. The output has x's dtype (float32 where PyTorch's GroupNorm
    upcasts under autocast) and memory format. The fused kernel serves channels-last float32 or
    bfloat16 CPU tensors (see :func:`fusable`); anything else runs as PyTorch operations.

    ``passthrough=True`` returns ``(out, x)``: x again, for a residual path to use in place of x,
    so that the fused backward adds the two gradients of x as it writes dx.
    """
    if fusable(x):
        b = x.shape[0]
        W, B = weight.expand(b, -1), bias.expand(b, -1)
        if scale is not None:
            W, B = W * (1 + scale), B * (1 + scale) + shift
        return _GroupNormAct.apply(x, e, W, B, groups, eps, act, passthrough)
    h = x + e[:, :, None, None].to(x.dtype) if e is not None else x
    h = F.group_norm(h, groups, weight, bias, eps)
    if scale is not None:
        h = h * (1 + scale[:, :, None, None].to(h.dtype)) + shift[:, :, None, None].to(h.dtype)
    h = F.silu(h) if act else h
    return (h, x) if passthrough else h


class _Conv2d(torch.autograd.Function):
    """``F.conv2d`` whose backward is ``conv_backward.cpp``: the input gradient is oneDNN's; the
    weight gradient is kuosan's AMX tile kernel (bf16 3x3 and 1x1), a forward convolution with
    batch and channels exchanged (stride 1, at most 16 output pixels) or halves of the batch on two
    threads, where that is faster. A
    backward that must itself be differentiable (``create_graph=True``, e.g. sliced score matching)
    or that runs under a Python dispatch mode (FlopCounterMode, ...) takes PyTorch's own
    ``convolution_backward``, which has a derivative.

    With a ``residual`` (the block's skip path, same shape, dtype and layout as the output) the
    forward is oneDNN's convolution with the addition fused into its output stage (one pass over
    memory less than a separate addition), and the residual's gradient is dy itself."""

    @staticmethod
    def forward(ctx, x, weight, bias, stride, padding, dilation, groups: int, residual=None):
        ctx.save_for_backward(x, weight)
        ctx.conf = (list(stride), list(padding), list(dilation), groups, bias is not None)
        if residual is None:
            return F.conv2d(x, weight, bias, stride, padding, dilation, groups)
        if _get_current_dispatch_mode() is not None:  # a mode (FlopCounterMode) sees the plain operations
            return F.conv2d(x, weight, bias, stride, padding, dilation, groups) + residual
        return torch.ops.mkldnn._convolution_pointwise.binary(x, residual, weight, bias, list(padding), list(stride),
                                                              list(dilation), groups, "add", None, None, [], None)

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
            dx, dw, db = torch.ops.aten.convolution_backward(dy, x, w, bias_sizes, stride, padding, dilation, False,
                                                             [0, 0], groups, mask)
        else:
            dx, dw, db, _ = _EXT.conv2d_backward(dy, x, w, stride, padding, dilation, groups, *mask)
        return dx, dw, db, None, None, None, None, dy if ctx.needs_input_grad[7] else None


def _custom_backward_applies(x: torch.Tensor, weight: torch.Tensor) -> bool:
    return (torch.is_grad_enabled() and weight.requires_grad and x.device.type == "cpu" and x.dim() == 4
            and x.shape[0] > 0 and x.dtype in (torch.float32, torch.bfloat16)
            and x.is_contiguous(memory_format=torch.channels_last) and not torch.compiler.is_compiling()
            and fused_available())


def conv_backward_applies(x: torch.Tensor, conv: torch.nn.Conv2d) -> bool:
    """Whether :func:`conv2d` takes the custom backward for ``conv(x)``: training (grad enabled,
    weight trainable) on a channels-last float32/bfloat16 CPU tensor, zero padding given as
    numbers, the kernels built and not compiling."""
    return conv.padding_mode == "zeros" and not isinstance(conv.padding, str) and _custom_backward_applies(x, conv.weight)


def _conv2d(x, weight, bias, stride, padding, dilation, groups, residual):
    """:class:`_Conv2d` with autocast's casts made outside it (so the casts' own backward returns
    float32 gradients to float32 parameters)."""
    dtype = torch.get_autocast_dtype("cpu") if torch.is_autocast_enabled("cpu") else x.dtype
    bias = None if bias is None else bias.to(dtype)
    fuse = (residual is not None and residual.dtype == dtype and residual.device.type == "cpu"
            and residual.is_contiguous(memory_format=torch.channels_last))
    with torch.autocast("cpu", enabled=False):
        y = _Conv2d.apply(x.to(dtype), weight.to(dtype), bias, stride, padding, dilation, groups,
                          residual if fuse else None)
    return y if residual is None or fuse else y + residual


def conv2d(x: torch.Tensor, conv: torch.nn.Conv2d, residual: torch.Tensor | None = None) -> torch.Tensor:
    """``conv(x)`` (plus ``residual``) for an ``nn.Conv2d``, with the faster weight gradient where
    :func:`conv_backward_applies`. Under autocast the inputs are cast as autocast would. A residual
    in the convolution's dtype and channels-last layout is added inside the convolution; otherwise
    by a separate addition (same result up to rounding)."""
    if not conv_backward_applies(x, conv) or (not torch.is_autocast_enabled("cpu") and x.dtype != conv.weight.dtype):
        y = torch.nn.Conv2d.forward(conv, x)
        return y if residual is None else y + residual
    return _conv2d(x, conv.weight, conv.bias, conv.stride, conv.padding, conv.dilation, conv.groups, residual)


def channel_linear(x: torch.Tensor, linear: torch.nn.Linear, residual: torch.Tensor | None = None) -> torch.Tensor:
    """``linear`` over the channels of every pixel of x (B, C, H, W) -> (B, O, H, W) (plus
    ``residual``): a 1x1 convolution with the Linear's weight viewed as (O, C, 1, 1). On a
    channels-last CPU tensor in training it is :func:`conv2d`'s convolution, whose weight and bias
    gradient is the AMX kernel's (one pass, no transposed copy of the output gradient) and whose
    forward adds the residual; otherwise ``F.linear`` on the (B, H, W, C) view."""
    if (not _custom_backward_applies(x, linear.weight)
            or (not torch.is_autocast_enabled("cpu") and x.dtype != linear.weight.dtype)):
        y = F.linear(x.permute(0, 2, 3, 1), linear.weight, linear.bias).permute(0, 3, 1, 2)
        return y if residual is None else y + residual
    return _conv2d(x, linear.weight[:, :, None, None], linear.bias, (1, 1), (0, 0), (1, 1), 1, residual)


def _self_attention_math(qkv: torch.Tensor, heads: int, scale: float) -> torch.Tensor:
    """softmax(scale q k^T) v from the qkv projection (B, N, 3 heads d) -> (B, N, heads d), in
    PyTorch operations with a float32 softmax: what the AMX kernel computes."""
    b, n, c3 = qkv.shape
    q, k, v = qkv.view(b, n, 3, heads, c3 // (3 * heads)).permute(2, 0, 3, 1, 4)
    weights = ((q @ k.transpose(-1, -2)).float() * scale).softmax(-1).to(qkv.dtype)
    return (weights @ v).transpose(1, 2).reshape(b, n, c3 // 3)


class _SelfAttention(torch.autograd.Function):
    """Self-attention from the qkv projection on kuosan's AMX kernel (``attention.cpp``); it saves
    the attention weights P for the backward. A backward that must be differentiable
    (``create_graph=True``) or runs under a Python dispatch mode recomputes through
    :func:`_self_attention_math` instead."""

    @staticmethod
    def forward(ctx, qkv, heads: int, scale: float):
        out, P = _EXT.amx_attention_forward(qkv, heads, scale)
        ctx.save_for_backward(qkv, P)
        ctx.heads, ctx.scale = heads, scale
        return out

    @staticmethod
    def backward(ctx, dout):
        qkv, P = ctx.saved_tensors
        if torch.is_grad_enabled() or _get_current_dispatch_mode() is not None:
            with torch.enable_grad():
                x = qkv if qkv.requires_grad else qkv.detach().requires_grad_()
                (dqkv,) = torch.autograd.grad(_self_attention_math(x, ctx.heads, ctx.scale), x, dout.to(qkv.dtype),
                                              create_graph=torch.is_grad_enabled())
            return dqkv, None, None
        return _EXT.amx_attention_backward(dout, qkv, P, ctx.heads, ctx.scale), None, None


def self_attention_applies(qkv: torch.Tensor, heads: int) -> bool:
    """Whether :func:`self_attention` takes the AMX kernel: a contiguous bfloat16 CPU qkv (B, N,
    3 heads d) with N a multiple of 16 (N <= 1024) and d of 32, CPUs with AMX, torch on at most two
    threads, not compiling and no Python dispatch mode (FlopCounterMode sees the operations)."""
    return (qkv.device.type == "cpu" and qkv.dtype == torch.bfloat16 and not torch.compiler.is_compiling()
            and _get_current_dispatch_mode() is None and fused_available()
            and _EXT.amx_attention_applies(qkv, heads))


def self_attention(qkv: torch.Tensor, heads: int) -> torch.Tensor:
    """Multi-head softmax(q k^T / sqrt(d)) v with q, k, v the thirds of the projection ``qkv``
    (B, N, 3 heads d), each (B, N, heads, d): (B, N, heads d). The AMX kernel where
    :func:`self_attention_applies`, PyTorch operations otherwise."""
    scale = (qkv.shape[-1] // (3 * heads)) ** -0.5
    if self_attention_applies(qkv, heads):
        return _SelfAttention.apply(qkv, heads, scale)
    return _self_attention_math(qkv, heads, scale)
