"""Score SDEs (Song et al. 2021, "Score-Based Generative Modeling through Stochastic Differential
Equations"): the VP, sub-VP and VE processes, their reverse-time SDE and probability-flow ODE.

A forward SDE dx = f(x, t) dt + g(t) dw on t in [0, T = 1] (Eq. 5) has the reverse-time SDE (Eq. 6)

    dx = [f(x, t) - g(t)^2 grad_x log p_t(x)] dt + g(t) dw_bar

and the probability-flow ODE (Eq. 13) with the same marginals p_t:

    dx/dt = f(x, t) - 1/2 g(t)^2 grad_x log p_t(x).

All three SDEs are linear, so x(t) | x(0) ~ N(s(t) x(0), s(t)^2 sigma(t)^2 I), and x(t) / s(t) is a
sample of the Denoiser contract's x = x0 + sigma eps at noise level sigma(t) (Karras et al. 2022,
Table 1): ``scale(t)`` and ``sigma(t)`` are that map, ``score_fn_from_denoiser`` turns any Denoiser
into the score s_theta(x, t) these equations need. With B(t) = int_0^t beta = b0 t + (b1 - b0) t^2/2:

    VP     (DDPM)  f = -beta(t) x / 2, g = sqrt(beta(t));            s = e^{-B/2}, s sigma = sqrt(1 - e^{-B})
    sub-VP         f = -beta(t) x / 2, g = sqrt(beta(t)(1 - e^{-2B})); s = e^{-B/2}, s sigma = 1 - e^{-B}
    VE     (NCSN)  f = 0, g = sigma(t) sqrt(2 log(smax/smin));      s = 1, sigma(t) = smin (smax/smin)^t

Their discretisations (score_sde's ``discrete_betas`` / ``discrete_sigmas``, N steps) are DDPM's
linear beta table (beta_i = b0/N .. b1/N: 1e-4 .. 0.02 for N = 1000) and NCSN's geometric noise
levels. Time t maps to the step index i = floor(t (N - 1) / T), as score_sde does.

Map of names (score_sde -> here): ``marginal_prob`` (mean, std), ``prior_sampling``, ``prior_logp``,
``discretize`` (f_i, G_i), ``reverse(score_fn, probability_flow)``. Tables are float64.
"""

from __future__ import annotations

import math

import torch

from kuosan.diffusion.schedules import DiscreteSchedule, abar_from_sigma
from kuosan.utils import append_dims

F64 = torch.float64


def geometric_sigmas(n: int, sigma_min: float, sigma_max: float) -> torch.Tensor:
    """NCSN's noise levels (Song & Ermon 2019, Sec. 4.2): sigma_1 > ... > sigma_n, a geometric
    sequence sigma_i = sigma_max (sigma_min / sigma_max)^((i-1)/(n-1)); float64, no trailing 0
    (a sampler's grid is ``torch.cat([geometric_sigmas(...), zeros(1)])``, = schedules.sigmas_exponential)."""
    if n < 2 or not 0 < sigma_min < sigma_max:
        raise ValueError(f"need n >= 2 and 0 < sigma_min < sigma_max, got {n}, {sigma_min}, {sigma_max}")
    return torch.linspace(math.log(sigma_max), math.log(sigma_min), n, dtype=F64).exp()


def schedule_from_sigmas(sigmas: torch.Tensor) -> DiscreteSchedule:
    """A discrete VP schedule whose noise levels ``schedule.sigmas`` are the given increasing
    ``sigmas``: abar_t = 1 / (1 + sigma_t^2), beta_t = 1 - abar_t / abar_{t-1}. It lets VE levels
    (NCSN) use every grid of ``schedules.make_sigmas``: level t of the schedule is noise level t."""
    sigmas = torch.as_tensor(sigmas, dtype=F64)
    if sigmas.ndim != 1 or not bool((sigmas[1:] > sigmas[:-1]).all()) or float(sigmas[0]) <= 0:
        raise ValueError("sigmas must be a positive, strictly increasing 1-D tensor")
    abar = abar_from_sigma(sigmas)
    return DiscreteSchedule(1 - abar / torch.cat([torch.ones(1, dtype=F64), abar[:-1]]))


