"""Gaussian diffusion math, one function per formula (DDPM: Ho et al. 2020; improved DDPM: Nichol &
Dhariwal 2021).

Code map: ``abar`` = alpha-bar_t, ``abar_prev`` = alpha-bar_{t-1}, ``beta`` = beta_t, ``x_t`` the
noised sample, ``x0`` the data, ``eps`` the noise. Coefficients are per-sample tensors of shape (B,)
(or scalars) and broadcast over the data's other dimensions, so 2-D points and images go through the
same code. The seeds print several of these formulas wrong; the forms here are the papers' (see
../shared/seeds/ERRATA.md and docs/equations.md).
"""

from __future__ import annotations

import math

import torch

from kuosan.utils import append_dims, mean_flat


def _b(c, x: torch.Tensor) -> torch.Tensor:
    """Broadcast a coefficient (float, 0-d or (B,)) against x of shape (B, ...) in x's dtype."""
    c = torch.as_tensor(c, device=x.device)
    if c.ndim == 0:
        return c.to(x.dtype)
    return append_dims(c, x.ndim).to(x.dtype)


# --- the forward process -----------------------------------------------------------------------


def q_sample(x0: torch.Tensor, abar, eps: torch.Tensor) -> torch.Tensor:
    """Closed-form forward marginal (DDPM Eq. 4): x_t = sqrt(abar_t) x_0 + sqrt(1 - abar_t) eps,
    i.e. q(x_t | x_0) = N(sqrt(abar_t) x_0, (1 - abar_t) I)."""
    abar = torch.as_tensor(abar, dtype=torch.float64)
    return _b(abar.sqrt(), x0) * x0 + _b((1 - abar).sqrt(), x0) * eps


def q_posterior_mean_variance(x0: torch.Tensor, x_t: torch.Tensor, abar, abar_prev):
    """Posterior q(x_{t-1} | x_t, x_0) = N(mu~_t, beta~_t I) (DDPM Eqs. 6-7):

        mu~_t = sqrt(abar_{t-1}) beta_t / (1 - abar_t) x_0 + sqrt(alpha_t) (1 - abar_{t-1}) / (1 - abar_t) x_t
        beta~_t = (1 - abar_{t-1}) / (1 - abar_t) beta_t,   with alpha_t = abar_t / abar_{t-1}.

    Returns (mean, variance, log_variance); variance and log-variance are per-sample, shape (B,) or
    0-d. At t = 0 (abar_{t-1} = 1) beta~ is 0; its log is clamped at log(1e-20).
    """
    abar = torch.as_tensor(abar, dtype=torch.float64)
    abar_prev = torch.as_tensor(abar_prev, dtype=torch.float64)
    alpha = abar / abar_prev
    beta = 1 - alpha
    coef_x0 = abar_prev.sqrt() * beta / (1 - abar)
    coef_xt = alpha.sqrt() * (1 - abar_prev) / (1 - abar)
    mean = _b(coef_x0, x0) * x0 + _b(coef_xt, x_t) * x_t
    variance = (1 - abar_prev) / (1 - abar) * beta
    return mean, variance, variance.clamp(min=1e-20).log()


# --- conversions between parameterizations ------------------------------------------------------


def x0_from_eps(x_t: torch.Tensor, eps: torch.Tensor, abar) -> torch.Tensor:
    """x_0 = (x_t - sqrt(1 - abar_t) eps) / sqrt(abar_t) (DDPM Eq. 4 solved for x_0; ERRATA, seed 003)."""
    abar = torch.as_tensor(abar, dtype=torch.float64)
    return (x_t - _b((1 - abar).sqrt(), x_t) * eps) / _b(abar.sqrt(), x_t)


def eps_from_x0(x_t: torch.Tensor, x0: torch.Tensor, abar) -> torch.Tensor:
    """eps = (x_t - sqrt(abar_t) x_0) / sqrt(1 - abar_t)."""
    abar = torch.as_tensor(abar, dtype=torch.float64)
    return (x_t - _b(abar.sqrt(), x_t) * x0) / _b((1 - abar).sqrt(), x_t)


def v_from_x0_eps(x0: torch.Tensor, eps: torch.Tensor, abar) -> torch.Tensor:
    """Velocity target (Salimans & Ho 2022, Sec. 4): v = sqrt(abar_t) eps - sqrt(1 - abar_t) x_0."""
    abar = torch.as_tensor(abar, dtype=torch.float64)
    return _b(abar.sqrt(), x0) * eps - _b((1 - abar).sqrt(), x0) * x0


def x0_from_v(x_t: torch.Tensor, v: torch.Tensor, abar) -> torch.Tensor:
    """x_0 = sqrt(abar_t) x_t - sqrt(1 - abar_t) v."""
    abar = torch.as_tensor(abar, dtype=torch.float64)
    return _b(abar.sqrt(), x_t) * x_t - _b((1 - abar).sqrt(), x_t) * v


def eps_from_v(x_t: torch.Tensor, v: torch.Tensor, abar) -> torch.Tensor:
    """eps = sqrt(1 - abar_t) x_t + sqrt(abar_t) v."""
    abar = torch.as_tensor(abar, dtype=torch.float64)
    return _b((1 - abar).sqrt(), x_t) * x_t + _b(abar.sqrt(), x_t) * v


