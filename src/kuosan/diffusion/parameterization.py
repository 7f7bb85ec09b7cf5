"""Adapters between networks and the Denoiser contract D(x, sigma, **cond) -> x0_hat.

The contract (Karras et al. 2022, k-diffusion) is in "VE scaling": x = x_0 + sigma * eps. A network
trained on a VP schedule sees x_t = sqrt(abar_t) x_0 + sqrt(1 - abar_t) eps = x * sqrt(abar_t) with
sigma^2 = (1 - abar_t) / abar_t, at the (possibly fractional) timestep t found by interpolation in
log-sigma. What the network predicts is turned into x0_hat by the formulas of ``gaussian.py``.
"""
from __future__ import annotations

import torch
from torch import nn

from kuosan.diffusion import gaussian as G
from kuosan.diffusion.schedules import DiscreteSchedule, abar_from_sigma
from kuosan.utils import append_dims

PREDICTIONS = ("eps", "x0", "v", "mean")


def _sigma_batch(sigma, x: torch.Tensor) -> torch.Tensor:
    sigma = torch.as_tensor(sigma, dtype=torch.float64, device=x.device)
    return sigma.expand(x.shape[0]) if sigma.ndim == 0 else sigma.to(torch.float64)


class VPDenoiser(nn.Module):
    """Denoiser from a network ``net(x_t, t, **cond)`` that predicts ``prediction`` on a discrete VP
    schedule: "eps" (DDPM), "x0", "v" (Salimans & Ho 2022) or "mean" (the posterior mean mu~_t,
    DDPM Sec. 3.2; defined at integer timesteps, fractional ones use abar at t-1 interpolated).

    Map: x (contract) = x_t / sqrt(abar_t); x0_hat = x - sigma * eps_hat for eps-prediction.
    """

    def __init__(self, net: nn.Module, schedule: DiscreteSchedule, prediction: str = "eps"):
        super().__init__()
        if prediction not in PREDICTIONS:
            raise ValueError(f"unknown prediction {prediction!r}; choose from {PREDICTIONS}")
        self.net, self.schedule, self.prediction = net, schedule, prediction

    @property
    def sigma_min(self) -> float:
        return self.schedule.sigma_min

    @property
    def sigma_max(self) -> float:
        return self.schedule.sigma_max

    def forward(self, x: torch.Tensor, sigma, **cond) -> torch.Tensor:
        sigma = _sigma_batch(sigma, x)
        abar = abar_from_sigma(sigma)
        t = self.schedule.sigma_to_t(sigma)
        x_t = x * append_dims(abar.sqrt(), x.ndim).to(x.dtype)
        out = self.net(x_t, t.to(x.dtype), **cond)
        if self.prediction == "eps":
            return x - append_dims(sigma, x.ndim).to(x.dtype) * out.to(x.dtype)
        if self.prediction == "x0":
            return out.to(x.dtype)
        if self.prediction == "v":
            return G.x0_from_v(x_t, out.to(x.dtype), abar)
        t_prev = t - 1
        abar_prev = torch.where(t_prev < 0, torch.ones_like(t),
                                abar_from_sigma(self.schedule.t_to_sigma(t_prev.clamp(min=0))))
        return G.x0_from_mean(x_t, out.to(x.dtype), abar, abar_prev)


class EpsFromDenoiser(nn.Module):
    """The inverse adapter: an eps-predicting model eps(x_t, t) on a discrete VP schedule, built from
    any Denoiser (eps = (x - D(x, sigma_t)) / sigma_t with x = x_t / sqrt(abar_t)). Used to drive
    the alpha/beta samplers and other libraries' schedulers with an exact oracle."""

    def __init__(self, denoiser, schedule: DiscreteSchedule):
        super().__init__()
        self.denoiser, self.schedule = denoiser, schedule

    def forward(self, x_t: torch.Tensor, t, **cond) -> torch.Tensor:
        t = torch.as_tensor(t, dtype=torch.float64, device=x_t.device)
        t = t.expand(x_t.shape[0]) if t.ndim == 0 else t.to(torch.float64)
        sigma = self.schedule.t_to_sigma(t)
        abar = abar_from_sigma(sigma)
        x = x_t / append_dims(abar.sqrt(), x_t.ndim).to(x_t.dtype)
        x0_hat = self.denoiser(x, sigma.to(x_t.dtype), **cond)
        return (x - x0_hat) / append_dims(sigma, x.ndim).to(x.dtype)


def score_from_denoiser(denoiser, x: torch.Tensor, sigma, **cond) -> torch.Tensor:
    """Tweedie's formula: grad_x log p_sigma(x) = (D(x, sigma) - x) / sigma^2."""
    sigma = _sigma_batch(sigma, x)
    return (denoiser(x, sigma, **cond) - x) / append_dims(sigma, x.ndim).to(x.dtype) ** 2
