"""Sinusoidal timestep embedding (Vaswani et al. 2017, Sec. 3.5; Ho et al. 2020, App. B).

Notation: ``t`` is the diffusion timestep, a float tensor of shape (B,); it may be fractional
(continuous-time models, respaced samplers, or a timestep interpolated from sigma). The embedding
is a smooth function of ``t``, so fractional timesteps need no special treatment.
"""

from __future__ import annotations

import math

import torch
from torch import nn


def timestep_embedding(t: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    r"""Sinusoidal embedding of timesteps, improved-diffusion's form.

    With ``half = dim // 2`` and frequencies :math:`\omega_k = \text{max\_period}^{-k/\text{half}}`
    for :math:`k = 0, \dots, \text{half}-1`:

    .. math::  e(t) = [\cos(t\,\omega_0), \dots, \cos(t\,\omega_{half-1}),
                       \sin(t\,\omega_0), \dots, \sin(t\,\omega_{half-1})]

    and a zero column is appended when ``dim`` is odd. (DDPM's TensorFlow code uses
    :math:`\omega_k = \text{max\_period}^{-k/(\text{half}-1)}` and [sin, cos] order; the two differ
    only by a fixed reordering and rescaling of frequencies, which the following Linear absorbs.)

    Args:
        t: timesteps, shape (B,) or a 0-d tensor (treated as shape (1,)); any real values.
        dim: embedding width.
        max_period: controls the lowest frequency, :math:`1/\text{max\_period}` rad per step.

    Returns:
        Tensor of shape (B, dim), float32 (float64 if ``t`` is float64).
    """
    if dim < 1:
        raise ValueError(f"embedding dim must be >= 1, got {dim}")
    t = torch.as_tensor(t)
    if t.ndim > 1:
        raise ValueError(f"t must have shape (B,) or be a scalar, got shape {tuple(t.shape)}")
    t = t.reshape(-1)
    if t.dtype != torch.float64:
        t = t.float()
    half = dim // 2
    k = torch.arange(half, device=t.device, dtype=t.dtype)
    omega = torch.exp(-math.log(max_period) * k / half)
    args = t[:, None] * omega[None, :]
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    if dim % 2:
        emb = torch.cat([emb, torch.zeros_like(emb[:, :1])], dim=-1)
    return emb


def broadcast_timesteps(t: torch.Tensor | float, x: torch.Tensor) -> torch.Tensor:
    """Timesteps as a (B,) tensor on ``x``'s device: a scalar or one-element ``t`` is repeated."""
    t = torch.as_tensor(t, device=x.device)
    if t.numel() == 1:
        return t.reshape(1).expand(x.shape[0])
    if t.shape != (x.shape[0],):
        raise ValueError(f"t must be a scalar or have shape ({x.shape[0]},), got {tuple(t.shape)}")
    return t


class TimestepEmbedding(nn.Module):
    """Timestep embedding network: sinusoid(t) -> Linear -> SiLU -> Linear (DDPM's ``temb``).

    Args:
        freq_dim: width of the sinusoidal embedding (improved-diffusion uses ``model_channels``).
        embed_dim: output width (improved-diffusion uses ``4 * model_channels``).
        max_period: see :func:`timestep_embedding`.
    """

    def __init__(self, *, freq_dim: int, embed_dim: int, max_period: float = 10000.0):
        super().__init__()
        self.freq_dim = freq_dim
        self.max_period = max_period
        self.linear1 = nn.Linear(freq_dim, embed_dim)
        self.act = nn.SiLU()
        self.linear2 = nn.Linear(embed_dim, embed_dim)

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        """(B,) timesteps -> (B, embed_dim) embedding in the dtype of the weights."""
        weight = self.linear1.weight
        t = torch.as_tensor(t, device=weight.device)
        emb = timestep_embedding(t, self.freq_dim, self.max_period).to(weight.dtype)
        return self.linear2(self.act(self.linear1(emb)))
