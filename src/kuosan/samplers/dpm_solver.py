"""DPM-Solver++ (Lu et al. 2022b) on the Denoiser contract, in k-diffusion's VE form.

Notation. lambda = -log sigma (the half log-SNR in VE scaling), h = lambda_next - lambda =
log(sigma / sigma_next) > 0. The probability-flow ODE dx/dsigma = (x - D(x, sigma)) / sigma has the
exact solution (Lu et al. 2022b, Eq. 9 with alpha = 1)

    x_next = (sigma_next / sigma) x + sigma_next int_lambda^lambda_next e^l D(x_l, l) dl,

and with u = l - lambda the weight of a monomial is closed form (integration by parts):

    I_k(h) = int_0^h e^{-(h - u)} u^{k-1} / (k-1)! du = h^k phi_k(-h),
    I_1 = 1 - e^{-h},  I_{k+1} = h^k / k! - I_k.

DPM-Solver++ replaces D by a polynomial in lambda through the last p denoised values (multistep)
or through intermediate evaluations (singlestep) and integrates it exactly: local error O(h^{p+1}),
global order p. The step to sigma = 0 is h = infinity: every weight but I_1 = 1 diverges, so the
last step is x = D(x, sigma) (first order, as Lu et al. and diffusers' ``lower_order_final``).

The SDE variant (Lu et al. 2022b, Sec. 5; k-diffusion's ``dpmpp_*_sde``) integrates the reverse SDE
with noise share ``eta`` (eta = 1: the reverse SDE; eta = 0: the ODE): with h_eta = (1 + eta) h,

    x_next = (sigma_next / sigma) e^{-eta h} x + sum_k a_k I_{k+1}(h_eta) / (1 + eta)^k
             + sigma_next sqrt(1 - e^{-2 eta h}) z,

a_k the k-th lambda-derivative of the interpolating polynomial; at first order and eta = 1 this is
DDPM's posterior step exactly.
"""

from __future__ import annotations

import math

import torch

from kuosan.samplers.common import check_sigmas, denoise, noise_like, sigma_batch


def exp_weights(h: float, p: int) -> list[float]:
    """[I_1(h), ..., I_p(h)], I_k(h) = int_0^h e^{-(h-u)} u^{k-1}/(k-1)! du = h^k phi_k(-h)
    (Hochbruck & Ostermann 2010's phi functions; Lu et al. 2022b, Eq. 10). Small h uses the series
    I_k = sum_m (-1)^m h^{k+m} / (k+m)! to avoid the cancellation of the recursion."""
    if h < 0.1:
        out = []
        for k in range(1, p + 1):
            term, acc, m = h**k / math.factorial(k), 0.0, 0
            while abs(term) > 1e-18 * max(abs(acc), 1e-300) and m < 60:
                acc += term
                m += 1
                term *= -h / (k + m)
            out.append(acc)
        return out
    out = [-math.expm1(-h)]
    for k in range(1, p):
        out.append(h**k / math.factorial(k) - out[-1])
    return out


def taylor_weights(nodes: list[float], weights: list[float]) -> list[float]:
    """Coefficients c_j with sum_j c_j f(u_j) = sum_k a_k W_k, where a_k are the Taylor coefficients
    (a_k = p^(k)(0)) of the polynomial p through (u_j, f(u_j)) and W_k the weight of u^k / k!:
    c = V^{-T} W with V_jk = u_j^k / k! (one small solve in float64)."""
    n = len(nodes)
    if n == 1:
        return [weights[0]]
    V = torch.tensor([[u**k / math.factorial(k) for k in range(n)] for u in nodes], dtype=torch.float64)
    W = torch.tensor(weights[:n], dtype=torch.float64)
    return torch.linalg.solve(V.T, W).tolist()


def _order_schedule(n_steps: int, order: int, lower_order_final: bool) -> list[int]:
    """The order of each step: warm-up 1, 2, ..., order; with ``lower_order_final`` the last steps
    use at most as many points as steps remain (diffusers' lower_order_final, which helps stability
    at < 15 steps); the step to sigma = 0 is order 1 regardless."""
    orders = []
    for i in range(n_steps):
        p = min(order, i + 1)
        if lower_order_final:
            p = min(p, n_steps - i)
        orders.append(p)
    return orders


