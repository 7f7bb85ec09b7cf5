"""The definitions of kuosan's fused operations, in plain PyTorch operations.

Each function here is what its namesake in :mod:`kuosan.ops` computes; the CPU kernels
(:mod:`kuosan.ops.cpu`) compute the same up to floating-point rounding, and the tests compare them
against these. Shapes: feature maps x (B, C, H, W); per-sample vectors (B, C).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def group_norm_act(
    x: torch.Tensor,
    groups: int,
    weight: torch.Tensor,
    bias: torch.Tensor,
    eps: float = 1e-6,
    *,
    e: torch.Tensor | None = None,
    scale: torch.Tensor | None = None,
    shift: torch.Tensor | None = None,
    act: bool = False,
) -> torch.Tensor:
    r"""``SiLU(GN(x + e) (1 + scale) + shift)`` (each part optional; SiLU only if ``act``):

    .. math::
        x' = x + e_{b,c}, \quad
        z = \frac{x' - \mu_{b,g}}{\sqrt{\sigma^2_{b,g} + \epsilon}}\, w_c + b_c, \quad
        y = \mathrm{SiLU}\big(z\,(1 + s_{b,c}) + t_{b,c}\big)

    with :math:`\mu, \sigma^2` the mean and biased variance of x' over the pixels and channels of
    group g (Wu & He 2018). The three uses in a U-Net block: ``SiLU(GN(x))``, DDPM's ``GN(h + emb)``
    and improved-diffusion's scale-shift norm ``GN(h) (1 + s) + t``."""
    h = x + e[:, :, None, None].to(x.dtype) if e is not None else x
    h = F.group_norm(h, groups, weight, bias, eps)
    if scale is not None:
        h = h * (1 + scale[:, :, None, None].to(h.dtype)) + shift[:, :, None, None].to(h.dtype)
    return F.silu(h) if act else h


def conv2d(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    stride=1,
    padding=0,
    dilation=1,
    groups: int = 1,
    residual: torch.Tensor | None = None,
) -> torch.Tensor:
    """``conv2d(x) + residual`` (the residual optional): a convolution that ends a residual branch."""
    y = F.conv2d(x, weight, bias, stride, padding, dilation, groups)
    return y if residual is None else y + residual


def channel_linear(
    x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, residual: torch.Tensor | None = None
) -> torch.Tensor:
    """A Linear layer (weight (O, C)) over the channels of every pixel of x (B, C, H, W) -> (B, O, H, W),
    plus ``residual``: a 1x1 convolution."""
    y = F.linear(x.permute(0, 2, 3, 1), weight, bias).permute(0, 3, 1, 2)
    return y if residual is None else y + residual


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    r"""Scaled dot-product attention softmax(q k^T / sqrt(d)) v (Vaswani et al. 2017, Eq. 1) over
    (B, heads, N, d) queries and (B, heads, M, d) keys and values; ``mask`` (boolean, broadcastable to
    (B, heads, N, M), True = may attend) gives the removed keys weight exactly 0."""
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask)


def self_attention(qkv: torch.Tensor, heads: int) -> torch.Tensor:
    """Multi-head self-attention from one projection qkv (B, N, 3 heads d), whose thirds are q, k, v,
    each (B, N, heads, d): softmax(q k^T / sqrt(d)) v as (B, N, heads d), the softmax in float32."""
    b, n, c3 = qkv.shape
    d = c3 // (3 * heads)
    q, k, v = qkv.view(b, n, 3, heads, d).permute(2, 0, 3, 1, 4)
    weights = ((q @ k.transpose(-1, -2)).float() * d**-0.5).softmax(-1).to(qkv.dtype)
    return (weights @ v).transpose(1, 2).reshape(b, n, c3 // 3)
