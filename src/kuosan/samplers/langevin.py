"""Langevin samplers: Langevin dynamics, annealed Langevin dynamics (NCSN) and the predictor-corrector
samplers of score SDEs, plus score_sde's probability-flow ODE sampler.

Two interfaces:

- on the Denoiser contract (VE scaling, x = x0 + sigma eps), with the score from Tweedie,
  s(x, sigma) = (D(x, sigma) - x) / sigma^2: ``sample_annealed_langevin`` and ``sample_pc`` are
  ordinary kuosan samplers (any grid, any model, every wrapper); the step to sigma = 0 returns
  x0_hat = D(x, sigma_L), NCSN's final denoising step (Jolicoeur-Martineau et al. 2021);
- in an SDE's own coordinates with ``score_fn(x, t)`` (``diffusion.sde``): ``sample_sde_pc`` and
  ``sample_sde_ode`` are score_sde's ``pc_sampler`` and ``ode_sampler``, for any of its SDEs (VP and
  sub-VP steps are not VE steps, so they need these).

``langevin_dynamics`` is plain Langevin with a score function and a fixed step.

Two Langevin step conventions meet here. NCSN (Song & Ermon 2019, Eq. 4 and Algorithm 1) writes
x <- x + alpha/2 s(x) + sqrt(alpha) z; score_sde's correctors and seed 003 write x <- x + eps s(x) +
sqrt(2 eps) z. They are the same chain with alpha = 2 eps; each function states which it uses.
"""

from __future__ import annotations

import math

import torch

from kuosan.diffusion.sde import SDE, VESDE, VPSDE, SubVPSDE
from kuosan.samplers.common import check_sigmas, expand, noise_like, sigma_batch

PREDICTORS = ("reverse-diffusion", "euler-maruyama", "ancestral", "none")
CORRECTORS = ("langevin", "ald", "none")


def _flat_norm(x: torch.Tensor) -> torch.Tensor:
    return x.flatten(1).norm(dim=1)


# --- plain and annealed Langevin dynamics ---------------------------------------------------------


def ncsnv2_step_lr(gamma: float, langevin_steps: int, sigma_min: float) -> float:
    """NCSNv2's Technique 4 (Song & Ermon 2020, Sec. 3.4): the eps of annealed Langevin for which T
    steps at the last level, started from a sample of variance gamma^2 sigma_L^2 (the previous
    level, gamma = sigma_{L-1} / sigma_L) of a Gaussian, end closest to variance sigma_L^2.

    With c = eps / (2 sigma_L^2) each step maps the variance ratio v to (1 - c)^2 v + 2c, so after T
    steps v_T = (1 - c)^{2T} (gamma^2 - v*) + v*, v* = 2 / (2 - c) (the chain's stationary ratio,
    > 1 for any c > 0: v_T = 1 is approached, not met). Returns eps = 2 c sigma_L^2 minimising
    |v_T - 1| over a fine grid of c in (0, 1)."""
    c = torch.logspace(-5, 0, 2001, dtype=torch.float64)[:-1]
    v_star = 2 / (2 - c)
    v_t = (1 - c) ** (2 * langevin_steps) * (gamma**2 - v_star) + v_star
    return float(2 * c[(v_t - 1).abs().argmin()] * sigma_min**2)


@torch.no_grad()
def langevin_dynamics(score_fn, x, *, step_size: float, n_steps: int, generator=None, callback=None):
    """Unadjusted Langevin dynamics (Song & Ermon 2019, Eq. 4; seed 003, section 2(1) 3):

        x_{k+1} = x_k + alpha/2 * grad_x log p(x_k) + sqrt(alpha) z_k,   z_k ~ N(0, I),

    with ``step_size`` alpha and ``score_fn(x) -> grad_x log p(x)``. Exact as alpha -> 0 and
    n_steps -> inf; with a finite budget it cannot move mass between well-separated modes, so the
    weights of a mixture come out as the starting distribution's (ERRATA, seed 003)."""
    for k in range(n_steps):
        if callback is not None:
            callback({"i": k, "x": x})
        x = x + step_size / 2 * score_fn(x) + math.sqrt(step_size) * noise_like(x, generator)
    return x


