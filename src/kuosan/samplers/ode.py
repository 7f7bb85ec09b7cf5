"""Probability-flow ODE solvers on the Denoiser contract (Karras et al. 2022, EDM)."""

from __future__ import annotations

import torch

from kuosan.samplers.common import check_sigmas, denoise, noise_like, sigma_batch, to_d


@torch.no_grad()
def sample_euler(denoiser, x, sigmas, *, generator=None, callback=None, extra_args=None):
    """Euler's method on dx/dsigma = (x - D(x, sigma)) / sigma (first order; = DDIM with eta = 0)."""
    extra_args = extra_args or {}
    s = check_sigmas(sigmas)
    for i, (sigma, sigma_next) in enumerate(zip(s[:-1], s[1:])):
        x0_hat = denoise(denoiser, x, sigma, extra_args, callback, i, sigma_next)
        x = x + (sigma_next - sigma) * to_d(x, sigma, x0_hat)
    return x


@torch.no_grad()
def sample_heun(
    denoiser,
    x,
    sigmas,
    *,
    s_churn: float = 0.0,
    s_tmin: float = 0.0,
    s_tmax: float = float("inf"),
    s_noise: float = 1.0,
    generator=None,
    callback=None,
    extra_args=None,
):
    """Heun's second-order method, EDM Algorithm 2: optional churn raises sigma to
    sigma_hat = sigma (1 + gamma), gamma = min(s_churn / n, sqrt(2) - 1) inside [s_tmin, s_tmax];
    an Euler step, then the trapezoidal correction (skipped when stepping to sigma = 0).
    2 network evaluations per step but the last."""
    extra_args = extra_args or {}
    s = check_sigmas(sigmas)
    n = len(s) - 1
    for i, (sigma, sigma_next) in enumerate(zip(s[:-1], s[1:])):
        gamma = min(s_churn / n, 2**0.5 - 1) if s_tmin <= sigma <= s_tmax else 0.0
        sigma_hat = sigma * (1 + gamma)
        if gamma > 0:
            x = x + noise_like(x, generator) * s_noise * (sigma_hat**2 - sigma**2) ** 0.5
        x0_hat = denoise(denoiser, x, sigma_hat, extra_args, callback, i, sigma_next)
        d = to_d(x, sigma_hat, x0_hat)
        x_next = x + (sigma_next - sigma_hat) * d
        if sigma_next > 0:
            d_next = to_d(x_next, sigma_next, denoiser(x_next, sigma_batch(x, sigma_next), **extra_args))
            x_next = x + (sigma_next - sigma_hat) * (d + d_next) / 2
        x = x_next
    return x
