"""Noise schedules: beta tables, abar, SNR, and the map between VP timesteps and VE noise levels.

Notation (DDPM, Ho et al. 2020): alpha_t = 1 - beta_t, abar_t = prod_{s<=t} alpha_s (code: ``abar``).
A VP sample x_t = sqrt(abar_t) x_0 + sqrt(1 - abar_t) eps is, divided by sqrt(abar_t), the VE sample
x = x_0 + sigma eps with sigma^2 = (1 - abar_t) / abar_t (the Denoiser contract's "sigma").

Every table is computed in float64 (improved-diffusion's habit): in float32, 1 - abar near t = 0 and
abar near t = T loses most of its digits.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import torch

F64 = torch.float64


def betas_linear(T: int = 1000, beta_start: float = 1e-4, beta_end: float = 0.02) -> torch.Tensor:
    """DDPM's linear schedule (Ho et al. 2020, Sec. 4): beta_t evenly spaced from 1e-4 to 0.02."""
    return torch.linspace(beta_start, beta_end, T, dtype=F64)


def betas_scaled_linear(T: int = 1000, beta_start: float = 0.00085, beta_end: float = 0.012) -> torch.Tensor:
    """Latent diffusion's schedule: sqrt(beta_t) evenly spaced (diffusers' "scaled_linear")."""
    return torch.linspace(beta_start**0.5, beta_end**0.5, T, dtype=F64) ** 2


def abar_cosine(t: torch.Tensor, s: float = 0.008) -> torch.Tensor:
    """Cosine abar(t) for t in [0, 1] (Nichol & Dhariwal 2021, Eq. 17): f(t)/f(0),
    f(t) = cos^2(((t + s) / (1 + s)) * pi / 2)."""
    f = lambda u: torch.cos((u + s) / (1 + s) * math.pi / 2) ** 2  # noqa: E731
    return f(t.to(F64)) / f(torch.zeros((), dtype=F64))


def betas_cosine(T: int = 1000, s: float = 0.008, max_beta: float = 0.999) -> torch.Tensor:
    """Cosine schedule (Nichol & Dhariwal 2021, Eq. 17): beta_t = 1 - abar(t/T) / abar((t-1)/T),
    clipped at ``max_beta`` to avoid the singularity at t = T."""
    grid = torch.arange(T + 1, dtype=F64) / T
    abar = abar_cosine(grid, s)
    return (1 - abar[1:] / abar[:-1]).clamp(max=max_beta)


def betas_sigmoid(T: int = 1000, beta_start: float = 1e-4, beta_end: float = 0.02) -> torch.Tensor:
    """Sigmoid schedule (GeoDiff; diffusers' "sigmoid"): beta_t = b0 + (b1 - b0) sigmoid(u_t),
    u_t evenly spaced in [-6, 6]."""
    return torch.sigmoid(torch.linspace(-6, 6, T, dtype=F64)) * (beta_end - beta_start) + beta_start


BETA_SCHEDULES = {
    "linear": betas_linear,
    "scaled_linear": betas_scaled_linear,
    "cosine": betas_cosine,
    "sigmoid": betas_sigmoid,
}


def make_betas(name: str, T: int = 1000, **kwargs) -> torch.Tensor:
    """The beta table of schedule ``name`` (one of ``BETA_SCHEDULES``) in float64."""
    if name not in BETA_SCHEDULES:
        raise ValueError(f"unknown beta schedule {name!r}; choose from {sorted(BETA_SCHEDULES)}")
    return BETA_SCHEDULES[name](T, **kwargs)


def abar_from_betas(betas: torch.Tensor) -> torch.Tensor:
    """abar_t = prod_{s<=t} (1 - beta_s) (DDPM Eq. 4's alpha-bar)."""
    return torch.cumprod(1 - betas.to(F64), 0)


def snr_from_abar(abar: torch.Tensor) -> torch.Tensor:
    """Signal-to-noise ratio SNR_t = abar_t / (1 - abar_t) (Kingma et al. 2021) = 1 / sigma_t^2."""
    return abar / (1 - abar)


def sigma_from_abar(abar: torch.Tensor) -> torch.Tensor:
    """VE noise level of a VP step: sigma_t = sqrt((1 - abar_t) / abar_t)."""
    return ((1 - abar) / abar).sqrt()


def abar_from_sigma(sigma: torch.Tensor) -> torch.Tensor:
    """Inverse of :func:`sigma_from_abar`: abar = 1 / (1 + sigma^2)."""
    return 1 / (1 + sigma**2)


