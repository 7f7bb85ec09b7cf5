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

    def __init__(
        self, net: nn.Module, schedule: DiscreteSchedule, prediction: str = "eps", *, learn_sigma: bool = False
    ):
        super().__init__()
        if prediction not in PREDICTIONS:
            raise ValueError(f"unknown prediction {prediction!r}; choose from {PREDICTIONS}")
        self.net, self.schedule, self.prediction = net, schedule, prediction
        self.learn_sigma = learn_sigma

    @property
    def sigma_min(self) -> float:
        return self.schedule.sigma_min

    @property
    def sigma_max(self) -> float:
        return self.schedule.sigma_max

    def forward(self, x: torch.Tensor, sigma, **cond) -> torch.Tensor:
        return self.forward_with_variance(x, sigma, **cond)[0]

    def forward_with_variance(self, x: torch.Tensor, sigma, **cond):
        """(x0_hat, v): the Denoiser output and, for a ``learn_sigma`` network (2x output channels:
        the prediction, then v), its raw variance channels v (Nichol & Dhariwal 2021, Eq. 15; see
        :func:`reverse_log_variance`); v is None otherwise. Sampling uses only x0_hat."""
        sigma = _sigma_batch(sigma, x)
        abar = abar_from_sigma(sigma)
        t = self.schedule.sigma_to_t(sigma)
        x_t = x * append_dims(abar.sqrt(), x.ndim).to(x.dtype)
        out = self.net(x_t, t.to(x.dtype), **cond)
        v = None
        if self.learn_sigma:
            out, v = out.chunk(2, dim=1)
        return self._x0_hat(x, x_t, sigma, abar, t, out), v

    def _x0_hat(self, x, x_t, sigma, abar, t, out) -> torch.Tensor:
        if self.prediction == "eps":
            return x - append_dims(sigma, x.ndim).to(x.dtype) * out.to(x.dtype)
        if self.prediction == "x0":
            return out.to(x.dtype)
        if self.prediction == "v":
            return G.x0_from_v(x_t, out.to(x.dtype), abar)
        t_prev = t - 1
        abar_prev = torch.where(
            t_prev < 0, torch.ones_like(t), abar_from_sigma(self.schedule.t_to_sigma(t_prev.clamp(min=0)))
        )
        return G.x0_from_mean(x_t, out.to(x.dtype), abar, abar_prev)


VARIANCES = ("fixed_small", "fixed_large", "learned_range")


def reverse_log_variance(
    schedule: DiscreteSchedule, t: torch.Tensor, kind: str = "fixed_small", v: torch.Tensor | None = None
) -> torch.Tensor:
    """log Sigma_t of the reverse step p(x_{t-1} | x_t) = N(mu_theta, Sigma_t) at integer timesteps t (B,),
    in float64 (improved-diffusion's choices):

    - "fixed_small": Sigma_t = beta~_t = (1 - abar_{t-1}) / (1 - abar_t) beta_t (DDPM Sec. 3.2);
    - "fixed_large": Sigma_t = beta_t;
    - "learned_range": log Sigma_t = f log beta_t + (1 - f) log beta~_t, f = (v + 1) / 2, with v the
      network's variance channels (Nichol & Dhariwal 2021, Eq. 15).

    beta~_0 = 0, so at t = 0 beta~_1 stands in for it (in all three; improved-diffusion's
    ``posterior_log_variance_clipped``). Shape (B,) for the fixed kinds, v's shape for the learned one."""
    betas = schedule.betas
    post = betas * (1 - schedule.abar_prev) / (1 - schedule.abar)
    log_post = torch.cat([post[1:2], post[1:]]).log()
    where = t.device if torch.is_tensor(t) else betas.device  # the answer goes where the question came from
    t = torch.as_tensor(t, device=betas.device).long()
    if kind == "fixed_small":
        return log_post[t].to(where)
    if kind == "fixed_large":
        return torch.cat([post[1:2], betas[1:]]).log()[t].to(where)
    if kind == "learned_range":
        if v is None:
            raise ValueError("reverse_log_variance('learned_range') needs the network's variance output v")
        frac = (v.to(torch.float64) + 1) / 2
        log_beta, log_post = append_dims(betas.log()[t], v.ndim), append_dims(log_post[t], v.ndim)
        return frac * log_beta.to(v.device) + (1 - frac) * log_post.to(v.device)
    raise ValueError(f"unknown reverse variance {kind!r}; choose from {VARIANCES}")


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


def ncsn_c_noise(sigma: torch.Tensor) -> torch.Tensor:
    """The noise label a ScoreDenoiser feeds its network: c_noise = 100 ln(sigma) + 500.

    kuosan's networks embed their second input with DDPM's sinusoidal embedding, which resolves
    values on the 0..1000 scale of DDPM timesteps (frequencies 1 .. 1e-4 rad per unit). This affine
    map of ln(sigma) puts sigma in [e^-5, e^5] = [0.0067, 148] on [0, 1000], about where DDPM's linear
    schedule puts its timesteps (sigma_t from 0.01 to 157), so one unit is a 1% change of sigma. (EDM's
    ln(sigma)/4 would use only ~2 units of that scale; NCSNv2 feeds the level index instead.) It is
    fixed, not fitted to a sigma range, so a network can be sampled at any sigma."""
    return 100 * torch.as_tensor(sigma, dtype=torch.float64).log() + 500


class ScoreDenoiser(nn.Module):
    """Denoiser from a noise-conditional score network (NCSN; Song & Ermon 2019, 2020):

        s_theta(x, sigma) = net(c_in(sigma) x, c_noise(sigma)) / sigma      (NCSNv2, Technique 3)
        D(x, sigma) = x + sigma^2 s_theta(x, sigma) = x + sigma net(...)    (Tweedie)

    c_noise is :func:`ncsn_c_noise`. ``scale_input``: c_in = 1 / sqrt(1 + sigma^2), so the network sees
    inputs of unit scale for data of unit scale (EDM's c_in with sigma_data = 1, = the VP scaling);
    NCSN feeds x unscaled (``scale_input=False``). Trained with annealed DSM (lambda = sigma^2), the
    network regresses -eps: the score model is the eps-model of DDPM in VE form."""

    def __init__(self, net: nn.Module, *, scale_input: bool = True):
        super().__init__()
        self.net, self.scale_input = net, scale_input

    def _net(self, x: torch.Tensor, sigma: torch.Tensor, **cond) -> torch.Tensor:
        c_in = (1 + sigma**2).rsqrt() if self.scale_input else torch.ones_like(sigma)
        out = self.net(x * append_dims(c_in, x.ndim).to(x.dtype), ncsn_c_noise(sigma).to(x.dtype), **cond)
        return out.to(x.dtype)

    def score(self, x: torch.Tensor, sigma, **cond) -> torch.Tensor:
        sigma = _sigma_batch(sigma, x)
        return self._net(x, sigma, **cond) / append_dims(sigma, x.ndim).to(x.dtype)

    def forward(self, x: torch.Tensor, sigma, **cond) -> torch.Tensor:
        sigma = _sigma_batch(sigma, x)
        return x + append_dims(sigma, x.ndim).to(x.dtype) * self._net(x, sigma, **cond)
