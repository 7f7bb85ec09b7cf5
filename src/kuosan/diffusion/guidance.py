"""Denoiser wrappers that are themselves Denoisers, so every sampler gets them for free."""
from __future__ import annotations

import torch
from torch import nn


class ClampDenoiser(nn.Module):
    """x0 clipping (DDPM's clip_denoised, diffusers' clip_sample): D'(x, sigma) = clamp(D(x, sigma), lo, hi)."""

    def __init__(self, denoiser, lo: float = -1.0, hi: float = 1.0):
        super().__init__()
        self.denoiser, self.lo, self.hi = denoiser, lo, hi

    def forward(self, x: torch.Tensor, sigma, **cond) -> torch.Tensor:
        return self.denoiser(x, sigma, **cond).clamp(self.lo, self.hi)