@dataclass(frozen=True)
class DiscreteSchedule:
    """A discrete VP schedule t = 0..T-1 with its float64 tables.

    ``betas[t]`` is the beta of the step x_{t-1} -> x_t in code indexing (paper's t+1); ``abar[t]``
    its cumulative product; ``sigmas[t]`` the VE noise level. Continuous t (a float between two
    integers) maps to sigma by linear interpolation in log-sigma, as k-diffusion's DiscreteSchedule.
    """

    betas: torch.Tensor

    @classmethod
    def from_name(cls, name: str = "linear", T: int = 1000, **kwargs) -> DiscreteSchedule:
        return cls(make_betas(name, T, **kwargs))

    @property
    def T(self) -> int:
        return self.betas.shape[0]

    def to(self, device: torch.device | str) -> DiscreteSchedule:
        """The same schedule with its table on ``device`` (for lookups at timesteps that live there)."""
        return dataclasses.replace(self, betas=self.betas.to(device))

    @property
    def alphas(self) -> torch.Tensor:
        return 1 - self.betas

    @property
    def abar(self) -> torch.Tensor:
        return abar_from_betas(self.betas)

    @property
    def abar_prev(self) -> torch.Tensor:
        """abar_{t-1}, with abar_{-1} = 1 (the clean data)."""
        return torch.cat([torch.ones(1, dtype=F64, device=self.betas.device), self.abar[:-1]])

    @property
    def sigmas(self) -> torch.Tensor:
        return sigma_from_abar(self.abar)

    @property
    def sigma_min(self) -> float:
        return float(self.sigmas[0])

    @property
    def sigma_max(self) -> float:
        return float(self.sigmas[-1])

    def sigma_to_t(self, sigma: torch.Tensor) -> torch.Tensor:
        """Continuous timestep of a noise level: interpolation in log-sigma, clamped to [0, T-1]."""
        # computed where the schedule is (float64; the query may be on a GPU), returned beside the query
        log_sigmas = self.sigmas.log()
        log_sigma = sigma.to(log_sigmas.device).to(F64).clamp(min=1e-30).log()
        idx = torch.searchsorted(log_sigmas, log_sigma).clamp(1, self.T - 1)
        lo, hi = log_sigmas[idx - 1], log_sigmas[idx]
        w = ((log_sigma - lo) / (hi - lo)).clamp(0, 1)
        return ((idx - 1).to(F64) + w).to(sigma.device)

    def t_to_sigma(self, t: torch.Tensor) -> torch.Tensor:
        """Noise level of a (possibly fractional) timestep: interpolation in log-sigma."""
        log_sigmas = self.sigmas.log()
        where = t.device
        t = t.to(log_sigmas.device).to(F64).clamp(0, self.T - 1)
        lo = t.floor().long().clamp(max=self.T - 2)
        w = t - lo
        return ((1 - w) * log_sigmas[lo] + w * log_sigmas[lo + 1]).exp().to(where)


# --- timestep spacings and sigma grids -------------------------------------------------------------

TIMESTEP_SPACINGS = ("leading", "linspace", "trailing")


