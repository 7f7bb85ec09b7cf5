"""Diffusion training losses, per sample (shape (B,)); weighting and reduction are explicit.

DDPM's L_simple (Ho et al. 2020, Eq. 14) is E_{t, x0, eps} || eps - eps_theta(x_t, t) ||^2; the x0
and v targets (Salimans & Ho 2022) are the same regression with another target. Min-SNR-gamma
weighting (Hang et al. 2023) caps the weight of low-noise steps.
"""

from __future__ import annotations

import torch

from kuosan.diffusion import gaussian as G
from kuosan.diffusion.schedules import snr_from_abar
from kuosan.losses.objective import Objective
from kuosan.utils import mean_flat

TARGETS = ("eps", "x0", "v")
WEIGHTINGS = ("none", "min_snr")


def diffusion_target(prediction: str, x0: torch.Tensor, eps: torch.Tensor, abar) -> torch.Tensor:
    """The regression target of a parameterization: eps, x0, or v = sqrt(abar) eps - sqrt(1-abar) x0."""
    if prediction == "eps":
        return eps
    if prediction == "x0":
        return x0
    if prediction == "v":
        return G.v_from_x0_eps(x0, eps, abar)
    raise ValueError(f"unknown prediction target {prediction!r}; choose from {TARGETS}")


def min_snr_weight(abar: torch.Tensor, prediction: str, gamma: float = 5.0) -> torch.Tensor:
    """Min-SNR-gamma weight (Hang et al. 2023, Eq. 9) expressed for each target: the x0-space weight
    min(SNR, gamma) becomes min(SNR, gamma)/SNR for eps and min(SNR, gamma)/(SNR + 1) for v."""
    snr = snr_from_abar(abar.to(torch.float64))
    w = snr.clamp(max=gamma)
    if prediction == "eps":
        return w / snr
    if prediction == "v":
        return w / (snr + 1)
    return w


def l_simple(model_output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Per-sample mean squared error over all non-batch dimensions (DDPM Eq. 14 without the sum)."""
    return mean_flat((model_output.float() - target.float()) ** 2)


def diffusion_loss(
    net,
    x0: torch.Tensor,
    t: torch.Tensor,
    abar: torch.Tensor,
    eps: torch.Tensor,
    *,
    prediction: str = "eps",
    weighting: str = "none",
    snr_gamma: float = 5.0,
    **cond,
) -> torch.Tensor:
    """Per-sample training loss at integer timesteps ``t`` with abar = abar[t] (both (B,)):
    x_t = q_sample(x0, abar, eps), the network predicts ``prediction`` and is regressed on it."""
    if weighting not in WEIGHTINGS:
        raise ValueError(f"unknown loss weighting {weighting!r}; choose from {WEIGHTINGS}")
    x_t = G.q_sample(x0, abar, eps)
    loss = l_simple(net(x_t, t.to(x0.dtype), **cond), diffusion_target(prediction, x0, eps, abar))
    if weighting == "min_snr":
        loss = loss * min_snr_weight(abar, prediction, snr_gamma).to(loss.dtype)
    return loss


class DiffusionObjective(Objective):
    """DDPM's training objective on a discrete VP schedule: draw t ~ U{0..T-1} and eps ~ N(0, I),
    then :func:`diffusion_loss` per sample."""

    def __init__(self, abar: torch.Tensor, *, prediction: str = "eps", weighting: str = "none", snr_gamma: float = 5.0):
        self.abar, self.prediction, self.weighting, self.snr_gamma = abar, prediction, weighting, snr_gamma

    def draw(self, x0: torch.Tensor, generator: torch.Generator | None = None) -> dict[str, torch.Tensor]:
        t = torch.randint(self.abar.shape[0], (x0.shape[0],), generator=generator)
        return {"t": t, "eps": torch.randn(x0.shape, generator=generator, dtype=x0.dtype)}

    def loss(self, net, x0: torch.Tensor, *, t: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
        return diffusion_loss(
            net,
            x0,
            t,
            self.abar[t],
            eps,
            prediction=self.prediction,
            weighting=self.weighting,
            snr_gamma=self.snr_gamma,
        )
