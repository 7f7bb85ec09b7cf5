"""DDIM (Song, Meng & Ermon 2021) on the Denoiser contract.

With eta = 0, DDIM's update x_s = sqrt(abar_s) x0_hat + sqrt(1 - abar_s) eps_hat is, divided by
sqrt(abar_s), x_s = x0_hat + sigma_s (x - x0_hat) / sigma_t: exactly an Euler step of the
probability-flow ODE in sigma (Karras et al. 2022, Sec. 4). With eta > 0 it is Euler-ancestral.
"""

from __future__ import annotations

import torch

from kuosan.samplers.ancestral import sample_euler_ancestral


@torch.no_grad()
def sample_ddim(denoiser, x, sigmas, *, eta: float = 0.0, generator=None, callback=None, extra_args=None):
    """DDIM sampling (Song et al. 2021, Eq. 12) with stochasticity ``eta`` (0: deterministic;
    1: DDPM's posterior variance) on any decreasing grid ending in 0."""
    return sample_euler_ancestral(
        denoiser, x, sigmas, eta=eta, generator=generator, callback=callback, extra_args=extra_args
    )
