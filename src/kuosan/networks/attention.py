"""Attention over the pixels of a feature map: DDPM's self-attention block (Ho et al. 2020, App. B)
and latent diffusion's cross-attention to text tokens (Rombach et al. 2022, Sec. 3.3), both the
scaled dot-product attention softmax(Q K^T / sqrt(d)) V of Vaswani et al. 2017, Eq. 1.

Notation: ``x`` has shape (B, C, H, W); the N = H * W pixels are the tokens; ``d = C / heads`` is
the per-head width. ``context`` (B, L, D_c) are the L text tokens of tau_theta(y); ``context_mask``
(B, L) is True for real tokens and False for padding (a padding token gets no attention weight).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from kuosan import ops
from kuosan.ops import attend

from .blocks import normalization, zero_module


class SelfAttention2d(nn.Module):
    r"""Residual multi-head self-attention block.

    .. math::
        [Q, K, V] &= \mathrm{GN}(x)\, W_{qkv} \\
        \mathrm{out} &= x + \mathrm{softmax}\!\big(Q K^\top / \sqrt{d}\big)\, V\, W_o

    computed by :func:`kuosan.ops.self_attention` (kuosan's AMX kernel where it applies, else
    ``scaled_dot_product_attention``, which picks a fused kernel when one is available).
    :math:`W_o` is zero-initialised, so a fresh block is the identity. The projections are Linear
    layers (their weights as in diffusers and improved-diffusion) applied to every pixel's channels,
    i.e. 1x1 convolutions (``ops.channel_linear``); on channels-last inputs the (B, N, C) token layout
    is a view, and the residual addition happens inside W_o's convolution.

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
        heads = self.num_heads
        normed, x = ops.group_norm_act(x, self.norm, passthrough=True)  # x's two gradients meet in the norm's backward
        # the projections act on each pixel's channels: 1x1 convolutions on channels-last tensors
        qkv = ops.channel_linear(normed, self.qkv)  # (B, 3C, H, W): q | k | v, each (heads, d)
        qkv = qkv.permute(0, 2, 3, 1).reshape(b, h * w, 3 * c)  # (B, N, 3C), a view if channels-last
        out = ops.self_attention(qkv, heads)  # (B, N, C)
        out = out.view(b, h, w, c).permute(0, 3, 1, 2)  # (B, C, H, W), channels-last
        return ops.channel_linear(out, self.proj_out, residual=x)


def key_padding_mask(context_mask: torch.Tensor | None) -> torch.Tensor | None:
    """A (B, L) token mask (True = real token) as the (B, 1, 1, L) attention mask of :func:`attend`.
    ValueError if a prompt has no token at all (its softmax would be over nothing)."""
    if context_mask is None:
        return None
    if context_mask.ndim != 2:
        raise ValueError(f"context_mask must have shape (B, L), got {tuple(context_mask.shape)}")
    mask = context_mask.bool()
    if not bool(mask.any(1).all()):
        raise ValueError("context_mask has a row without any token; every prompt needs at least one")
    return mask[:, None, None, :]


