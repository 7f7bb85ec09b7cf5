"""Convolutional building blocks of the diffusion U-Net (Ho et al. 2020; Nichol & Dhariwal 2021).

Notation: ``x``/``h`` are feature maps of shape (B, C, H, W); ``emb`` is the timestep embedding of
shape (B, E) produced by :class:`~kuosan.networks.embeddings.TimestepEmbedding`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from kuosan import ops


def clamp_groups(channels: int, groups: int) -> int:
    """Largest divisor of ``channels`` that is <= ``groups`` (GroupNorm needs groups | channels)."""
    if channels < 1 or groups < 1:
        raise ValueError(f"channels and groups must be >= 1, got {channels} and {groups}")
    for g in range(min(groups, channels), 0, -1):
        if channels % g == 0:
            return g
    return 1  # unreachable: 1 divides every channel count


def normalization(channels: int, *, groups: int = 32) -> nn.GroupNorm:
    """GroupNorm with ``groups`` clamped to a divisor of ``channels`` (eps 1e-6 as in DDPM)."""
    return nn.GroupNorm(clamp_groups(channels, groups), channels, eps=1e-6)


def zero_module(module: nn.Module) -> nn.Module:
    """Zero every parameter of ``module`` in place and return it.

    Used on the last layer of each residual branch and of the network, so that a fresh block is
    the identity and a fresh network outputs exactly 0 (improved-diffusion's ``zero_module``).
    """
    for p in module.parameters():
        nn.init.zeros_(p)
    return module


class ResBlock(nn.Module):
    r"""Residual block conditioned on the timestep embedding.

    .. math::
        h &= \mathrm{Conv}_{3\times3}(\mathrm{SiLU}(\mathrm{GN}(x))) \\
        h &= \begin{cases}
              \mathrm{GN}(h)\,(1 + s) + b, \quad [s, b] = \mathrm{Linear}(\mathrm{SiLU}(emb))
                & \text{scale\_shift (FiLM)} \\
              \mathrm{GN}(h + \mathrm{Linear}(\mathrm{SiLU}(emb))) & \text{otherwise (DDPM)}
             \end{cases} \\
        \mathrm{out} &= \mathrm{skip}(x) + \mathrm{Conv}_{3\times3}(\mathrm{Dropout}(\mathrm{SiLU}(h)))

    The last convolution is zero-initialised, so a fresh block is ``skip(x)``; ``skip`` is the
    identity when the channel count is unchanged and a 1x1 convolution otherwise.
    ``scale_shift=True`` is improved-diffusion's ``use_scale_shift_norm``.

    Args:
        in_channels: channels of ``x``.
        out_channels: channels of the output (default ``in_channels``).
        emb_channels: width of the timestep embedding.
        dropout: dropout probability before the last convolution.
        scale_shift: FiLM conditioning of the second norm instead of adding the embedding.
        groups: GroupNorm groups (clamped to a divisor of the channel count).
    """

    def __init__(
        self,
        *,
        in_channels: int,
        out_channels: int | None = None,
        emb_channels: int,
        dropout: float = 0.0,
        scale_shift: bool = True,
        groups: int = 32,
    ):
        super().__init__()
        out_channels = in_channels if out_channels is None else out_channels
        self.scale_shift = scale_shift
        self.in_layers = nn.Sequential(
            normalization(in_channels, groups=groups),
            nn.SiLU(),
            nn.Conv2d(in_channels, out_channels, 3, padding=1),
        )
        self.emb_layers = nn.Sequential(
            nn.SiLU(),
            nn.Linear(emb_channels, 2 * out_channels if scale_shift else out_channels),
        )
        self.out_norm = normalization(out_channels, groups=groups)
        self.out_layers = nn.Sequential(
            nn.SiLU(),
            nn.Dropout(dropout),
            zero_module(nn.Conv2d(out_channels, out_channels, 3, padding=1)),
        )
        if in_channels == out_channels:
            self.skip = nn.Identity()
        else:
            self.skip = nn.Conv2d(in_channels, out_channels, 1)

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        """(B, C_in, H, W), (B, E) -> (B, C_out, H, W)."""
        # in_layers = (GN, SiLU, conv) and out_layers = (SiLU, dropout, conv), improved-diffusion's
        # layers and state-dict names; each SiLU is applied by the norm before it (ops.group_norm_act)
        norm, _, conv = self.in_layers
        h, x = ops.group_norm_act(x, norm, act=True, passthrough=True)  # x's gradients meet in the norm
        h = ops.conv2d(h, conv)
        e = self.emb_layers(emb)
        if self.scale_shift:
            scale, shift = e.chunk(2, dim=1)
            h = ops.group_norm_act(h, self.out_norm, scale=scale, shift=shift, act=True)
        else:
            h = ops.group_norm_act(h, self.out_norm, e=e, act=True)
        _, dropout, conv = self.out_layers
        skip = x if isinstance(self.skip, nn.Identity) else ops.conv2d(x, self.skip)
        return ops.conv2d(dropout(h), conv, residual=skip)


class Downsample(nn.Module):
    """Halve the spatial resolution with a stride-2 3x3 convolution (DDPM's ``downsample``).

    Padding is 1 on every side, as in improved-diffusion and diffusers (DDPM's TensorFlow "SAME"
    padding puts it on the bottom/right only).
    """

    def __init__(self, *, channels: int, out_channels: int | None = None):
        super().__init__()
        out_channels = channels if out_channels is None else out_channels
        self.conv = nn.Conv2d(channels, out_channels, 3, stride=2, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) -> (B, C_out, ceil(H/2), ceil(W/2))."""
        return ops.conv2d(x, self.conv)


class Upsample(nn.Module):
    """Double the spatial resolution: nearest-neighbour x2 then a 3x3 convolution."""

    def __init__(self, *, channels: int, out_channels: int | None = None):
        super().__init__()
        out_channels = channels if out_channels is None else out_channels
        self.conv = nn.Conv2d(channels, out_channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) -> (B, C_out, 2H, 2W)."""
        return ops.conv2d(F.interpolate(x, scale_factor=2.0, mode="nearest"), self.conv)
