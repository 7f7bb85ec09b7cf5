"""k-diffusion 0.1.1's sampling functions, re-typed from its ``k_diffusion/sampling.py`` (the package
itself cannot be imported beside a PyTorch without torchvision: its ``__init__`` imports its
evaluation code), as the peer that benchmarks/peer_samplers.py and tests/samplers/ compare kuosan's
samplers with. Only the noise source is a parameter: ``noise()`` returns the next standard normal
draw (k-diffusion's default for the SDE samplers is a Brownian tree; for a comparison of methods
both libraries get the same draws). ``model(x, sigma_batch) -> x0_hat`` is the Denoiser contract.
"""

from __future__ import annotations

import torch


def get_ancestral_step(sigma_from, sigma_to, eta=1.0):
    if not eta:
        return sigma_to, 0.0
    sigma_up = min(sigma_to, eta * (sigma_to**2 * (sigma_from**2 - sigma_to**2) / sigma_from**2) ** 0.5)
    sigma_down = (sigma_to**2 - sigma_up**2) ** 0.5
    return sigma_down, sigma_up


def to_d(x, sigma, denoised):
    return (x - denoised) / sigma


def _s_in(x):
    return x.new_ones([x.shape[0]])


def sample_euler(model, x, sigmas, noise=None):
    for i in range(len(sigmas) - 1):
        denoised = model(x, sigmas[i] * _s_in(x))
        x = x + to_d(x, sigmas[i], denoised) * (sigmas[i + 1] - sigmas[i])
    return x


def sample_euler_ancestral(model, x, sigmas, eta=1.0, noise=None):
    for i in range(len(sigmas) - 1):
        denoised = model(x, sigmas[i] * _s_in(x))
        sigma_down, sigma_up = get_ancestral_step(sigmas[i], sigmas[i + 1], eta=eta)
        x = x + to_d(x, sigmas[i], denoised) * (sigma_down - sigmas[i])
        if sigmas[i + 1] > 0:
            x = x + noise() * sigma_up
    return x


def sample_heun(model, x, sigmas, noise=None):
    for i in range(len(sigmas) - 1):
        denoised = model(x, sigmas[i] * _s_in(x))
        d = to_d(x, sigmas[i], denoised)
        dt = sigmas[i + 1] - sigmas[i]
        if sigmas[i + 1] == 0:
            x = x + d * dt
        else:
            x_2 = x + d * dt
            denoised_2 = model(x_2, sigmas[i + 1] * _s_in(x))
            x = x + (d + to_d(x_2, sigmas[i + 1], denoised_2)) / 2 * dt
    return x


def _t(sigma):
    return sigma.log().neg()


def _sigma(t):
    return t.neg().exp()


def sample_dpmpp_2s_ancestral(model, x, sigmas, eta=1.0, noise=None):
    for i in range(len(sigmas) - 1):
        denoised = model(x, sigmas[i] * _s_in(x))
        sigma_down, sigma_up = get_ancestral_step(sigmas[i], sigmas[i + 1], eta=eta)
        if sigma_down == 0:
            x = x + to_d(x, sigmas[i], denoised) * (sigma_down - sigmas[i])
        else:
            t, t_next = _t(sigmas[i]), _t(torch.as_tensor(sigma_down, dtype=sigmas.dtype))
            r = 1 / 2
            h = t_next - t
            s = t + r * h
            x_2 = (_sigma(s) / _sigma(t)) * x - (-h * r).expm1() * denoised
            denoised_2 = model(x_2, _sigma(s) * _s_in(x))
            x = (_sigma(t_next) / _sigma(t)) * x - (-h).expm1() * denoised_2
        if sigmas[i + 1] > 0:
            x = x + noise() * sigma_up
    return x