@torch.no_grad()
def sample_dpmpp_multistep(
    denoiser,
    x,
    sigmas,
    *,
    order: int = 3,
    eta: float = 0.0,
    s_noise: float = 1.0,
    lower_order_final: bool = True,
    generator=None,
    callback=None,
    extra_args=None,
):
    """DPM-Solver++(pM), exact-integration form (Lu et al. 2022b, Sec. 4.2 and App. B; the 'heun'
    solver type of diffusers): one evaluation per step; the step i -> i+1 integrates exactly the
    polynomial in lambda through the last p denoised values:

        x_next = (sigma_next / sigma) e^{-eta h} x + sum_j c_j D_{i-j} (+ noise if eta > 0),
        c = V^{-T} [I_1(h_eta), I_2(h_eta) / (1 + eta), ...],  V_jk = (lambda_{i-j} - lambda_i)^k / k!.

    Local error O(h^{p+1}), global order p; eta > 0 is the SDE variant (module doc)."""
    extra_args = extra_args or {}
    s = check_sigmas(sigmas)
    n = len(s) - 1
    orders = _order_schedule(n, order, lower_order_final)
    hist_x0: list[torch.Tensor] = []
    hist_lam: list[float] = []
    for i, (sigma, sigma_next) in enumerate(zip(s[:-1], s[1:])):
        x0_hat = denoise(denoiser, x, sigma, extra_args, callback, i, sigma_next)
        lam = -math.log(sigma)
        hist_x0 = ([x0_hat] + hist_x0)[:order]
        hist_lam = ([lam] + hist_lam)[:order]
        if sigma_next == 0:
            x = x0_hat
            break
        h = math.log(sigma / sigma_next)
        h_eta = (1 + eta) * h
        p = orders[i]
        w = exp_weights(h_eta, p)
        w = [wk / (1 + eta) ** k for k, wk in enumerate(w)]
        c = taylor_weights([lj - lam for lj in hist_lam[:p]], w)
        x = (sigma_next / sigma) * math.exp(-eta * h) * x
        for cj, dj in zip(c, hist_x0[:p]):
            x = x + cj * dj
        if eta > 0:
            x = x + noise_like(x, generator) * (sigma_next * math.sqrt(-math.expm1(-2 * eta * h)) * s_noise)
    return x


@torch.no_grad()
def sample_dpmpp_2m(denoiser, x, sigmas, *, generator=None, callback=None, extra_args=None):
    """DPM-Solver++(2M) (Lu et al. 2022b, Algorithm 2): second-order multistep, one evaluation per
    step, the midpoint form: with r = h_last / h,

        D = (1 + 1/(2r)) D_i - 1/(2r) D_{i-1},   x_next = (sigma_next / sigma) x - expm1(-h) D;

    the first and the final step (to sigma = 0) are first order."""
    extra_args = extra_args or {}
    s = check_sigmas(sigmas)
    old_x0, h_last = None, None
    for i, (sigma, sigma_next) in enumerate(zip(s[:-1], s[1:])):
        x0_hat = denoise(denoiser, x, sigma, extra_args, callback, i, sigma_next)
        if sigma_next == 0:
            x = x0_hat
            break
        h = math.log(sigma) - math.log(sigma_next)
        d = x0_hat
        if old_x0 is not None:
            r = h_last / h
            d = (1 + 1 / (2 * r)) * x0_hat - (1 / (2 * r)) * old_x0
        x = (sigma_next / sigma) * x - math.expm1(-h) * d
        old_x0, h_last = x0_hat, h
    return x


SDE_SOLVER_TYPES = ("midpoint", "heun")
THREE_M_FORMS = ("usual", "exact")


