"""Pieces every sampler shares: the ODE derivative, the ancestral split of a step, the noise draw."""

from __future__ import annotations

import torch

from kuosan.devices import randn
from kuosan.utils import append_dims


def to_d(x: torch.Tensor, sigma, x0_hat: torch.Tensor) -> torch.Tensor:
    """Probability-flow ODE derivative in VE scaling (Karras et al. 2022, Eq. 4 with s = 1,
    sigma(t) = t): dx/dsigma = (x - D(x, sigma)) / sigma."""
    return (x - x0_hat) / sigma


def ancestral_step(sigma_from: float, sigma_to: float, eta: float = 1.0) -> tuple[float, float]:
    """Split a stochastic step sigma_from -> sigma_to into a deterministic step to ``sigma_down`` and
    fresh noise of std ``sigma_up``, sigma_down^2 + sigma_up^2 = sigma_to^2.

    sigma_up = eta * sqrt(sigma_to^2 (sigma_from^2 - sigma_to^2) / sigma_from^2) is DDIM's
    sigma_t(eta) (Song et al. 2021, Eq. 16) in VE scaling; eta = 1 is the DDPM posterior's beta~."""
    if sigma_to == 0:
        return 0.0, 0.0
    up = min(sigma_to, eta * (sigma_to**2 * (sigma_from**2 - sigma_to**2) / sigma_from**2) ** 0.5)
    return (sigma_to**2 - up**2) ** 0.5, up


def noise_like(x: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    """Standard normal noise of x's shape and dtype on x's device (:func:`kuosan.devices.randn`)."""
    return randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)


def sigma_batch(x: torch.Tensor, sigma: float) -> torch.Tensor:
    """The per-sample sigma tensor (B,) a Denoiser takes."""
    return x.new_full((x.shape[0],), sigma)


def check_sigmas(sigmas: torch.Tensor) -> list[float]:
    """Validate a grid (1-D, decreasing, ending in 0) and return it as Python floats."""
    if sigmas.ndim != 1 or sigmas.numel() < 2:
        raise ValueError("sigmas must be a 1-D grid of at least 2 noise levels ending in 0")
    s = [float(v) for v in sigmas]
    if s[-1] != 0 or any(a <= b for a, b in zip(s[:-1], s[1:])):
        raise ValueError("sigmas must be strictly decreasing and end in 0")
    return s


def denoise(
    denoiser,
    x: torch.Tensor,
    sigma: float,
    extra_args: dict | None,
    callback=None,
    i: int = 0,
    sigma_next: float | None = None,
) -> torch.Tensor:
    """x0_hat = D(x, sigma) for the whole batch, reported to ``callback`` (if any) as the dict
    {"i", "x", "sigma", "sigma_next", "x0_hat"} every sampler emits once per step."""
    x0_hat = denoiser(x, sigma_batch(x, sigma), **(extra_args or {}))
    if callback is not None:
        callback({"i": i, "x": x, "sigma": sigma, "sigma_next": sigma_next, "x0_hat": x0_hat})
    return x0_hat


def expand(x: torch.Tensor, c) -> torch.Tensor:
    return append_dims(torch.as_tensor(c, dtype=x.dtype, device=x.device), x.ndim)