def mean_from_eps(x_t: torch.Tensor, eps: torch.Tensor, abar, abar_prev) -> torch.Tensor:
    """Model mean in the epsilon form (DDPM Eq. 11; ERRATA, seed 002):
    mu_theta = (x_t - beta_t / sqrt(1 - abar_t) eps_theta) / sqrt(alpha_t)."""
    abar = torch.as_tensor(abar, dtype=torch.float64)
    abar_prev = torch.as_tensor(abar_prev, dtype=torch.float64)
    alpha = abar / abar_prev
    return (x_t - _b((1 - alpha) / (1 - abar).sqrt(), x_t) * eps) / _b(alpha.sqrt(), x_t)


def x0_from_mean(x_t: torch.Tensor, mean: torch.Tensor, abar, abar_prev) -> torch.Tensor:
    """Invert the posterior mean (DDPM Eq. 7) for x_0: x_0 = (mu - c_t x_t) / c_0 with
    c_0 = sqrt(abar_{t-1}) beta_t / (1 - abar_t), c_t = sqrt(alpha_t) (1 - abar_{t-1}) / (1 - abar_t)."""
    abar = torch.as_tensor(abar, dtype=torch.float64)
    abar_prev = torch.as_tensor(abar_prev, dtype=torch.float64)
    alpha = abar / abar_prev
    coef_x0 = abar_prev.sqrt() * (1 - alpha) / (1 - abar)
    coef_xt = alpha.sqrt() * (1 - abar_prev) / (1 - abar)
    return (mean - _b(coef_xt, x_t) * x_t) / _b(coef_x0, x_t)


# --- likelihood terms ----------------------------------------------------------------------------


def normal_kl(mean1, logvar1, mean2, logvar2) -> torch.Tensor:
    """Elementwise KL(N(mean1, exp(logvar1)) || N(mean2, exp(logvar2))) in nats:
    0.5 (-1 + logvar2 - logvar1 + exp(logvar1 - logvar2) + (mean1 - mean2)^2 exp(-logvar2))."""
    mean1, logvar1, mean2, logvar2 = (torch.as_tensor(v) for v in (mean1, logvar1, mean2, logvar2))
    return 0.5 * (-1.0 + logvar2 - logvar1 + torch.exp(logvar1 - logvar2) + (mean1 - mean2) ** 2 * torch.exp(-logvar2))


def standard_normal_cdf(x: torch.Tensor) -> torch.Tensor:
    """Phi(x), exactly (via erf)."""
    return 0.5 * (1.0 + torch.erf(x / math.sqrt(2.0)))


def discretized_gaussian_log_likelihood(
    x: torch.Tensor, mean: torch.Tensor, log_scale: torch.Tensor, *, bin_width: float = 2.0 / 255
) -> torch.Tensor:
    """log p(x) per element for data on a uniform grid in [-1, 1] under a Gaussian discretized into
    bins of width ``bin_width`` (DDPM Eq. 13; the edge bins extend to -inf and +inf). 8-bit images
    have bin width 2/255; the digits' 17 levels 2/16. Returns nats, the shape of x."""
    half = bin_width / 2
    inv_std = torch.exp(-log_scale)
    cdf_plus = standard_normal_cdf(inv_std * (x - mean + half))
    cdf_min = standard_normal_cdf(inv_std * (x - mean - half))
    log_cdf_plus = cdf_plus.clamp(min=1e-12).log()
    log_one_minus_cdf_min = (1.0 - cdf_min).clamp(min=1e-12).log()
    log_delta = (cdf_plus - cdf_min).clamp(min=1e-12).log()
    edge = 1 - 1e-6
    return torch.where(x < -edge, log_cdf_plus, torch.where(x > edge, log_one_minus_cdf_min, log_delta))


def prior_bpd(x0: torch.Tensor, abar_T) -> torch.Tensor:
    """L_T in bits/dim (DDPM Eq. 5): KL(q(x_T | x_0) || N(0, I)) averaged over dimensions / log 2. (B,)"""
    abar_T = torch.as_tensor(abar_T, dtype=torch.float64)
    mean = _b(abar_T.sqrt(), x0) * x0
    logvar = torch.log1p(-abar_T).to(x0.dtype)
    return mean_flat(normal_kl(mean, logvar, torch.zeros_like(x0), torch.zeros_like(x0))) / math.log(2.0)


def vlb_term_bpd(
    x0: torch.Tensor,
    x_t: torch.Tensor,
    model_mean: torch.Tensor,
    model_log_variance,
    abar,
    abar_prev,
    *,
    is_first: torch.Tensor | bool = False,
    bin_width: float = 2.0 / 255,
) -> torch.Tensor:
    """One term of the variational bound in bits/dim, per sample (DDPM Eq. 5):

        L_{t-1} = KL(q(x_{t-1} | x_t, x_0) || p_theta(x_{t-1} | x_t))   for t > 1,
        L_0 = -log p_theta(x_0 | x_1)   (discretized Gaussian decoder)     where ``is_first``.

    ``model_log_variance`` is per sample (B,), 0-d, or the shape of x (learned variance)."""
    true_mean, _, true_logvar = q_posterior_mean_variance(x0, x_t, abar, abar_prev)
    logvar = torch.as_tensor(model_log_variance, device=x0.device)
    logvar = _b(logvar, x0) if logvar.ndim <= 1 else logvar.to(x0.dtype)
    kl = mean_flat(normal_kl(true_mean, _b(true_logvar, x0), model_mean, logvar)) / math.log(2.0)
    nll = -mean_flat(discretized_gaussian_log_likelihood(x0, model_mean, 0.5 * logvar, bin_width=bin_width)) / math.log(
        2.0
    )
    return torch.where(torch.as_tensor(is_first, device=x0.device), nll, kl)
