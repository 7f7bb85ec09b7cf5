"""Multi-head self-attention over the pixels of a feature map (Ho et al. 2020, App. B; Vaswani
et al. 2017, Eq. 1).

Notation: ``x`` has shape (B, C, H, W); the N = H * W pixels are the tokens; ``d = C / heads`` is
the per-head width.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .blocks import normalization, zero_module


def attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    r"""softmax(q k^T / sqrt(d)) v over (B, heads, N, d), via ``scaled_dot_product_attention``.

    On CPU, half/bfloat16 inputs (e.g. under ``torch.autocast("cpu", torch.bfloat16)``) are
    attended in float32 and cast back: torch's reduced-precision CPU attention kernels are slower
    than float32 ones at U-Net token counts (measured, torch 2.13, forward+backward: 12x slower at
    N=16, 1.5x at N=256, about even at N=1024), and a float32 softmax is what improved-diffusion
    uses for stability. On GPUs the fused reduced-precision kernels are used as they are.
    """
    if q.device.type == "cpu" and q.dtype in (torch.bfloat16, torch.float16):
        with torch.autocast("cpu", enabled=False):
            out = F.scaled_dot_product_attention(q.float(), k.float(), v.float())
        return out.to(q.dtype)
    return F.scaled_dot_product_attention(q, k, v)


class SelfAttention2d(nn.Module):
    r"""Residual multi-head self-attention block.

    .. math::
        [Q, K, V] &= \mathrm{GN}(x)\, W_{qkv} \\
        \mathrm{out} &= x + \mathrm{softmax}\!\big(Q K^\top / \sqrt{d}\big)\, V\, W_o

    computed per head by :func:`attend` (``scaled_dot_product_attention``, which picks a fused
    kernel when one is available). :math:`W_o` is zero-initialised, so a fresh block
    is the identity. The projections are Linear layers on the (B, N, C) token layout, equivalent
    to 1x1 convolutions; for channels-last inputs that layout is free (no copy).

    Args:
        channels: C, the number of input (and output) channels.
        num_heads: number of attention heads; must divide ``channels``.
        groups: GroupNorm groups (clamped to a divisor of ``channels``).
    """

    def __init__(self, *, channels: int, num_heads: int = 4, groups: int = 32):
        super().__init__()
        if num_heads < 1 or channels % num_heads:
            raise ValueError(f"num_heads={num_heads} must be >= 1 and divide channels={channels}")
        self.num_heads = num_heads
        self.norm = normalization(channels, groups=groups)
        self.qkv = nn.Linear(channels, 3 * channels)
        self.proj_out = zero_module(nn.Linear(channels, channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) -> (B, C, H, W)."""
        b, c, h, w = x.shape
        heads, d = self.num_heads, c // self.num_heads
        tokens = self.norm(x).flatten(2).transpose(1, 2)  # (B, N, C)
        qkv = self.qkv(tokens).reshape(b, h * w, 3, heads, d).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)  # each (B, heads, N, d)
        out = attend(q, k, v)
        out = self.proj_out(out.transpose(1, 2).reshape(b, h * w, c))  # (B, N, C)
        return x + out.transpose(1, 2).reshape(b, c, h, w)
