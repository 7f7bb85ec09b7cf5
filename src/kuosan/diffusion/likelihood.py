r"""Likelihood of a diffusion model in bits per dimension: the discrete variational bound (DDPM /
improved DDPM) and the exact log-likelihood of the probability-flow ODE (Song et al. 2021).

Conventions (the same for both methods and for any baseline; see docs/evaluation.md).

- Data live in [-1, 1] on a grid of K evenly spaced levels with bin width ``bin_width`` = 2/(K-1)
  (8-bit images: 2/255; the digits' 17 levels: 2/16 = 1/8). Bin i is [x_i - w/2, x_i + w/2].
- Bits/dim are always those of the *discrete* data, -log2 P(x) / D, a number that does not depend
  on how the data are scaled. A uniform model over the K levels scores log2 K (4.09 for digits).
- The variational bound (:func:`vlb_bpd`) of a model trained on the discrete data is a bound on
  -log2 P(x) directly: its last term is the discretized Gaussian decoder -log p(x_0 | x_1) integrated
  over x_0's bin (DDPM Eq. 13; improved-diffusion's ``calc_bpd_loop``).
- A model trained on dequantized data (``losses.vlb`` with ``dequantize_bin_width``) is a continuous
  density: ``vlb_bpd(..., dequantized=True)`` bounds -log p(y) of its dequantization y with a
  Gaussian decoder (the continuous bound) and converts like any density below. (Starting the chain
  from y but scoring x's bin with the discretized decoder is also a valid bound, but loose by about
  log2(w / sigma_min) bits per pixel whose value is certain: the latents pin y down within its bin
  and the bin decoder cannot refund it.)
- A continuous density p (the ODE model, a Gaussian mixture) is scored on uniformly dequantized data
  y = x + (u - 1/2) w, u ~ U[0, 1)^D (Theis et al. 2016; Ho et al. 2019), which bounds the
  probability P(x) = \int_{bin(x)} p(y) dy of the discrete model it induces (Jensen):

  .. math::
      -\log_2 P(x) \le \mathbb E_u\bigl[-\log_2 p(y)\bigr] - D \log_2 w, \quad\text{i.e.}\quad
      \mathrm{bpd} = \frac{-\log p(y)}{D \ln 2} + \log_2 \frac{1}{w}.

  p is the density of y on the [-1, 1] scale; log2(1/w) = 3 for digits, 7 for 8-bit images (score_sde's
  "offset" 7 - inverse_scaler(-1)). The density on [0, 1] is 2^D times larger and its bin width w/2,
  so the result is the same. :func:`bpd_from_log_density` applies this; ``bin_width=None`` reports
  continuous data in bits/dim of the density itself, -log2 p(x) / D.

Code map: ``abar`` = alpha-bar_t, ``x_t`` VP-scaled, ``x`` = x_t / sqrt(abar_t) the Denoiser's VE-scaled
input with noise level ``sigma`` = sqrt((1 - abar_t)/abar_t); ``z`` the ODE state in VP scaling.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

from kuosan.diffusion import gaussian as G
from kuosan.diffusion.parameterization import reverse_log_variance
from kuosan.diffusion.schedules import DiscreteSchedule
from kuosan.utils import append_dims, mean_flat

F64 = torch.float64
LN2 = math.log(2.0)
PROBES = ("rademacher", "gaussian")


# --- conventions -----------------------------------------------------------------------------------


def dequantize(x: torch.Tensor, bin_width: float, *, generator: torch.Generator | None = None) -> torch.Tensor:
    """Uniform dequantization within each value's bin: y = x + (u - 1/2) w, u ~ U[0, 1) (float64;
    u drawn on the generator's device and moved to x's)."""
    u = torch.rand(x.shape, generator=generator, dtype=F64, device=_draw_device(generator, x)).to(x.device)
    return x.to(F64) + (u - 0.5) * bin_width


def _draw_device(generator: torch.Generator | None, x: torch.Tensor) -> torch.device:
    """Where a draw is made: on the generator's device (a CPU generator gives the same numbers for
    data on any device), else beside x."""
    return generator.device if generator is not None else x.device


def bpd_from_log_density(log_density: torch.Tensor, dim: int, bin_width: float | None) -> torch.Tensor:
    r"""Bits/dim of the discrete data from a log-density (nats) of their dequantization y on the
    [-1, 1] scale (module doc): (-log p(y)) / (D ln 2) + log2(1 / w). With ``bin_width=None``, the
    continuous bits/dim -log p / (D ln 2)."""
    bpd = -log_density.to(F64) / (dim * LN2)
    return bpd if bin_width is None else bpd - math.log2(bin_width)


def _model_dtype(module) -> torch.dtype:
    """The floating dtype a denoiser computes in: its first parameter's (a network), else its first
    floating buffer's (an analytic oracle), else float64."""
    if isinstance(module, torch.nn.Module):
        for t in list(module.parameters()) + list(module.buffers()):
            if t.is_floating_point():
                return t.dtype
    return F64