@torch.no_grad()
def sample_annealed_langevin(
    denoiser,
    x,
    sigmas,
    *,
    langevin_steps: int = 5,
    step_lr: float | None = None,
    final_denoise: bool = True,
    generator=None,
    callback=None,
    extra_args=None,
):
    """Annealed Langevin dynamics (Song & Ermon 2019, Algorithm 1) over the levels sigma_1 > ... > sigma_L
    of ``sigmas`` (the grid without its final 0): at each level, ``langevin_steps`` (T) steps

        x <- x + alpha_i/2 s(x, sigma_i) + sqrt(alpha_i) z,   alpha_i = eps sigma_i^2 / sigma_L^2,

    with s(x, sigma) = (D(x, sigma) - x) / sigma^2. ``step_lr`` is eps (NCSN: 2e-5 with T = 100,
    NCSNv2: 6.2e-6 with T = 5, both for sigma_L = 0.01); by default NCSNv2's Technique 4 for the
    grid's last ratio gamma = sigma_{L-1} / sigma_L (:func:`ncsnv2_step_lr`), so coarse grids get
    larger steps. ``final_denoise``: return x + sigma_L^2 s(x, sigma_L) = D(x, sigma_L), NCSNv2's
    denoising step (Tweedie), so the last step lands on x0_hat. T evaluations per level, +1."""
    if langevin_steps < 1:
        raise ValueError(f"langevin_steps must be at least 1, got {langevin_steps}")
    extra_args = extra_args or {}
    s = check_sigmas(sigmas)
    sigma_last = s[-2]
    if step_lr is None:
        gamma = s[-3] / sigma_last if len(s) > 2 else 1.0
        step_lr = ncsnv2_step_lr(gamma, langevin_steps, sigma_last)
    eps = step_lr
    for i, (sigma, sigma_next) in enumerate(zip(s[:-1], s[1:])):
        alpha = eps * sigma**2 / sigma_last**2
        for k in range(langevin_steps):
            x0_hat = denoiser(x, sigma_batch(x, sigma), **extra_args)
            if k == 0 and callback is not None:
                callback({"i": i, "x": x, "sigma": sigma, "sigma_next": sigma_next, "x0_hat": x0_hat})
            score = (x0_hat - x) / sigma**2
            x = x + alpha / 2 * score + math.sqrt(alpha) * noise_like(x, generator)
    if final_denoise:
        x = denoiser(x, sigma_batch(x, sigma_last), **extra_args)
    return x


# --- predictor-corrector on the Denoiser contract (VE scaling) -------------------------------------


def langevin_corrector_step(x, score, z, *, snr: float, alpha=1.0, max_step: float | None = None):
    """score_sde's Langevin corrector (Song et al. 2021, Algorithms 4-5): step size
    eps = 2 alpha (r ||z|| / ||s||)^2 fixed by the signal-to-noise ratio r, then
    x <- x + eps s + sqrt(2 eps) z. alpha = 1 for VE, alpha_i = 1 - beta_i for VP (per sample, (B,)).
    As in score_sde the norms are averaged over the batch: per-sample norms are unstable in low
    dimension, where ||s|| vanishes at a mode and ||z|| does not concentrate (so a sample depends
    on its batch through this one scalar). ``max_step`` caps eps (score_sde has no cap)."""
    ratio = float(_flat_norm(z).mean() / _flat_norm(score).mean().clamp(min=1e-30))
    step = 2 * (snr * ratio) ** 2
    step = alpha * (step if max_step is None else min(step, max_step))
    step = expand(x, step) if torch.is_tensor(step) else step
    return x + step * score + (2 * step) ** 0.5 * z


def ald_corrector_step(x, score, z, *, snr: float, std, alpha=1.0):
    """score_sde's annealed-Langevin corrector (NCSN's step inside PC): eps = 2 alpha (r std)^2,
    std the marginal's standard deviation at this level; x <- x + eps s + sqrt(2 eps) z."""
    step = 2 * alpha * (snr * std) ** 2
    step = expand(x, step) if torch.is_tensor(step) else step
    return x + step * score + (2 * step) ** 0.5 * z