class CrossAttention(nn.Module):
    r"""Multi-head attention of image tokens to context tokens (Rombach et al. 2022, Eq. 3):

    .. math::
        Q = x W_Q,\quad K = c W_K,\quad V = c W_V,\qquad
        \mathrm{out} = \mathrm{softmax}\!\big(Q K^\top / \sqrt{d}\big)\, V\, W_o

    with ``x`` (B, N, C) the query tokens and ``c`` (B, L, D_c) the context tokens (``c = x``, i.e.
    ``context=None``, makes it self-attention). Padding tokens of ``context_mask`` are masked out.
    W_Q, W_K, W_V have no bias, W_o has one (Stable Diffusion's / diffusers' ``Attention``).

    Args:
        query_dim: C.
        context_dim: D_c (default C: self-attention).
        num_heads: heads; must divide ``query_dim``.
        dropout: dropout after W_o.
    """

    def __init__(self, *, query_dim: int, context_dim: int | None = None, num_heads: int = 4, dropout: float = 0.0):
        super().__init__()
        if num_heads < 1 or query_dim % num_heads:
            raise ValueError(f"num_heads={num_heads} must be >= 1 and divide query_dim={query_dim}")
        context_dim = query_dim if context_dim is None else context_dim
        self.num_heads = num_heads
        self.to_q = nn.Linear(query_dim, query_dim, bias=False)
        self.to_k = nn.Linear(context_dim, query_dim, bias=False)
        self.to_v = nn.Linear(context_dim, query_dim, bias=False)
        self.to_out = nn.Sequential(nn.Linear(query_dim, query_dim), nn.Dropout(dropout))

    def forward(
        self, x: torch.Tensor, context: torch.Tensor | None = None, context_mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        """(B, N, C) queries, (B, L, D_c) context, (B, L) mask -> (B, N, C)."""
        context = x if context is None else context
        b, n, c = x.shape
        heads, d = self.num_heads, c // self.num_heads

        def split(t: torch.Tensor) -> torch.Tensor:  # (B, M, C) -> (B, heads, M, d)
            return t.reshape(b, t.shape[1], heads, d).transpose(1, 2)

        q, k, v = split(self.to_q(x)), split(self.to_k(context)), split(self.to_v(context))
        out = attend(q, k, v, key_padding_mask(context_mask))
        return self.to_out(out.transpose(1, 2).reshape(b, n, c))


class GEGLUFeedForward(nn.Module):
    r"""Gated-GELU feed-forward (Shazeer 2020, GLU variants; Stable Diffusion's ``FeedForward``):
    FF(x) = W_2 (h * GELU(g)), [h, g] = W_1 x, inner width ``mult * dim``."""

    def __init__(self, dim: int, *, mult: int = 4, dropout: float = 0.0):
        super().__init__()
        inner = mult * dim
        self.proj_in = nn.Linear(dim, 2 * inner)
        self.dropout = nn.Dropout(dropout)
        self.proj_out = nn.Linear(inner, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, gate = self.proj_in(x).chunk(2, dim=-1)
        return self.proj_out(self.dropout(h * F.gelu(gate)))


class BasicTransformerBlock(nn.Module):
    r"""Stable Diffusion's transformer block on (B, N, C) tokens (pre-LayerNorm, residual):

    .. math::
        x &= x + \mathrm{SelfAttn}(\mathrm{LN}_1(x)) \\
        x &= x + \mathrm{CrossAttn}(\mathrm{LN}_2(x), c) \\
        x &= x + \mathrm{FF_{GEGLU}}(\mathrm{LN}_3(x))
    """

    def __init__(self, dim: int, *, context_dim: int, num_heads: int = 4, dropout: float = 0.0):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn1 = CrossAttention(query_dim=dim, num_heads=num_heads, dropout=dropout)
        self.norm2 = nn.LayerNorm(dim)
        self.attn2 = CrossAttention(query_dim=dim, context_dim=context_dim, num_heads=num_heads, dropout=dropout)
        self.norm3 = nn.LayerNorm(dim)
        self.ff = GEGLUFeedForward(dim, dropout=dropout)

    def forward(self, x: torch.Tensor, context: torch.Tensor, context_mask: torch.Tensor | None = None):
        x = x + self.attn1(self.norm1(x))
        x = x + self.attn2(self.norm2(x), context, context_mask)
        return x + self.ff(self.norm3(x))


class SpatialTransformer(nn.Module):
    r"""Stable Diffusion's ``SpatialTransformer`` (Rombach et al. 2022, Sec. 3.3 and App. F): a
    feature map attends to itself and to the context tokens.

    .. math::
        h = \mathrm{proj\_in}(\mathrm{GN}(x)) \text{ as } (B, HW, C),\quad
        h = \mathrm{BasicTransformerBlock}(h, c),\quad
        \mathrm{out} = x + \mathrm{proj\_out}(h)

    ``proj_in``/``proj_out`` are Linear on the token layout (SD 2's ``use_linear_in_transformer``,
    equivalent to 1x1 convolutions); ``proj_out`` is zero-initialised, so a fresh block is the identity.

    Args:
        channels: C.
        context_dim: width D_c of the context tokens.
        num_heads: heads; must divide ``channels``.
        groups: GroupNorm groups (clamped to a divisor of ``channels``).
        dropout: dropout in the attention outputs and the feed-forward.
    """

    def __init__(self, *, channels: int, context_dim: int, num_heads: int = 4, groups: int = 32, dropout: float = 0.0):
        super().__init__()
        if num_heads < 1 or channels % num_heads:
            raise ValueError(f"num_heads={num_heads} must be >= 1 and divide channels={channels}")
        self.norm = normalization(channels, groups=groups)
        self.proj_in = nn.Linear(channels, channels)
        self.block = BasicTransformerBlock(channels, context_dim=context_dim, num_heads=num_heads, dropout=dropout)
        self.proj_out = zero_module(nn.Linear(channels, channels))

    def forward(self, x: torch.Tensor, context: torch.Tensor, context_mask: torch.Tensor | None = None):
        """(B, C, H, W), (B, L, D_c), (B, L) -> (B, C, H, W)."""
        b, c, h, w = x.shape
        tokens, x = ops.group_norm_act(x, self.norm, passthrough=True)  # x's two gradients meet in the norm's backward
        tokens = self.proj_in(tokens.flatten(2).transpose(1, 2))  # (B, N, C)
        tokens = self.proj_out(self.block(tokens, context.to(tokens.dtype), context_mask))
        return x + tokens.transpose(1, 2).reshape(b, c, h, w)
