"""DDPM and DDIM in the alpha/beta form the papers (and the seeds) write, driven by an
eps-predicting network eps_theta(x_t, t) on a discrete VP schedule.

These are the reference forms: the sigma-space samplers in ``ancestral.py`` and ``ddim.py`` are the
same computation on the Denoiser contract, and a test checks they give the same numbers. Code map:
``abar`` = alpha-bar_t, ``abar_prev`` = alpha-bar at the next (smaller) timestep of the grid.
"""

from __future__ import annotations

import torch

from kuosan.diffusion import gaussian as G
from kuosan.diffusion.schedules import DiscreteSchedule
from kuosan.samplers.common import noise_like


def ddpm_step(
    eps: torch.Tensor,
    x_t: torch.Tensor,
    abar: float,
    abar_prev: float,
    z: torch.Tensor | None,
    *,
    variance: str = "small",
    clip: bool = False,
) -> torch.Tensor:
    """One step of DDPM Algorithm 2 (respaced: beta_t = 1 - abar_t / abar_prev):

        x_{t-1} = (x_t - beta_t / sqrt(1 - abar_t) eps_theta) / sqrt(alpha_t) + sigma_t z,

    sigma_t^2 = beta~_t ("small") or beta_t ("large"); z is None on the last step (no noise).
    With ``clip`` the mean is the posterior mean of x0_hat clipped to [-1, 1] (DDPM's sampler code)."""
    if clip:
        x0_hat = G.x0_from_eps(x_t, eps, abar).clamp(-1, 1)
        mean = G.q_posterior_mean_variance(x0_hat, x_t, abar, abar_prev)[0]
    else:
        mean = G.mean_from_eps(x_t, eps, abar, abar_prev)
    if z is None:
        return mean
    beta = 1 - abar / abar_prev
    var = beta * (1 - abar_prev) / (1 - abar) if variance == "small" else beta
    return mean + var**0.5 * z


def ddim_step(
    eps: torch.Tensor,
    x_t: torch.Tensor,
    abar: float,
    abar_prev: float,
    *,
    eta: float = 0.0,
    z: torch.Tensor | None = None,
) -> torch.Tensor:
    """One DDIM step (Song et al. 2021, Eq. 12):

    x_prev = sqrt(abar_prev) x0_hat + sqrt(1 - abar_prev - sigma^2) eps_theta + sigma z,
    sigma = eta sqrt((1 - abar_prev) / (1 - abar_t)) sqrt(1 - abar_t / abar_prev)."""
    x0_hat = G.x0_from_eps(x_t, eps, abar)
    sigma = eta * ((1 - abar_prev) / (1 - abar) * (1 - abar / abar_prev)) ** 0.5
    x_prev = abar_prev**0.5 * x0_hat + (1 - abar_prev - sigma**2) ** 0.5 * eps
    return x_prev + sigma * z if (sigma > 0 and z is not None) else x_prev


@torch.no_grad()
def sample_ddpm_literal(
    eps_model,
    x_T: torch.Tensor,
    schedule: DiscreteSchedule,
    timesteps: torch.Tensor,
    *,
    variance: str = "small",
    clip: bool = False,
    generator=None,
) -> torch.Tensor:
    """DDPM Algorithm 2 over decreasing ``timesteps`` (all T of them, or a respaced subset),
    starting from x_T ~ N(0, I) in VP scaling."""
    abar_tab = schedule.abar
    ts = [int(t) for t in timesteps]
    x = x_T
    for i, t in enumerate(ts):
        abar = float(abar_tab[t])
        abar_prev = float(abar_tab[ts[i + 1]]) if i + 1 < len(ts) else 1.0
        eps = eps_model(x, torch.full((x.shape[0],), float(t), dtype=x.dtype))
        z = noise_like(x, generator) if i + 1 < len(ts) else None
        x = ddpm_step(eps, x, abar, abar_prev, z, variance=variance, clip=clip)
    return x


@torch.no_grad()
def sample_ddim_literal(
    eps_model,
    x_T: torch.Tensor,
    schedule: DiscreteSchedule,
    timesteps: torch.Tensor,
    *,
    eta: float = 0.0,
    generator=None,
) -> torch.Tensor:
    """DDIM (Song et al. 2021, Eq. 12) over decreasing ``timesteps``, the last step to abar = 1."""
    abar_tab = schedule.abar
    ts = [int(t) for t in timesteps]
    x = x_T
    for i, t in enumerate(ts):
        abar = float(abar_tab[t])
        abar_prev = float(abar_tab[ts[i + 1]]) if i + 1 < len(ts) else 1.0
        eps = eps_model(x, torch.full((x.shape[0],), float(t), dtype=x.dtype))
        z = noise_like(x, generator) if (eta > 0 and i + 1 < len(ts)) else None
        x = ddim_step(eps, x, abar, abar_prev, eta=eta, z=z)
    return x