def _ve_predictor(name: str, x, score, sigma: float, sigma_next: float):
    """(mean, noise std) of one VE predictor step sigma -> sigma_next > 0."""
    if name == "reverse-diffusion":  # Eq. 46 with VE's discretisation f = 0, G^2 = sigma^2 - sigma_next^2
        var = sigma**2 - sigma_next**2
        return x + var * score, var**0.5
    if name == "euler-maruyama":  # the reverse VE-SDE in time sigma: g^2 dt = 2 sigma (sigma - sigma_next)
        var = 2 * sigma * (sigma - sigma_next)
        return x + var * score, var**0.5
    if name == "ancestral":  # NCSN ancestral sampling (Song et al. 2021, Eq. 47) = DDPM's posterior in VE scaling
        var = sigma**2 - sigma_next**2
        return x + var * score, (sigma_next**2 * var / sigma**2) ** 0.5
    return x, 0.0  # "none"


@torch.no_grad()
def sample_pc(
    denoiser,
    x,
    sigmas,
    *,
    predictor: str = "ancestral",
    corrector: str = "langevin",
    snr: float = 0.16,
    langevin_steps: int = 1,
    generator=None,
    callback=None,
    extra_args=None,
):
    """Predictor-corrector sampling (Song et al. 2021, Algorithms 2-3) on the Denoiser contract, i.e.
    for the VE SDE with the grid's noise levels. At each level sigma_i: ``langevin_steps`` corrector
    steps at sigma_i ("langevin": snr-controlled step; "ald": eps = 2 (snr sigma_i)^2; "none"), then
    a predictor step to sigma_{i+1}:

        reverse-diffusion  x + (sigma_i^2 - sigma_{i+1}^2) s + sqrt(sigma_i^2 - sigma_{i+1}^2) z
        euler-maruyama     x + 2 sigma_i (sigma_i - sigma_{i+1}) s + sqrt(2 sigma_i (sigma_i - sigma_{i+1})) z
        ancestral          x + (sigma_i^2 - sigma_{i+1}^2) s + sigma_{i+1}/sigma_i sqrt(sigma_i^2 - sigma_{i+1}^2) z
        none               x (corrector-only sampling)

    s = (D(x, sigma_i) - x) / sigma_i^2. The step to sigma = 0 is the denoising step x = D(x, sigma_L)
    for every predictor (reverse diffusion and ancestral give exactly that; score_sde's
    ``denoise=True``). 1 + langevin_steps evaluations per step (with a corrector).

    The default predictor is ancestral (the exact posterior step for Gaussian data), not score_sde's
    reverse diffusion: score_sde runs N = 1000 levels, where the two agree, while kuosan's grids have
    10-50, where reverse diffusion is biased (tests/samplers/test_langevin.py and docs/score_models.md).

    The Langevin corrector's step is capped at sigma_1^2, the prior's variance (no step of a
    sampler started from N(0, sigma_1^2 I) needs more). For a trained model the step is about
    2 snr^2 sigma_i^2 and the cap never binds; it binds where the score vanishes (an untrained
    network), where score_sde's step diverges to inf and the samples to NaN."""
    if predictor not in PREDICTORS:
        raise ValueError(f"unknown predictor {predictor!r}; choose from {PREDICTORS}")
    if corrector not in CORRECTORS:
        raise ValueError(f"unknown corrector {corrector!r}; choose from {CORRECTORS}")
    extra_args = extra_args or {}
    s = check_sigmas(sigmas)
    for i, (sigma, sigma_next) in enumerate(zip(s[:-1], s[1:])):
        sb = sigma_batch(x, sigma)
        x0_hat = None
        for _ in range(langevin_steps if corrector != "none" else 0):
            x0_hat = denoiser(x, sb, **extra_args)
            score, z = (x0_hat - x) / sigma**2, noise_like(x, generator)
            x = (
                langevin_corrector_step(x, score, z, snr=snr, max_step=s[0] ** 2)
                if corrector == "langevin"
                else ald_corrector_step(x, score, z, snr=snr, std=sigma)
            )
        if predictor != "none" or sigma_next == 0 or x0_hat is None:
            x0_hat = denoiser(x, sb, **extra_args)
        if callback is not None:
            callback({"i": i, "x": x, "sigma": sigma, "sigma_next": sigma_next, "x0_hat": x0_hat})
        if sigma_next == 0:
            x = x0_hat
            continue
        mean, std = _ve_predictor(predictor, x, (x0_hat - x) / sigma**2, sigma, sigma_next)
        x = mean + std * noise_like(x, generator) if std > 0 else mean
    return x