@torch.no_grad()
def sample_dpmpp_3m(
    denoiser,
    x,
    sigmas,
    *,
    form: str = "usual",
    lower_order_final: bool = True,
    generator=None,
    callback=None,
    extra_args=None,
):
    """DPM-Solver++(3M): third-order multistep, one evaluation per step, in one of two forms.

    - ``form="usual"`` (the default: more accurate at 10-25 evaluations on the oracles,
      docs/samplers.md): k-diffusion's ``sample_dpmpp_3m_sde`` at eta = 0, with divided differences
      d1 = f[i, i-1] + (f[i, i-1] - f[i-1, i-2]) r0 / (r0 + r1) and d2 = (f[i, i-1] - f[i-1, i-2]) /
      (r0 + r1) (in units of h) weighted by phi_2 = 1 - (1 - e^-h)/h and phi_3 = phi_2/h - 1/2. Its
      quadratic weight is half the exact one, which leaves it second order (measured 2.0-2.3), but
      with smaller error constants at these step counts.
    - ``form="exact"``: ``sample_dpmpp_multistep`` with p = 3, the quadratic term with its exact
      weight I_3(h) = h^3 phi_3(-h) per u^2/2: third order (measured 2.8-3.3), ahead from ~50 steps.
      ``lower_order_final`` applies to this form (diffusers' option).
    """
    if form not in THREE_M_FORMS:
        raise ValueError(f"form must be one of {THREE_M_FORMS}, got {form!r}")
    if form == "usual":
        return _dpmpp_3m_usual(denoiser, x, sigmas, 0.0, 1.0, generator, callback, extra_args)
    return sample_dpmpp_multistep(
        denoiser,
        x,
        sigmas,
        order=3,
        lower_order_final=lower_order_final,
        generator=generator,
        callback=callback,
        extra_args=extra_args,
    )


@torch.no_grad()
def sample_dpmpp_2m_sde(
    denoiser,
    x,
    sigmas,
    *,
    eta: float = 1.0,
    s_noise: float = 1.0,
    solver_type: str = "midpoint",
    generator=None,
    callback=None,
    extra_args=None,
):
    """SDE-DPM-Solver++(2M) (Lu et al. 2022b, Sec. 5; k-diffusion's ``sample_dpmpp_2m_sde``): the
    reverse SDE with noise share ``eta`` (0: the ODE), integrating D linearly in lambda through the
    last two denoised values. With H = (1 + eta) h and r = h_last / h:

        x_next = (sigma_next / sigma) e^{-eta h} x + (1 - e^{-H}) D_i + c (D_i - D_{i-1}) / r
                 + sigma_next sqrt(1 - e^{-2 eta h}) s_noise z,

    c = (1 - e^{-H}) / 2 for ``solver_type="midpoint"`` (k-diffusion's default, and kuosan's: 0.18
    against 1.55 FD at 10 steps on the 8-D oracle of docs/samplers.md), c = 1 - (1 - e^{-H}) / H for
    "heun" (the exact integral of the linear interpolant, ``sample_dpmpp_multistep`` with p = 2).
    The first step and the step to sigma = 0 are first order."""
    if solver_type not in SDE_SOLVER_TYPES:
        raise ValueError(f"solver_type must be one of {SDE_SOLVER_TYPES}, got {solver_type!r}")
    extra_args = extra_args or {}
    s = check_sigmas(sigmas)
    old_x0, h_last = None, None
    for i, (sigma, sigma_next) in enumerate(zip(s[:-1], s[1:])):
        x0_hat = denoise(denoiser, x, sigma, extra_args, callback, i, sigma_next)
        if sigma_next == 0:
            x = x0_hat
            break
        h = math.log(sigma / sigma_next)
        big_h = h + eta * h
        one_minus = -math.expm1(-big_h)
        x = (sigma_next / sigma) * math.exp(-eta * h) * x + one_minus * x0_hat
        if old_x0 is not None:
            r = h_last / h
            c = 0.5 * one_minus if solver_type == "midpoint" else 1 - one_minus / big_h
            x = x + (c / r) * (x0_hat - old_x0)
        if eta > 0:
            x = x + noise_like(x, generator) * (sigma_next * math.sqrt(-math.expm1(-2 * eta * h)) * s_noise)
        old_x0, h_last = x0_hat, h
    return x


@torch.no_grad()
def sample_dpmpp_3m_sde(
    denoiser,
    x,
    sigmas,
    *,
    eta: float = 1.0,
    s_noise: float = 1.0,
    form: str = "usual",
    generator=None,
    callback=None,
    extra_args=None,
):
    """SDE-DPM-Solver++(3M): as ``sample_dpmpp_2m_sde`` with a quadratic in lambda, in the forms of
    ``sample_dpmpp_3m`` ("usual": k-diffusion's ``sample_dpmpp_3m_sde``; "exact": the exact weights)."""
    if form not in THREE_M_FORMS:
        raise ValueError(f"form must be one of {THREE_M_FORMS}, got {form!r}")
    if form == "usual":
        return _dpmpp_3m_usual(denoiser, x, sigmas, eta, s_noise, generator, callback, extra_args)
    return sample_dpmpp_multistep(
        denoiser,
        x,
        sigmas,
        order=3,
        eta=eta,
        s_noise=s_noise,
        generator=generator,
        callback=callback,
        extra_args=extra_args,
    )