def timesteps_spaced(T: int, n: int, spacing: str = "trailing") -> torch.Tensor:
    """n of the T training timesteps, decreasing, as diffusers' schedulers choose them
    (Lin et al. 2024, Table 2): "leading" arange(0, T, T//n), "linspace" round(linspace(0, T-1, n)),
    "trailing" round(arange(T, 0, -T/n)) - 1 (always starts at T-1)."""
    if not 1 <= n <= T:
        raise ValueError(f"steps must be between 1 and T={T}, got {n}")
    if spacing == "leading":
        ts = torch.arange(n, dtype=F64) * (T // n)
    elif spacing == "linspace":
        ts = torch.linspace(0, T - 1, n, dtype=F64).round()
    elif spacing == "trailing":
        ts = (torch.arange(T, 0, -T / n, dtype=F64)).round() - 1
    else:
        raise ValueError(f"unknown timestep spacing {spacing!r}; choose from {TIMESTEP_SPACINGS}")
    return ts.flip(0) if spacing != "trailing" else ts


def append_zero(x: torch.Tensor) -> torch.Tensor:
    return torch.cat([x, x.new_zeros(1)])


def sigmas_uniform(schedule: DiscreteSchedule, n: int, spacing: str = "trailing") -> torch.Tensor:
    """Sigma grid of n DDPM/DDIM steps at the spaced timesteps, ending in 0 (n + 1 entries)."""
    ts = timesteps_spaced(schedule.T, n, spacing)
    return append_zero(schedule.sigmas[ts.long()])


def sigmas_karras(n: int, sigma_min: float, sigma_max: float, rho: float = 7.0) -> torch.Tensor:
    """Karras et al. 2022 (EDM, Eq. 5): sigma_i = (smax^(1/rho) + i/(n-1) (smin^(1/rho) - smax^(1/rho)))^rho."""
    ramp = torch.linspace(0, 1, n, dtype=F64)
    lo, hi = sigma_min ** (1 / rho), sigma_max ** (1 / rho)
    return append_zero((hi + ramp * (lo - hi)) ** rho)


def sigmas_exponential(n: int, sigma_min: float, sigma_max: float) -> torch.Tensor:
    """Noise levels evenly spaced in log-sigma (k-diffusion's get_sigmas_exponential)."""
    return append_zero(torch.linspace(math.log(sigma_max), math.log(sigma_min), n, dtype=F64).exp())


# kuosan's grid, fitted on an exact Gaussian-mixture oracle of the digits (64-D; benchmarks/oracle_samplers.py
# --fit-grid): the (sigma_hi, sigma_lo) of least Frechet distance of UniPC samples at n steps, among those
# whose likelihood gap is within 3 nats (10 steps) or 1 nat (20 and more); it transfers to the 2-D oracle (a
# trained network may prefer a larger sigma_lo: docs/samplers.md). Between the rows log sigma is interpolated
# linearly in log n;
# beyond the last row sigma_hi = 0.6 n (up to sigma_max), sigma_lo the same.
KUOSAN_TABLE = ((5, 3.0, 0.1), (10, 5.0, 0.03), (20, 15.0, 0.01), (50, 30.0, 0.01))


def kuosan_range(n: int, sigma_min: float, sigma_max: float) -> tuple[float, float]:
    """(sigma_hi, sigma_lo) of ``sigmas_kuosan`` for n steps (``KUOSAN_TABLE``), clipped to
    [sigma_min, sigma_max]."""
    rows = KUOSAN_TABLE
    if n <= rows[0][0]:
        hi, lo = rows[0][1:]
    elif n >= rows[-1][0]:
        hi, lo = rows[-1][1] * n / rows[-1][0], rows[-1][2]
    else:
        (n0, hi0, lo0), (n1, hi1, lo1) = next((a, b) for a, b in zip(rows, rows[1:]) if a[0] <= n <= b[0])
        w = math.log(n / n0) / math.log(n1 / n0)
        hi, lo = hi0 ** (1 - w) * hi1**w, lo0 ** (1 - w) * lo1**w
    hi = min(sigma_max, hi)
    return hi, min(max(sigma_min, lo), hi)


def sigmas_kuosan(
    n: int, sigma_min: float, sigma_max: float, sigma_hi: float | None = None, sigma_lo: float | None = None
) -> torch.Tensor:
    """kuosan's grid, chosen by measurement on exact oracles (docs/samplers.md): sigma_max, then n - 1
    levels log-uniform from sigma_hi down to sigma_lo, then 0.

    Why this shape. Above a few data scales the probability-flow ODE is nearly linear (D(x, sigma) is
    almost the data mean), so one exponential-integrator step crosses it exactly enough: the grid jumps
    from sigma_max to sigma_hi. Between sigma_hi and the smallest data scale the data's structure is
    resolved: steps are even in log sigma there (Lu et al. 2022's logSNR spacing). The last level
    sigma_lo trades the final denoising x = D(x, sigma_lo), which collapses directions of variance
    below sigma_lo^2, against resolution: with few steps it pays to stop earlier. As n grows sigma_lo
    -> sigma_min and sigma_hi -> sigma_max: (sigma_hi, sigma_lo) = (3, 0.1) at 5 steps, (5, 0.03) at
    10, (15, 0.01) at 20, (30, 0.01) at 50, interpolated in log n (``kuosan_range``; for data scaled to
    about [-1, 1]; pass sigma_hi / sigma_lo to override)."""
    if n < 1:
        raise ValueError(f"steps must be at least 1, got {n}")
    hi, lo = kuosan_range(n, sigma_min, sigma_max)
    hi = hi if sigma_hi is None else sigma_hi
    lo = lo if sigma_lo is None else sigma_lo
    if n == 1:
        return append_zero(torch.tensor([sigma_max], dtype=F64))
    if hi >= sigma_max:  # no jump: log-uniform from sigma_max
        s = torch.linspace(math.log(sigma_max), math.log(lo), n, dtype=F64).exp()
        s[0] = sigma_max
        return append_zero(s)
    inner = (
        torch.linspace(math.log(hi), math.log(lo), n - 1, dtype=F64).exp()
        if n > 2
        else torch.tensor([(hi * lo) ** 0.5], dtype=F64)
    )
    return append_zero(torch.cat([torch.tensor([sigma_max], dtype=F64), inner]))


GRIDS = TIMESTEP_SPACINGS + ("karras", "exponential", "kuosan")


def make_sigmas(schedule: DiscreteSchedule, n: int, grid: str = "trailing", **kwargs) -> torch.Tensor:
    """The sigma grid (n steps, n + 1 entries ending in 0) named ``grid`` for a discrete schedule:
    the uniform-in-t spacings of ``timesteps_spaced`` or "karras"/"exponential"/"kuosan" between the
    schedule's sigma_min and sigma_max."""
    if grid in TIMESTEP_SPACINGS:
        return sigmas_uniform(schedule, n, grid)
    if n < 1:
        raise ValueError(f"steps must be at least 1, got {n}")
    if grid == "karras":
        return sigmas_karras(n, schedule.sigma_min, schedule.sigma_max, **kwargs)
    if grid == "exponential":
        return sigmas_exponential(n, schedule.sigma_min, schedule.sigma_max)
    if grid == "kuosan":
        return sigmas_kuosan(n, schedule.sigma_min, schedule.sigma_max, **kwargs)
    raise ValueError(f"unknown sigma grid {grid!r}; choose from {GRIDS}")
