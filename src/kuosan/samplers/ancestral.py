"""Stochastic samplers: DDPM ancestral sampling (Ho et al. 2020, Algorithm 2) and Euler-ancestral,
written in sigma space on the Denoiser contract. The alpha/beta form is in ``literal.py``; a test
checks both give the same numbers."""

from __future__ import annotations

import torch

from kuosan.samplers.common import ancestral_step, check_sigmas, denoise, noise_like, to_d


@torch.no_grad()
def sample_euler_ancestral(denoiser, x, sigmas, *, eta: float = 1.0, generator=None, callback=None, extra_args=None):
    """Euler-ancestral (k-diffusion): an Euler step to sigma_down, then noise of std sigma_up.
    With eta = 1 each step samples the DDPM posterior q(x_s | x_t, x0 = D(x_t)) exactly; with
    0 < eta < 1 it is DDIM(eta) (Song et al. 2021, Eq. 12); eta = 0 is the deterministic DDIM."""
    extra_args = extra_args or {}
    s = check_sigmas(sigmas)
    for i, (sigma, sigma_next) in enumerate(zip(s[:-1], s[1:])):
        x0_hat = denoise(denoiser, x, sigma, extra_args, callback, i, sigma_next)
        sigma_down, sigma_up = ancestral_step(sigma, sigma_next, eta)
        x = x + (sigma_down - sigma) * to_d(x, sigma, x0_hat)
        if sigma_up > 0:
            x = x + noise_like(x, generator) * sigma_up
    return x


@torch.no_grad()
def sample_ddpm(denoiser, x, sigmas, *, variance: str = "small", generator=None, callback=None, extra_args=None):
    """DDPM ancestral sampling (Ho et al. 2020, Algorithm 2) on any grid (respacing as Nichol &
    Dhariwal 2021, Sec. 4: beta_t = 1 - abar_t / abar_s between consecutive grid points).

    Each step draws x_s ~ N(mu~(x_t, x0_hat), std^2 I): the posterior mean (DDPM Eq. 7) and, for
    ``variance`` "small", the posterior variance beta~_t, for "large" beta_t (DDPM Sec. 3.2), both
    written in VE scaling (divide the VP quantities by sqrt(abar_s)). No noise on the last step."""
    if variance not in ("small", "large"):
        raise ValueError(f"variance must be 'small' or 'large', got {variance!r}")
    extra_args = extra_args or {}
    s = check_sigmas(sigmas)
    for i, (sigma, sigma_next) in enumerate(zip(s[:-1], s[1:])):
        x0_hat = denoise(denoiser, x, sigma, extra_args, callback, i, sigma_next)
        sigma_mean, posterior_std = ancestral_step(sigma, sigma_next, 1.0)
        x = x + (sigma_mean - sigma) * to_d(x, sigma, x0_hat)  # = mu~ / sqrt(abar_s)
        if sigma_next > 0:
            if variance == "small":
                std = posterior_std
            else:  # beta_t / abar_s with beta_t = 1 - abar_t / abar_s, abar = 1 / (1 + sigma^2)
                std = ((sigma**2 - sigma_next**2) * (1 + sigma_next**2) / (1 + sigma**2)) ** 0.5
            x = x + noise_like(x, generator) * std
    return x