# --- predictor-corrector and ODE samplers in an SDE's own coordinates (score_sde) -------------------


def _alpha_at(sde: SDE, t: torch.Tensor):
    """score_sde's alpha of the Langevin corrector: 1 - beta_i for VP / sub-VP, 1 for VE."""
    if isinstance(sde, (VPSDE, SubVPSDE)):
        return sde.alphas[sde.step_index(t)]
    return 1.0


def _sde_predictor(name: str, sde: SDE, score_fn, x, t: torch.Tensor, z):
    """(x, x_mean) after one predictor step of score_sde at time t (a (B,) tensor)."""
    if name == "euler-maruyama":
        dt = -sde.T / sde.N
        drift, diffusion = sde.reverse(score_fn).sde(x, t)
        mean = x + drift * dt
        return mean + expand(x, diffusion.to(x.dtype)) * math.sqrt(-dt) * z, mean
    if name == "reverse-diffusion":
        f, G = sde.reverse(score_fn).discretize(x, t)
        mean = x - f
        return mean + expand(x, G.to(x.dtype)) * z, mean
    if name == "ancestral":
        i = sde.step_index(t)
        score = score_fn(x, t)
        if isinstance(sde, VESDE):  # Eq. 47
            sigma = sde.discrete_sigmas[i]
            prev = torch.where(i == 0, torch.zeros_like(sigma), sde.discrete_sigmas[(i - 1).clamp(min=0)])
            mean = x + expand(x, (sigma**2 - prev**2).to(x.dtype)) * score
            std = (prev**2 * (sigma**2 - prev**2) / sigma**2).sqrt()
        elif isinstance(sde, VPSDE):  # DDPM's Algorithm 2 with sigma_i^2 = beta_i (Eq. 47's VP form)
            beta = sde.discrete_betas[i]
            mean = (x + expand(x, beta.to(x.dtype)) * score) / expand(x, (1 - beta).sqrt().to(x.dtype))
            std = beta.sqrt()
        else:
            raise ValueError(f"the ancestral predictor needs a VP or VE SDE, not {type(sde).__name__}")
        return mean + expand(x, std.to(x.dtype)) * z, mean
    return x, x  # "none"


@torch.no_grad()
def sample_sde_pc(
    sde: SDE,
    score_fn,
    x,
    *,
    predictor: str = "reverse-diffusion",
    corrector: str = "langevin",
    snr: float = 0.16,
    langevin_steps: int = 1,
    eps: float = 1e-3,
    denoise: bool = True,
    generator=None,
    callback=None,
):
    """score_sde's ``pc_sampler`` (Song et al. 2021, Algorithm 1 with Algorithms 2-5): from x = x(T)
    (``sde.prior_sampling``) over t_k = linspace(T, eps, N); at each t_k ``langevin_steps`` corrector
    steps, then a predictor step. Predictors: "euler-maruyama" (Eq. 6 with dt = -T/N),
    "reverse-diffusion" (Eq. 46), "ancestral" (Eq. 47; VP: DDPM's Algorithm 2 with sigma^2 = beta),
    "none". Correctors as in :func:`sample_pc` with score_sde's alpha_i. ``score_fn(x, t)`` is in the
    SDE's coordinates (``diffusion.sde.score_fn_from_denoiser``). Returns the last step's mean if
    ``denoise`` (no noise on the last step)."""
    if predictor not in PREDICTORS or corrector not in CORRECTORS:
        raise ValueError(f"predictor must be one of {PREDICTORS} and corrector one of {CORRECTORS}")
    mean = x
    for k, t in enumerate(sde.timesteps(eps=eps).tolist()):
        t_vec = torch.full((x.shape[0],), t, dtype=torch.float64)
        for _ in range(langevin_steps if corrector != "none" else 0):
            score, z = score_fn(x, t_vec), noise_like(x, generator)
            alpha = _alpha_at(sde, t_vec)
            alpha = alpha.to(x.dtype) if torch.is_tensor(alpha) else alpha
            if corrector == "langevin":
                x = langevin_corrector_step(x, score, z, snr=snr, alpha=alpha)
            else:
                std = sde.marginal_prob(x, t_vec)[1].to(x.dtype)
                x = ald_corrector_step(x, score, z, snr=snr, std=std, alpha=alpha)
        if callback is not None:
            callback({"i": k, "x": x, "t": t})
        x, mean = _sde_predictor(predictor, sde, score_fn, x, t_vec, noise_like(x, generator))
    return mean if denoise else x


