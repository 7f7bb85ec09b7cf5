"""DPM-Solver++ (Lu et al. 2022b) on the Denoiser contract, in k-diffusion's VE form.

With lambda = -log sigma (the half log-SNR in VE scaling) and h = lambda_next - lambda, the exact
solution of the probability-flow ODE is x_next = (sigma_next / sigma) x + sigma_next *
int e^lambda D dlambda; DPM-Solver++ approximates D by a polynomial in lambda.
"""
from __future__ import annotations

import math

import torch

from kuosan.samplers.common import check_sigmas, sigma_batch


@torch.no_grad()
def sample_dpmpp_2m(denoiser, x, sigmas, *, generator=None, callback=None, extra_args=None):
    """DPM-Solver++(2M) (Lu et al. 2022b, Algorithm 2): second-order multistep, one evaluation per
    step; the first and the final step (to sigma = 0) are first order."""
    extra_args = extra_args or {}
    s = check_sigmas(sigmas)
    old_x0, h_last = None, None
    for i, (sigma, sigma_next) in enumerate(zip(s[:-1], s[1:])):
        x0_hat = denoiser(x, sigma_batch(x, sigma), **extra_args)
        if callback is not None:
            callback({"i": i, "x": x, "sigma": sigma, "sigma_next": sigma_next, "x0_hat": x0_hat})
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