# --- the discrete variational bound (DDPM Eq. 5; improved-diffusion's calc_bpd_loop) --------------


def decoder_nll_bpd(
    x0: torch.Tensor, mean: torch.Tensor, log_variance: torch.Tensor, bin_width: float | None
) -> torch.Tensor:
    """L_0 = -log p(x_0 | x_1) in bits/dim, per sample (B,): the discretized Gaussian of DDPM Eq. 13
    over x_0's bin (edge bins open to +-inf), or, with ``bin_width=None``, the Gaussian density
    (continuous data)."""
    if bin_width is None:
        logp = -0.5 * (math.log(2 * math.pi) + log_variance + (x0 - mean) ** 2 * torch.exp(-log_variance))
    else:
        logp = G.discretized_gaussian_log_likelihood(x0, mean, 0.5 * log_variance, bin_width=bin_width)
    return -mean_flat(logp) / LN2


def vlb_term_bpd(
    x0: torch.Tensor,
    x_t: torch.Tensor,
    x0_hat: torch.Tensor,
    t: torch.Tensor,
    schedule: DiscreteSchedule,
    *,
    log_variance: torch.Tensor,
    bin_width: float | None,
) -> torch.Tensor:
    r"""One term of the bound in bits/dim, per sample (B,), at integer timesteps t (B,) (code index
    t = paper's t - 1; DDPM Eq. 5):

    .. math::
        L_{t} = \mathrm{KL}\bigl(q(x_{t-1} | x_t, x_0) \,\|\, p_\theta(x_{t-1} | x_t)\bigr) \ (t > 0),\qquad
        L_0 = -\log p_\theta(x_0 | x_1),

    with p_theta(x_{t-1} | x_t) = N(mu~_t(x0_hat, x_t), Sigma_t): the model's mean is the posterior mean
    (DDPM Eq. 7) at its x_0 estimate, ``log_variance`` (B,) or x's shape is log Sigma_t
    (:func:`~kuosan.diffusion.parameterization.reverse_log_variance`); L_0 is discretized on a grid
    of ``bin_width`` or, with None, a Gaussian density. Computed in float64."""
    x0, x_t, x0_hat = x0.to(F64), x_t.to(F64), x0_hat.to(F64)
    t = t.long()
    abar, abar_prev = schedule.abar[t], schedule.abar_prev[t]
    logvar = log_variance.to(F64)
    logvar = append_dims(logvar, x0.ndim) if logvar.ndim == 1 else logvar
    true_mean, _, true_logvar = G.q_posterior_mean_variance(x0, x_t, abar, abar_prev)
    model_mean, _, _ = G.q_posterior_mean_variance(x0_hat, x_t, abar, abar_prev)
    kl = mean_flat(G.normal_kl(true_mean, append_dims(true_logvar, x0.ndim), model_mean, logvar)) / LN2
    nll = decoder_nll_bpd(x0, model_mean, logvar.expand_as(x0), bin_width)
    return torch.where(t == 0, nll, kl)


