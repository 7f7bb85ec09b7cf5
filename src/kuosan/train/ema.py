"""Exponential moving average of a network's weights (Polyak averaging), updated in place."""

from __future__ import annotations

import copy

import torch
from torch import nn


def ema_decay_at(step: int, decay: float, warmup: bool = True) -> float:
    """The decay used after ``step`` optimizer steps: min(decay, (1 + step) / (10 + step)) with
    warmup (so early averages are not dominated by the random initialisation), else ``decay``."""
    return min(decay, (1 + step) / (10 + step)) if warmup else decay


class EMA:
    """shadow <- decay * shadow + (1 - decay) * param, one fused foreach call per update;
    buffers are copied. ``shadow`` is a frozen copy of the network in eval mode."""

    def __init__(self, net: nn.Module, *, decay: float = 0.999, warmup: bool = True):
        if not 0.0 <= decay < 1.0:
            raise ValueError(f"EMA decay must be in [0, 1), got {decay}")
        self.decay, self.warmup = decay, warmup
        self.shadow = copy.deepcopy(net).eval().requires_grad_(False)

    @torch.no_grad()
    def update(self, net: nn.Module, step: int) -> None:
        d = ema_decay_at(step, self.decay, self.warmup)
        shadow = [p for p in self.shadow.parameters()]
        params = [p.detach() for p in net.parameters()]
        torch._foreach_lerp_(shadow, params, 1.0 - d)
        for b_s, b in zip(self.shadow.buffers(), net.buffers()):
            b_s.copy_(b)
