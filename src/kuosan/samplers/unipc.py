"""UniPC (Zhao et al. 2023): a unified predictor-corrector for the probability-flow ODE, in the
data-prediction form on the Denoiser contract (VE scaling, lambda = -log sigma as in
``dpm_solver.py``).

Notation (paper -> code): the model outputs m_i = D(x_i, sigma_i) ("x0_hat"); h = lambda_t - lambda_s;
r_k = (lambda_{s_k} - lambda_s) / h < 0 for the earlier points s_k; D_k = (m_{s_k} - m_s) / r_k;
B(h) = h ("bh1") or e^h - 1 ("bh2") in the paper's x0-form sign, here -h or expm1(-h).

UniP-p, the predictor (paper Eq. 9, Algorithm 2), one evaluation per step:

    x_t = (sigma_t / sigma_s) x_s - expm1(-h) m_s - B(h) sum_{k=1}^{p-1} rho_k D_k,
    R_{p-1} rho = g / B(h),   R_{ik} = r_k^{i-1},   g_i = -h phi_{i+1}(-h) i!  (= -I_{i+1}(h) i! / h^i),

and rho = 1/2 for p = 2 (the paper's simplification). UniC-p, the corrector (Eq. 11-12, Algorithm
1), reuses the evaluation m_t at the predicted x_t, which the next step needs anyway, so it costs no
evaluation: the same update with D_t = m_t - m_s (r = 1) added to the sum and rho from the full
p x p system (rho = 1/2 for p = 1). UniPC-p has order p + 1 with p evaluations of history.
The step to sigma = 0 (h = infinity) is x = m_s, after which there is nothing left to correct.
"""

from __future__ import annotations

import math

import torch

from kuosan.samplers.common import check_sigmas, denoise
from kuosan.samplers.dpm_solver import _order_schedule, exp_weights

VARIANTS = ("bh1", "bh2")


def _unipc_rhs(h: float, p: int, variant: str) -> tuple[float, list[float]]:
    """B(h) and the right-hand side g_i / B(h), i = 1..p, of UniPC's order conditions."""
    if variant not in VARIANTS:
        raise ValueError(f"unknown UniPC variant {variant!r}; choose from {VARIANTS}")
    B = -h if variant == "bh1" else math.expm1(-h)
    I = exp_weights(h, p + 1)  # noqa: E741 (the paper's I_k)  I[k] = I_{k+1}(h)
    return B, [-I[i] * math.factorial(i) / h**i / B for i in range(1, p + 1)]


def _unipc_update(x, m_s, sigma_s, sigma_t, lam_hist, m_hist, order, variant, m_t=None):
    """One UniP (m_t None) or UniC (m_t given) update from (x, sigma_s) to sigma_t. ``lam_hist`` and
    ``m_hist`` hold the earlier points, newest first (excluding s)."""
    h = math.log(sigma_s / sigma_t)
    lam_s = -math.log(sigma_s)
    B, rhs = _unipc_rhs(h, order, variant)
    n_old = order - 1
    rks = [(lam_hist[k] - lam_s) / h for k in range(n_old)]
    Ds = [(m_hist[k] - m_s) / rks[k] for k in range(n_old)]
    if m_t is not None:
        rks.append(1.0)
        Ds.append(m_t - m_s)
    base = (sigma_t / sigma_s) * x - math.expm1(-h) * m_s
    if not Ds:
        return base
    if m_t is None and order == 2:
        rhos = [0.5]
    elif m_t is not None and order == 1:
        rhos = [0.5]
    else:
        k = len(rks)
        R = torch.tensor([[r**i for r in rks] for i in range(k)], dtype=torch.float64)
        rhos = torch.linalg.solve(R, torch.tensor(rhs[:k], dtype=torch.float64)).tolist()
    res = sum(rho * D for rho, D in zip(rhos, Ds))
    return base - B * res


@torch.no_grad()
def sample_unipc(
    denoiser,
    x,
    sigmas,
    *,
    order: int = 2,
    variant: str = "bh2",
    corrector: bool = True,
    lower_order_final: bool = True,
    generator=None,
    callback=None,
    extra_args=None,
):
    """UniPC-p (Zhao et al. 2023, Algorithms 1-2): UniP-p predictor with UniC corrector, one
    evaluation per step, order p + 1 (p without the corrector, which is then UniP alone).
    ``lower_order_final`` lowers the order near the end as diffusers does."""
    extra_args = extra_args or {}
    s = check_sigmas(sigmas)
    n = len(s) - 1
    orders = _order_schedule(n, order, lower_order_final)
    m_hist: list[torch.Tensor] = []
    lam_hist: list[float] = []
    x_prev = None
    for i, (sigma, sigma_next) in enumerate(zip(s[:-1], s[1:])):
        x0_hat = denoise(denoiser, x, sigma, extra_args, callback, i, sigma_next)
        if corrector and x_prev is not None:  # UniC: correct x_i with the evaluation just made at it
            x = _unipc_update(
                x_prev, m_hist[0], s[i - 1], sigma, lam_hist[1:], m_hist[1:], orders[i - 1], variant, m_t=x0_hat
            )
        m_hist = ([x0_hat] + m_hist)[:order]
        lam_hist = ([-math.log(sigma)] + lam_hist)[:order]
        if sigma_next == 0:
            return x0_hat
        x_prev = x
        x = _unipc_update(x, x0_hat, sigma, sigma_next, lam_hist[1:], m_hist[1:], orders[i], variant)
    return x


@torch.no_grad()
def sample_unipc_3(
    denoiser,
    x,
    sigmas,
    *,
    variant: str = "bh2",
    corrector: bool = True,
    lower_order_final: bool = True,
    generator=None,
    callback=None,
    extra_args=None,
):
    """UniPC-3: ``sample_unipc`` with p = 3 (fourth order with the corrector)."""
    return sample_unipc(
        denoiser,
        x,
        sigmas,
        order=3,
        variant=variant,
        corrector=corrector,
        lower_order_final=lower_order_final,
        generator=generator,
        callback=callback,
        extra_args=extra_args,
    )