def model_x0_and_log_variance(
    denoiser,
    x_t: torch.Tensor,
    t: torch.Tensor,
    schedule: DiscreteSchedule,
    *,
    variance: str = "fixed_small",
    clip: float | None = 1.0,
    **cond,
):
    """(x0_hat, log Sigma_t) of a Denoiser at VP input x_t and integer timesteps t (B,): x0_hat =
    D(x_t / sqrt(abar_t), sigma_t), clamped to [-clip, clip] unless ``clip`` is None (improved-diffusion
    clips to the data range [-1, 1] by default). ``variance="learned_range"`` reads the network's
    variance channels through the adapter's ``forward_with_variance`` (a
    :class:`~kuosan.diffusion.parameterization.VPDenoiser` with ``learn_sigma``)."""
    t = t.long()
    abar, sigma = schedule.abar[t], schedule.sigmas[t]
    dtype = _model_dtype(denoiser)
    x = (x_t.to(F64) / append_dims(abar.sqrt(), x_t.ndim)).to(dtype)
    if variance == "learned_range":
        if not hasattr(denoiser, "forward_with_variance"):
            raise ValueError(
                "variance='learned_range' needs a denoiser with forward_with_variance "
                "(VPDenoiser(..., learn_sigma=True))"
            )
        x0_hat, v = denoiser.forward_with_variance(x, sigma.to(dtype), **cond)
        if v is None:
            raise ValueError("variance='learned_range' but the denoiser's network has no variance output")
    else:
        x0_hat, v = denoiser(x, sigma.to(dtype), **cond), None
    x0_hat = x0_hat.to(F64)
    if clip is not None:
        x0_hat = x0_hat.clamp(-clip, clip)
    return x0_hat, reverse_log_variance(schedule, t, variance, v)


def respaced_schedule(schedule: DiscreteSchedule, steps: int) -> DiscreteSchedule:
    """The schedule on ``steps`` of its T timesteps, t_i = round(i (T - 1) / (steps - 1)) (0 and T - 1
    kept), with beta'_i = 1 - abar_{t_i} / abar_{t_{i-1}} (improved-diffusion's ``respace.py``): the
    marginals q(x_{t_i} | x_0), hence the noise levels sigma a Denoiser sees, are unchanged. The
    bound :func:`vlb_bpd` on it is a valid bound for the respaced model (the same network sampled with
    ``steps`` ancestral steps) at ``steps`` network evaluations instead of T."""
    if not 2 <= steps <= schedule.T:
        raise ValueError(f"steps must be between 2 and T={schedule.T}, got {steps}")
    ts = torch.linspace(0, schedule.T - 1, steps, dtype=F64).round().long()
    abar = schedule.abar[ts]
    return DiscreteSchedule(1 - abar / torch.cat([torch.ones(1, dtype=F64), abar[:-1]]))


@torch.no_grad()
def vlb_bpd(
    denoiser,
    x0: torch.Tensor,
    schedule: DiscreteSchedule,
    *,
    variance: str = "fixed_small",
    bin_width: float | None = 2.0 / 255,
    clip_denoised: bool = True,
    dequantized: bool = False,
    generator: torch.Generator | None = None,
    callback: Callable | None = None,
    **cond,
) -> dict:
    r"""The full variational bound in bits/dim of x0 (B, ...) under a model on a discrete VP schedule
    (DDPM Eq. 5; improved-diffusion's ``calc_bpd_loop``):

    .. math::
        -\log_2 P(x_0) / D \le L_T + \sum_{t=1}^{T-1} L_t + L_0, \qquad
        L_T = \mathrm{KL}(q(x_T | x_0) \,\|\, \mathcal N(0, I)),

    each term per dimension in bits, every t from T-1 down to 0 with a fresh x_t ~ q(x_t | x_0)
    (noise from ``generator``): T model evaluations of the whole batch. ``bin_width`` is the data's
    grid (module doc; None: continuous data and a Gaussian decoder). ``variance``: "fixed_small",
    "fixed_large" or "learned_range". ``clip_denoised`` clamps x0_hat to the data's range, [-1, 1]
    (or [-1 - w/2, 1 + w/2] with ``dequantized``). ``dequantized`` (for models trained on
    dequantized data): the bound of -log p(y) for y = dequantize(x0) (noise from ``generator``) with a
    Gaussian decoder, plus log2(1 / w) (module doc), still a bound on -log2 P(x0) / D.
    ``callback(t, terms_t)`` is called after each step.

    Returns {"bpd": (B,) the bound, "prior_bpd": (B,) L_T, "terms": (B, T) L_0..L_{T-1} (with
    ``dequantized``, of the density of y: bpd = sum + prior + log2(1 / w)), "x0_mse": (B, T) the mean
    squared error of x0_hat per timestep}.
    """
    T = schedule.T
    x0 = x0.to(F64)
    schedule = schedule.to(x0.device)  # the tables where the timesteps are
    if dequantized and bin_width is None:
        raise ValueError("dequantized=True needs the data's bin_width")
    y = dequantize(x0, bin_width, generator=generator) if dequantized else x0
    clip = (1.0 + (bin_width / 2 if dequantized else 0.0)) if clip_denoised else None
    terms = torch.zeros(x0.shape[0], T, dtype=F64, device=x0.device)
    mse = torch.zeros(x0.shape[0], T, dtype=F64, device=x0.device)
    for i in reversed(range(T)):
        t = torch.full((x0.shape[0],), i, dtype=torch.long, device=x0.device)
        eps = torch.randn(x0.shape, generator=generator, dtype=F64, device=_draw_device(generator, x0)).to(x0.device)
        x_t = G.q_sample(y, schedule.abar[t], eps)
        x0_hat, logvar = model_x0_and_log_variance(denoiser, x_t, t, schedule, variance=variance, clip=clip, **cond)
        terms[:, i] = vlb_term_bpd(
            y, x_t, x0_hat, t, schedule, log_variance=logvar, bin_width=None if dequantized else bin_width
        )
        mse[:, i] = mean_flat((x0_hat - y) ** 2)
        if callback is not None:
            callback(i, terms[:, i])
    prior = G.prior_bpd(y, schedule.abar[-1])
    bpd = terms.sum(1) + prior
    if dequantized:
        bpd = bpd - math.log2(bin_width)
    return {"bpd": bpd, "prior_bpd": prior, "terms": terms, "x0_mse": mse}