def _t(t, x: torch.Tensor) -> torch.Tensor:
    """Time as a float64 (B,) tensor."""
    t = torch.as_tensor(t, dtype=F64, device=x.device)
    return t.expand(x.shape[0]) if t.ndim == 0 else t.to(F64)


def _b(c: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    return append_dims(c, x.ndim).to(x.dtype)


class SDE:
    """A linear forward SDE on t in [0, T]; subclasses give beta/sigma tables and the formulas."""

    T: float = 1.0
    N: int

    def sde(self, x: torch.Tensor, t) -> tuple[torch.Tensor, torch.Tensor]:
        """(drift f(x, t), diffusion g(t) of shape (B,))."""
        raise NotImplementedError

    def scale(self, t) -> torch.Tensor:
        """s(t): the mean coefficient of x(t) | x(0)."""
        raise NotImplementedError

    def sigma(self, t) -> torch.Tensor:
        """sigma(t): the contract's noise level of x(t) / s(t)."""
        raise NotImplementedError

    def t_from_sigma(self, sigma) -> torch.Tensor:
        """Inverse of :meth:`sigma`."""
        raise NotImplementedError

    def marginal_prob(self, x0: torch.Tensor, t) -> tuple[torch.Tensor, torch.Tensor]:
        """Perturbation kernel p_0t(x(t) | x(0)) = N(mean, std^2 I): (mean (B, ...), std (B,))."""
        t = _t(t, x0)
        s = self.scale(t)
        return _b(s, x0) * x0, s * self.sigma(t)

    def prior_sampling(self, shape, *, generator=None, dtype=torch.float32) -> torch.Tensor:
        """x(T) ~ N(0, std(T)^2 I): N(0, I) for VP and sub-VP (up to e^{-B(1)}), N(0, sigma_max^2 I) for VE."""
        return torch.randn(shape, generator=generator, dtype=dtype) * self.prior_std

    @property
    def prior_std(self) -> float:
        return 1.0

    def prior_logp(self, z: torch.Tensor) -> torch.Tensor:
        """log N(z; 0, prior_std^2 I) per sample (nats)."""
        d = z[0].numel()
        var = self.prior_std**2
        return -0.5 * d * math.log(2 * math.pi * var) - z.flatten(1).to(F64).pow(2).sum(1) / (2 * var)

    def step_index(self, t) -> torch.Tensor:
        """Discretisation index i = floor(t (N - 1) / T) (score_sde), robust to rounding at i/(N-1)."""
        t = torch.as_tensor(t, dtype=F64)
        return (t * (self.N - 1) / self.T + 1e-9).floor().long().clamp(0, self.N - 1)

    def discretize(self, x: torch.Tensor, t) -> tuple[torch.Tensor, torch.Tensor]:
        """One forward step x_{i+1} = x_i + f_i + G_i z; default Euler-Maruyama with dt = T/N:
        f_i = f(x, t) dt, G_i = g(t) sqrt(dt)."""
        dt = self.T / self.N
        drift, diffusion = self.sde(x, t)
        return drift * dt, diffusion * math.sqrt(dt)

    def reverse(self, score_fn, probability_flow: bool = False) -> ReverseSDE:
        return ReverseSDE(self, score_fn, probability_flow)

    def timesteps(self, n: int | None = None, eps: float = 1e-3) -> torch.Tensor:
        """score_sde's sampling times linspace(T, eps, n) (n defaults to N), float64."""
        return torch.linspace(self.T, eps, self.N if n is None else n, dtype=F64)


class _BetaSDE(SDE):
    """VP and sub-VP share beta(t) = b0 + t (b1 - b0) and DDPM's discrete table."""

    def __init__(self, beta_min: float = 0.1, beta_max: float = 20.0, N: int = 1000):
        self.beta_0, self.beta_1, self.N = float(beta_min), float(beta_max), int(N)
        self.discrete_betas = torch.linspace(beta_min / N, beta_max / N, N, dtype=F64)
        self.alphas = 1 - self.discrete_betas
        self.abar = torch.cumprod(self.alphas, 0)

    def beta(self, t) -> torch.Tensor:
        return self.beta_0 + torch.as_tensor(t, dtype=F64) * (self.beta_1 - self.beta_0)

    def beta_integral(self, t) -> torch.Tensor:
        """B(t) = int_0^t beta(u) du = b0 t + (b1 - b0) t^2 / 2."""
        t = torch.as_tensor(t, dtype=F64)
        return self.beta_0 * t + 0.5 * (self.beta_1 - self.beta_0) * t**2

    def _t_from_integral(self, big_b: torch.Tensor) -> torch.Tensor:
        a, b = 0.5 * (self.beta_1 - self.beta_0), self.beta_0
        return 2 * big_b / (b + (b * b + 4 * a * big_b).sqrt())  # the positive root, stable form

    def scale(self, t) -> torch.Tensor:
        return (-0.5 * self.beta_integral(t)).exp()

    def discrete_schedule(self) -> DiscreteSchedule:
        """The DDPM schedule of the discretisation (linear betas 1e-4 .. 0.02 for the defaults)."""
        return DiscreteSchedule(self.discrete_betas.clone())


class VPSDE(_BetaSDE):
    """Variance preserving SDE (Song et al. 2021, Eq. 11): dx = -beta(t) x / 2 dt + sqrt(beta(t)) dw,
    the continuous limit of DDPM; p_0t = N(e^{-B/2} x0, (1 - e^{-B}) I)."""

    def sde(self, x, t):
        beta = self.beta(_t(t, x))
        return -0.5 * _b(beta, x) * x, beta.sqrt()

    def sigma(self, t) -> torch.Tensor:
        return torch.expm1(self.beta_integral(t)).sqrt()

    def t_from_sigma(self, sigma) -> torch.Tensor:
        return self._t_from_integral(torch.log1p(torch.as_tensor(sigma, dtype=F64) ** 2))

    def discretize(self, x, t):
        """DDPM's step (score_sde): x_{i+1} = sqrt(1 - beta_i) x_i + sqrt(beta_i) z, i.e.
        f_i = (sqrt(alpha_i) - 1) x_i, G_i = sqrt(beta_i)."""
        i = self.step_index(_t(t, x))
        beta, alpha = self.discrete_betas[i], self.alphas[i]
        return _b(alpha.sqrt(), x) * x - x, beta.sqrt()


class SubVPSDE(_BetaSDE):
    """sub-VP SDE (Song et al. 2021, Eq. 12): dx = -beta x / 2 dt + sqrt(beta (1 - e^{-2B(t)})) dw; its
    variance (1 - e^{-B})^2 is below the VP one; p_0t = N(e^{-B/2} x0, (1 - e^{-B})^2 I)."""

    def sde(self, x, t):
        t = _t(t, x)
        beta = self.beta(t)
        return -0.5 * _b(beta, x) * x, (beta * -torch.expm1(-2 * self.beta_integral(t))).sqrt()

    def sigma(self, t) -> torch.Tensor:
        big_b = self.beta_integral(t)
        return -torch.expm1(-big_b) * (0.5 * big_b).exp()  # = 2 sinh(B / 2)

    def t_from_sigma(self, sigma) -> torch.Tensor:
        return self._t_from_integral(2 * torch.asinh(torch.as_tensor(sigma, dtype=F64) / 2))


class VESDE(SDE):
    """Variance exploding SDE (Song et al. 2021, Eq. 9): dx = sqrt(d[sigma(t)^2]/dt) dw with
    sigma(t) = smin (smax/smin)^t, the continuous limit of NCSN; p_0t = N(x0, sigma(t)^2 I)
    (score_sde drops the sigma_min^2 at t = 0, as here)."""

    def __init__(self, sigma_min: float = 0.01, sigma_max: float = 50.0, N: int = 1000):
        self.sigma_min, self.sigma_max, self.N = float(sigma_min), float(sigma_max), int(N)
        self.discrete_sigmas = geometric_sigmas(N, sigma_min, sigma_max).flip(0)  # increasing, score_sde's order

    @property
    def prior_std(self) -> float:
        return self.sigma_max

    def sigma(self, t) -> torch.Tensor:
        return self.sigma_min * (self.sigma_max / self.sigma_min) ** torch.as_tensor(t, dtype=F64)

    def t_from_sigma(self, sigma) -> torch.Tensor:
        sigma = torch.as_tensor(sigma, dtype=F64)
        return (sigma / self.sigma_min).log() / math.log(self.sigma_max / self.sigma_min)

    def scale(self, t) -> torch.Tensor:
        return torch.ones_like(torch.as_tensor(t, dtype=F64))

    def sde(self, x, t):
        sigma = self.sigma(_t(t, x))
        return torch.zeros_like(x), sigma * math.sqrt(2 * math.log(self.sigma_max / self.sigma_min))

    def discretize(self, x, t):
        """NCSN's chain (score_sde): x_{i+1} = x_i + sqrt(sigma_{i+1}^2 - sigma_i^2) z, with 0 before
        the first level."""
        i = self.step_index(_t(t, x))
        sigma = self.discrete_sigmas[i]
        prev = torch.where(i == 0, torch.zeros_like(sigma), self.discrete_sigmas[(i - 1).clamp(min=0)])
        return torch.zeros_like(x), (sigma**2 - prev**2).sqrt()

    def discrete_schedule(self) -> DiscreteSchedule:
        """The NCSN levels as a discrete schedule: ``schedule.sigmas`` are ``discrete_sigmas``."""
        return schedule_from_sigmas(self.discrete_sigmas)


class ReverseSDE:
    """The reverse-time SDE (Eq. 6) or, with ``probability_flow``, the probability-flow ODE (Eq. 13)
    of a forward SDE, given ``score_fn(x, t)`` ~ grad_x log p_t(x); and its discretisation
    (reverse diffusion, Eq. 46): x_i = x_{i+1} - f_{i+1} + G_{i+1}^2 s(x_{i+1}, t_{i+1}) + G_{i+1} z."""

    def __init__(self, forward: SDE, score_fn, probability_flow: bool = False):
        self.forward, self.score_fn, self.probability_flow = forward, score_fn, probability_flow
        self.T, self.N = forward.T, forward.N

    def sde(self, x, t):
        """(drift f - g^2 s (or f - g^2 s / 2), diffusion g (or 0)) for time running backwards."""
        drift, diffusion = self.forward.sde(x, t)
        w = 0.5 if self.probability_flow else 1.0
        drift = drift - _b(diffusion**2 * w, x) * self.score_fn(x, t)
        return drift, torch.zeros_like(diffusion) if self.probability_flow else diffusion

    def discretize(self, x, t):
        f, G = self.forward.discretize(x, t)
        w = 0.5 if self.probability_flow else 1.0
        rev_f = f - _b(G**2 * w, x) * self.score_fn(x, t)
        return rev_f, torch.zeros_like(G) if self.probability_flow else G


def score_fn_from_denoiser(sde: SDE, denoiser, *, discrete: bool = False, **cond):
    """s(x, t) = grad_x log p_t(x) of a Denoiser, in the SDE's coordinates (Tweedie, Eq. 12 of EDM):
    x / s(t) is at noise level sigma(t), so s(x, t) = (D(x/s, sigma) - x/s) / (s sigma^2).

    ``discrete``: take s and sigma from the discretisation's table at step i(t) (DDPM's abar_i for
    VP, NCSN's sigma_i for VE), as score_sde does for models trained on the discrete chain."""

    def score_fn(x: torch.Tensor, t) -> torch.Tensor:
        t = _t(t, x)
        if discrete:
            i = sde.step_index(t)
            if isinstance(sde, VESDE):
                s, sigma = torch.ones_like(t), sde.discrete_sigmas[i]
            elif isinstance(sde, VPSDE):
                abar = sde.abar[i]
                s, sigma = abar.sqrt(), ((1 - abar) / abar).sqrt()
            else:
                raise ValueError(f"{type(sde).__name__} has no discrete chain; use discrete=False")
        else:
            s, sigma = sde.scale(t), sde.sigma(t)
        x_ve = x / _b(s, x)
        d = denoiser(x_ve, sigma.to(x.dtype), **cond)
        return (d - x_ve) / _b(s * sigma**2, x)

    return score_fn


SDES = {"vp": VPSDE, "subvp": SubVPSDE, "ve": VESDE}