def sample_dpmpp_2m(model, x, sigmas, noise=None):
    old_denoised = None
    for i in range(len(sigmas) - 1):
        denoised = model(x, sigmas[i] * _s_in(x))
        t, t_next = _t(sigmas[i]), _t(sigmas[i + 1])
        h = t_next - t
        if old_denoised is None or sigmas[i + 1] == 0:
            x = (_sigma(t_next) / _sigma(t)) * x - (-h).expm1() * denoised
        else:
            r = (t - _t(sigmas[i - 1])) / h
            denoised_d = (1 + 1 / (2 * r)) * denoised - (1 / (2 * r)) * old_denoised
            x = (_sigma(t_next) / _sigma(t)) * x - (-h).expm1() * denoised_d
        old_denoised = denoised
    return x


def sample_dpmpp_2m_sde(model, x, sigmas, eta=1.0, solver_type="midpoint", noise=None):
    old_denoised, h_last, h = None, None, None
    for i in range(len(sigmas) - 1):
        denoised = model(x, sigmas[i] * _s_in(x))
        if sigmas[i + 1] == 0:
            x = denoised
        else:
            h = _t(sigmas[i + 1]) - _t(sigmas[i])
            eta_h = eta * h
            x = sigmas[i + 1] / sigmas[i] * (-eta_h).exp() * x + (-h - eta_h).expm1().neg() * denoised
            if old_denoised is not None:
                r = h_last / h
                if solver_type == "heun":
                    x = x + ((-h - eta_h).expm1().neg() / (-h - eta_h) + 1) * (1 / r) * (denoised - old_denoised)
                else:
                    x = x + 0.5 * (-h - eta_h).expm1().neg() * (1 / r) * (denoised - old_denoised)
            if eta:
                x = x + noise() * sigmas[i + 1] * (-2 * eta_h).expm1().neg().sqrt()
        old_denoised = denoised
        h_last = h
    return x


def sample_dpmpp_3m_sde(model, x, sigmas, eta=1.0, noise=None):
    denoised_1, denoised_2, h, h_1, h_2 = None, None, None, None, None
    for i in range(len(sigmas) - 1):
        denoised = model(x, sigmas[i] * _s_in(x))
        if sigmas[i + 1] == 0:
            x = denoised
        else:
            h = _t(sigmas[i + 1]) - _t(sigmas[i])
            h_eta = h * (eta + 1)
            x = torch.exp(-h_eta) * x + (-h_eta).expm1().neg() * denoised
            if h_2 is not None:
                r0, r1 = h_1 / h, h_2 / h
                d1_0, d1_1 = (denoised - denoised_1) / r0, (denoised_1 - denoised_2) / r1
                d1 = d1_0 + (d1_0 - d1_1) * r0 / (r0 + r1)
                d2 = (d1_0 - d1_1) / (r0 + r1)
                phi_2 = h_eta.neg().expm1() / h_eta + 1
                phi_3 = phi_2 / h_eta - 0.5
                x = x + phi_2 * d1 - phi_3 * d2
            elif h_1 is not None:
                phi_2 = h_eta.neg().expm1() / h_eta + 1
                x = x + phi_2 * ((denoised - denoised_1) / (h_1 / h))
            if eta:
                x = x + noise() * sigmas[i + 1] * (-2 * h * eta).expm1().neg().sqrt()
        denoised_1, denoised_2 = denoised, denoised_1
        h_1, h_2 = h, h_1
    return x


# kuosan's registry name -> (k-diffusion function, its options that make it the same method)
PEERS = {
    "euler": (sample_euler, {}),
    "heun": (sample_heun, {}),
    "dpmpp-2m": (sample_dpmpp_2m, {}),
    "euler-ancestral": (sample_euler_ancestral, {}),
    "dpmpp-2s": (sample_dpmpp_2s_ancestral, {}),
    "dpmpp-2m-sde": (sample_dpmpp_2m_sde, {}),
    "dpmpp-3m-sde": (sample_dpmpp_3m_sde, {}),
    "dpmpp-3m": (sample_dpmpp_3m_sde, {"eta": 0.0}),
}