# --- the probability-flow ODE (Song et al. 2021, Sec. 4.3 and App. D.2; score_sde's likelihood.py) -


def _drift_and_divergence(
    denoiser, z: torch.Tensor, s: float, probe: torch.Tensor | None, trace: str, dtype: torch.dtype, cond: dict
):
    r"""Drift f(z, s) of the PF-ODE in VP scaling with time s = ln sigma, and its divergence (B,).

    With x = c z, c = sqrt(1 + sigma^2), the ODE dx/dsigma = (x - D(x, sigma)) / sigma (Karras et al.
    2022, Eq. 4 with sigma(t) = t) becomes

    .. math::
        \frac{dz}{ds} = \frac{z}{c^2} - \frac{D(cz, \sigma)}{c}, \qquad
        \nabla_z \cdot f = \frac{D_{\mathrm{dim}}}{c^2} - \operatorname{tr} \frac{\partial D}{\partial x},

    the trace exact (one vector-Jacobian product per dimension) or by Hutchinson's estimator
    eps^T (dD/dx) eps with a fixed probe eps (Hutchinson 1989; Grathwohl et al. 2019). For Gaussian
    probes, (|eps|^2 - D) / c^2 (zero mean; the estimator's value for unit-variance data, whose
    dD/dx = I / c^2) is subtracted as a control variate; Rademacher probes have |eps|^2 = D exactly,
    so for them this is score_sde's estimator unchanged."""
    sigma = math.exp(s)
    c2 = 1.0 + sigma * sigma
    c = math.sqrt(c2)
    with torch.enable_grad():
        zz = z.detach().to(dtype).requires_grad_(True)
        sig = torch.full((z.shape[0],), sigma, dtype=dtype, device=z.device)
        d = denoiser(zz * c, sig, **cond)
        if trace == "exact":
            flat = d.flatten(1)
            tr = torch.zeros(z.shape[0], dtype=F64, device=z.device)
            for i in range(flat.shape[1]):
                g = torch.autograd.grad(flat[:, i].sum(), zz, retain_graph=i < flat.shape[1] - 1)[0]
                tr += g.flatten(1)[:, i].to(F64)
        else:
            g = torch.autograd.grad((d * probe.to(d.dtype)).sum(), zz)[0]
            tr = (g.to(F64) * probe).flatten(1).sum(1)
    drift = z / c2 - d.detach().to(F64) / c
    dim = z[0].numel()
    tr = tr / c  # d/dz of D(cz) is c dD/dx
    if trace != "exact":  # control variate: (|eps|^2 - D) / c^2 has mean 0 (and is 0 for Rademacher)
        tr = tr - ((probe**2).flatten(1).sum(1) - dim) / c2
    return drift, dim / c2 - tr