def _dpmpp_3m_usual(denoiser, x, sigmas, eta, s_noise, generator, callback, extra_args):
    """k-diffusion's DPM-Solver++(3M) SDE step (``sample_dpmpp_3m`` doc), eta = 0 the ODE."""
    extra_args = extra_args or {}
    s = check_sigmas(sigmas)
    d_1 = d_2 = h_1 = h_2 = None
    for i, (sigma, sigma_next) in enumerate(zip(s[:-1], s[1:])):
        x0_hat = denoise(denoiser, x, sigma, extra_args, callback, i, sigma_next)
        if sigma_next == 0:
            x = x0_hat
            break
        h = math.log(sigma / sigma_next)
        h_eta = h * (eta + 1)
        x = math.exp(-h_eta) * x - math.expm1(-h_eta) * x0_hat  # e^{-h} = sigma_next / sigma
        phi_2 = math.expm1(-h_eta) / h_eta + 1
        if h_2 is not None:
            r0, r1 = h_1 / h, h_2 / h
            d1_0, d1_1 = (x0_hat - d_1) / r0, (d_1 - d_2) / r1
            d1 = d1_0 + (d1_0 - d1_1) * (r0 / (r0 + r1))
            d2 = (d1_0 - d1_1) / (r0 + r1)
            phi_3 = phi_2 / h_eta - 0.5
            x = x + phi_2 * d1 - phi_3 * d2
        elif h_1 is not None:
            x = x + phi_2 * ((x0_hat - d_1) / (h_1 / h))
        if eta > 0:
            x = x + noise_like(x, generator) * (sigma_next * math.sqrt(-math.expm1(-2 * h * eta)) * s_noise)
        d_1, d_2, h_1, h_2 = x0_hat, d_1, h, h_1
    return x


@torch.no_grad()
def sample_dpmpp_2s(
    denoiser,
    x,
    sigmas,
    *,
    eta: float = 0.0,
    s_noise: float = 1.0,
    r: float = 0.5,
    generator=None,
    callback=None,
    extra_args=None,
):
    """DPM-Solver++(2S) (Lu et al. 2022b, Algorithm 1): singlestep second order, two evaluations
    per step but the last. With s = lambda + r h (sigma_s = sigma^{1-r} sigma_next^r):

        u = (sigma_s / sigma) x - expm1(-r h) D_i,
        D = (1 - 1/(2r)) D_i + 1/(2r) D(u, sigma_s),   x_next = (sigma_next / sigma) x - expm1(-h) D.

    eta > 0 makes it ancestral (k-diffusion's dpmpp_2s_ancestral): the step goes to sigma_down and
    noise of std sigma_up is added (``ancestral_step``). The step to sigma = 0 is x = D(x, sigma)."""
    from kuosan.samplers.common import ancestral_step

    extra_args = extra_args or {}
    s = check_sigmas(sigmas)
    for i, (sigma, sigma_next) in enumerate(zip(s[:-1], s[1:])):
        x0_hat = denoise(denoiser, x, sigma, extra_args, callback, i, sigma_next)
        sigma_down, sigma_up = ancestral_step(sigma, sigma_next, eta) if eta > 0 else (sigma_next, 0.0)
        if sigma_down == 0:
            x = x0_hat
        else:
            h = math.log(sigma / sigma_down)
            sigma_s = sigma * math.exp(-r * h)
            u = (sigma_s / sigma) * x - math.expm1(-r * h) * x0_hat
            x0_s = denoiser(u, sigma_batch(x, sigma_s), **extra_args)
            d = (1 - 1 / (2 * r)) * x0_hat + (1 / (2 * r)) * x0_s
            x = (sigma_down / sigma) * x - math.expm1(-h) * d
        if sigma_up > 0:
            x = x + noise_like(x, generator) * (sigma_up * s_noise)
    return x