_DOPRI5 = (  # Dormand & Prince (1980) RK5(4)7M: nodes c, tableau rows a, 5th-order b, error weights e = b - b*
    (0.0, 1 / 5, 3 / 10, 4 / 5, 8 / 9, 1.0, 1.0),
    (
        (),
        (1 / 5,),
        (3 / 40, 9 / 40),
        (44 / 45, -56 / 15, 32 / 9),
        (19372 / 6561, -25360 / 2187, 64448 / 6561, -212 / 729),
        (9017 / 3168, -355 / 33, 46732 / 5247, 49 / 176, -5103 / 18656),
        (35 / 384, 0.0, 500 / 1113, 125 / 192, -2187 / 6784, 11 / 84),
    ),
    (35 / 384, 0.0, 500 / 1113, 125 / 192, -2187 / 6784, 11 / 84, 0.0),
    (71 / 57600, 0.0, -71 / 16695, 71 / 1920, -17253 / 339200, 22 / 525, -1 / 40),
)


@torch.no_grad()
def sample_sde_ode(
    sde: SDE,
    score_fn,
    x,
    *,
    rtol: float = 1e-5,
    atol: float = 1e-5,
    eps: float = 1e-3,
    max_steps: int = 10_000,
    callback=None,
):
    """score_sde's ``ode_sampler``: integrate the probability-flow ODE (Song et al. 2021, Eq. 13)
    dx/dt = f(x, t) - g(t)^2 s(x, t) / 2 from t = T to ``eps`` with the adaptive Dormand-Prince RK45
    method (scipy's ``RK45``: one step size for the whole batch, error norm the RMS of
    err / (atol + rtol max(|x|, |x_new|))). Deterministic. Returns (x(eps), number of score evaluations)."""
    ode = sde.reverse(score_fn, probability_flow=True)
    c, a, b, e = _DOPRI5

    def f(t: float, y):
        return ode.sde(y, torch.full((y.shape[0],), t, dtype=torch.float64))[0]

    t, t_end = sde.T, eps
    k1 = f(t, x)
    nfe = 1
    h = -min(0.01 * (t - t_end), 0.1)  # the first step; the controller adapts it
    for step in range(max_steps):
        if t <= t_end:
            break
        last = t + h <= t_end  # h < 0: time runs backwards
        h = t_end - t if last else h
        ks = [k1]
        for j in range(1, 7):
            ks.append(f(t + c[j] * h, x + h * sum(aj * kj for aj, kj in zip(a[j], ks))))
        nfe += 6
        x_new = x + h * sum(bj * kj for bj, kj in zip(b, ks))
        err = h * sum(ej * kj for ej, kj in zip(e, ks) if ej)
        scale = atol + rtol * torch.maximum(x.abs(), x_new.abs())
        err_norm = float((err / scale).pow(2).mean().sqrt())
        if err_norm <= 1:
            t, x, k1 = t_end if last else t + h, x_new, ks[6]  # FSAL: the 7th stage is f at the new point
            if callback is not None:
                callback({"i": step, "x": x, "t": t})
        h = h * min(10.0, max(0.2, 0.9 * max(err_norm, 1e-10) ** -0.2))
    else:
        raise RuntimeError(f"sample_sde_ode: no convergence in {max_steps} steps")
    return x, nfe