# Dormand-Prince 5(4) tableau (Dormand & Prince 1980), as scipy's RK45.
_DP_A = [
    [],
    [1 / 5],
    [3 / 40, 9 / 40],
    [44 / 45, -56 / 15, 32 / 9],
    [19372 / 6561, -25360 / 2187, 64448 / 6561, -212 / 729],
    [9017 / 3168, -355 / 33, 46732 / 5247, 49 / 176, -5103 / 18656],
    [35 / 384, 0.0, 500 / 1113, 125 / 192, -2187 / 6784, 11 / 84],
]
_DP_C = [0.0, 1 / 5, 3 / 10, 4 / 5, 8 / 9, 1.0, 1.0]
_DP_E = [71 / 57600, 0.0, -71 / 16695, 71 / 1920, -17253 / 339200, 22 / 525, -1 / 40]  # b5 - b4


def solve_rk45(
    fun: Callable,
    y0: torch.Tensor,
    s0: float,
    s1: float,
    *,
    rtol: float = 1e-5,
    atol: float = 1e-5,
    first_step: float | None = None,
    max_steps: int = 100_000,
):
    """Integrate dy/ds = fun(s, y) from s0 to s1 with the adaptive Dormand-Prince 5(4) pair (FSAL,
    local extrapolation), y of shape (B, n) in float64. Error control per sample, as if each row
    were its own ODE sharing the step: the RMS over a row of err / (atol + rtol max(|y|, |y_new|)) must be
    <= 1 for every row. Step factor 0.9 err^(-1/5), clipped to [0.2, 10]. Returns (y(s1), number of
    function evaluations)."""
    direction = 1.0 if s1 >= s0 else -1.0
    span = abs(s1 - s0)
    h = min(first_step if first_step is not None else 0.01 * span, span)
    s, y = s0, y0.to(F64)
    k1 = fun(s, y)
    nfe, steps = 1, 0
    while direction * (s1 - s) > 1e-12 * max(1.0, span):
        h = min(h, abs(s1 - s))
        ks = [k1]
        for i in range(1, 7):
            yi = y + (direction * h) * sum(a * k for a, k in zip(_DP_A[i], ks) if a != 0.0)
            ks.append(fun(s + direction * _DP_C[i] * h, yi))
        nfe += 6
        y_new = yi  # the 7th stage is evaluated at the 5th-order solution (FSAL)
        err = (direction * h) * sum(e * k for e, k in zip(_DP_E, ks) if e != 0.0)
        scale = atol + rtol * torch.maximum(y.abs(), y_new.abs())
        ratio = float((err / scale).pow(2).mean(1).sqrt().max())
        if not math.isfinite(ratio):
            raise FloatingPointError(f"solve_rk45: non-finite derivative at s = {s + direction * h:.4g}")
        steps += 1
        if steps > max_steps:
            raise RuntimeError(f"solve_rk45: more than {max_steps} steps; loosen rtol/atol")
        if ratio <= 1.0:
            s, y, k1 = s + direction * h, y_new, ks[6]
            h *= min(10.0, 0.9 * ratio**-0.2) if ratio > 0 else 10.0
        else:
            h *= max(0.2, 0.9 * ratio**-0.2)
    return y, nfe


def ode_log_likelihood(
    denoiser,
    x: torch.Tensor,
    *,
    sigma_min: float | None = None,
    sigma_max: float | None = None,
    trace: str = "hutchinson",
    probe: str = "rademacher",
    rtol: float = 1e-5,
    atol: float = 1e-5,
    generator: torch.Generator | None = None,
    **cond,
) -> dict:
    r"""Exact log-likelihood (nats, per sample) of x (B, ...) under the probability-flow ODE of a Denoiser
    (Song et al. 2021, Eq. 39 / App. D.2; Chen et al. 2018's instantaneous change of variables):

    .. math::
        \log p_{\sigma_{min}}(x) = \log \mathcal N(z(s_1); 0, I) + \int_{s_0}^{s_1} \nabla_z \cdot f(z, s)\, ds
                                   - \tfrac{D}{2} \log(1 + \sigma_{min}^2),

    integrated from s_0 = ln sigma_min (z(s_0) = x / sqrt(1 + sigma_min^2)) to s_1 = ln sigma_max with the
    drift of :func:`_drift_and_divergence` by :func:`solve_rk45`; the prior is VP's N(0, I) at sigma_max
    (KL to the true marginal there is the negligible prior term L_T). The last term is the Jacobian of
    z = x / c. x is read on the Denoiser's scale (VE, = the data's at small sigma): the result is the
    model's density at noise level sigma_min (default: the denoiser's ``sigma_min``), a proper density.

    ``trace``: "exact" (D vector-Jacobian products per evaluation: low dimensions) or "hutchinson" with
    one fixed ``probe`` per sample ("rademacher" or "gaussian", from ``generator``), an unbiased
    estimate of the log-likelihood as in score_sde. The network runs in its own dtype, the ODE in float64.

    Returns {"log_likelihood": (B,), "prior_log_prob": (B,), "delta_log_prob": (B,), "nfe": int}.
    """
    if trace not in ("exact", "hutchinson"):
        raise ValueError(f"trace must be 'exact' or 'hutchinson', got {trace!r}")
    if trace == "hutchinson" and probe not in PROBES:
        raise ValueError(f"probe must be one of {PROBES}, got {probe!r}")
    sigma_min = float(denoiser.sigma_min if sigma_min is None else sigma_min)
    sigma_max = float(denoiser.sigma_max if sigma_max is None else sigma_max)
    if not 0 < sigma_min < sigma_max:
        raise ValueError(f"need 0 < sigma_min < sigma_max, got {sigma_min}, {sigma_max}")
    shape, b = x.shape, x.shape[0]
    dim = x[0].numel()
    dtype = _model_dtype(denoiser)
    eps = None
    if trace == "hutchinson":
        where = _draw_device(generator, x)
        eps = torch.randn(shape, generator=generator, dtype=F64, device=where)
        if probe == "rademacher":
            eps = torch.randint(0, 2, shape, generator=generator, device=where).to(F64) * 2 - 1
        eps = eps.to(x.device)

    def fun(s: float, y: torch.Tensor) -> torch.Tensor:
        drift, div = _drift_and_divergence(denoiser, y[:, :dim].reshape(shape), s, eps, trace, dtype, cond)
        return torch.cat([drift.flatten(1), div[:, None]], dim=1)

    c0 = math.sqrt(1.0 + sigma_min**2)
    y0 = torch.cat([(x.to(F64) / c0).flatten(1), torch.zeros(b, 1, dtype=F64, device=x.device)], dim=1)
    y1, nfe = solve_rk45(fun, y0, math.log(sigma_min), math.log(sigma_max), rtol=rtol, atol=atol)
    z1, delta = y1[:, :dim], y1[:, dim]
    prior = -0.5 * (dim * math.log(2 * math.pi) + (z1**2).sum(1))
    logp = prior + delta - 0.5 * dim * math.log(c0**2)
    return {"log_likelihood": logp, "prior_log_prob": prior, "delta_log_prob": delta, "nfe": nfe}


def ode_bpd(
    denoiser,
    x: torch.Tensor,
    *,
    bin_width: float | None = 2.0 / 255,
    generator: torch.Generator | None = None,
    **kwargs,
) -> dict:
    """PF-ODE bits/dim of data x (B, ...) on a grid of bin width ``bin_width`` (module doc): x is
    dequantized uniformly (noise from ``generator``), scored by :func:`ode_log_likelihood` (``kwargs``:
    sigma_min, sigma_max, trace, probe, rtol, atol), and converted with :func:`bpd_from_log_density`.
    ``bin_width=None``: continuous data, no dequantization. Returns {"bpd": (B,), "nfe": int,
    "log_likelihood": (B,)}."""
    y = x.to(F64) if bin_width is None else dequantize(x, bin_width, generator=generator)
    out = ode_log_likelihood(denoiser, y, generator=generator, **kwargs)
    return {
        "bpd": bpd_from_log_density(out["log_likelihood"], x[0].numel(), bin_width),
        "nfe": out["nfe"],
        "log_likelihood": out["log_likelihood"],
    }


__all__ = [
    "bpd_from_log_density",
    "decoder_nll_bpd",
    "dequantize",
    "model_x0_and_log_variance",
    "ode_bpd",
    "ode_log_likelihood",
    "respaced_schedule",
    "solve_rk45",
    "vlb_bpd",
    "vlb_term_bpd",
]
