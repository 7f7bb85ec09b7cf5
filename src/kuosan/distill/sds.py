r"""Score distillation sampling (SDS; Poole et al. 2022, DreamFusion, Sec. 3) on the Denoiser contract.

A frozen text-conditional diffusion model is a critic for any differentiable generator x = g(theta):

.. math::
    \nabla_\theta \mathcal L_{SDS} = \mathbb E_{t, \epsilon}\bigl[w(t)\,(\hat\epsilon(z_t; y, t) - \epsilon)
        \,\partial x / \partial \theta\bigr], \qquad z_t = \alpha_t x + \sigma_t \epsilon,

in DreamFusion's notation, alpha_t = sqrt(abar_t) and sigma_t = sqrt(1 - abar_t) (ERRATA: not DDPM's
per-step alpha_t), and no backward pass through the denoiser (the U-Net Jacobian of the diffusion
loss's gradient is dropped). On the Denoiser contract, with s = sigma_t / alpha_t the VE noise level,
z_t / alpha_t = x + s eps, and eps_hat = (x + s eps - D(x + s eps, s)) / s, the residual is

.. math::
    \hat\epsilon - \epsilon = \bigl(x - D(x + s\,\epsilon,\ s)\bigr) / s,

so the gradient is w(t) (x - D(x + s eps, s)) / s: a denoiser's pull of x towards what it believes
the clean data are, divided by the noise level. Classifier-free guidance, which DreamFusion sets to
100, is a Denoiser wrapper (:class:`~kuosan.diffusion.guidance.CFGDenoiser`) the caller applies.

- ``t`` is drawn uniformly from the integer timesteps in [t_min T, t_max T] (DreamFusion's [0.02,
  0.98]); ``t_schedule="anneal"`` lowers t_max linearly to ``t_max_end`` over the run
  (threestudio's max-step annealing, and DreamTime's observation that late steps want low noise).
- ``w(t)``: ``"1-abar"`` = 1 - abar_t = sigma_t^2 (stable-dreamfusion's and threestudio's),
  ``"sigma"`` = sigma_t, ``"uniform"`` = 1.
- The surrogate loss 0.5 ||x - sg(x - grad)||^2 has exactly ``grad`` as its gradient with respect
  to x, so any optimiser and any generator upstream of x work.
- The value that tracks progress: the seed (003, Sec. 4) says L_SDS equals the weighted KL form
  E_t[2 sigma_t w(t) KL(q(z_t | x) || p(z_t; y))] up to a constant, a quantity no denoiser
  evaluates directly. Its change along the optimisation is the line integral of its gradient,
  whose unbiased estimate is the SDS gradient: :func:`kl_form_change` accumulates
  sum_k <grad_k, x_{k+1} - x_k> (first order), the KL form up to its starting value.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from kuosan.diffusion.schedules import DiscreteSchedule
from kuosan.utils import append_dims

WEIGHTINGS = ("1-abar", "sigma", "uniform")
T_SCHEDULES = ("random", "anneal")


def sds_weight(abar: torch.Tensor, weighting: str = "1-abar") -> torch.Tensor:
    """w(t) of a timestep with cumulative alpha ``abar`` (module doc)."""
    if weighting == "1-abar":
        return 1 - abar
    if weighting == "sigma":
        return (1 - abar).sqrt()
    if weighting == "uniform":
        return torch.ones_like(abar)
    raise ValueError(f"unknown SDS weighting {weighting!r}; choose from {', '.join(WEIGHTINGS)}")


@torch.no_grad()
def sds_gradient(
    denoiser, x: torch.Tensor, sigma: torch.Tensor, eps: torch.Tensor, *, weight: torch.Tensor | float = 1.0, **cond
) -> tuple[torch.Tensor, torch.Tensor]:
    """(grad, residual): grad = w (eps_hat - eps) with eps_hat - eps = (x - D(x + sigma eps, sigma)) /
    sigma, per sample (``sigma``, ``weight`` of shape (B,) or scalars). No graph: the denoiser is a
    frozen critic."""
    x = x.detach()
    sigma = torch.as_tensor(sigma, dtype=x.dtype, device=x.device).expand(x.shape[0])
    s = append_dims(sigma, x.ndim)
    residual = (x - denoiser(x + s * eps, sigma, **cond)) / s
    w = append_dims(torch.as_tensor(weight, dtype=x.dtype, device=x.device).expand(x.shape[0]), x.ndim)
    return w * residual, residual


def sds_surrogate(x: torch.Tensor, grad: torch.Tensor) -> torch.Tensor:
    """0.5 ||x - sg(x - grad)||^2 summed over the batch: a scalar whose gradient with respect to x is
    exactly ``grad`` (threestudio divides by the batch size; with Adam the scale does not matter)."""
    target = (x - grad).detach()
    return 0.5 * ((x - target) ** 2).sum()


@dataclass
class ScoreDistillation:
    """SDS with a frozen Denoiser on a discrete VP schedule: ``step(x, i, n, generator, **cond) ->
    (surrogate loss, info)`` draws t and eps for optimisation step i of n and returns the surrogate
    whose backward puts the SDS gradient on x (module doc); ``info`` has the timestep, the weight,
    the noise level, the mean squared residual ||eps_hat - eps||^2, the gradient itself and the
    denoised x0_hat = D(x + s eps, s) (for a target in another space: :func:`decoded_sds_gradient`)."""

    denoiser: object
    schedule: DiscreteSchedule
    t_min: float = 0.02
    t_max: float = 0.98
    weighting: str = "1-abar"
    t_schedule: str = "random"
    t_max_end: float = 0.5

    def __post_init__(self):
        if not 0 <= self.t_min < self.t_max <= 1:
            raise ValueError(f"need 0 <= t_min < t_max <= 1, got t_min={self.t_min}, t_max={self.t_max}")
        if self.weighting not in WEIGHTINGS:
            raise ValueError(f"unknown SDS weighting {self.weighting!r}; choose from {', '.join(WEIGHTINGS)}")
        if self.t_schedule not in T_SCHEDULES:
            raise ValueError(f"unknown t schedule {self.t_schedule!r}; choose from {', '.join(T_SCHEDULES)}")
        if self.t_schedule == "anneal" and not self.t_min < self.t_max_end <= self.t_max:
            raise ValueError(f"t_max_end={self.t_max_end} must lie in (t_min, t_max]")

    def t_range(self, i: int, n: int) -> tuple[int, int]:
        """The integer timesteps [lo, hi] drawn from at step i of n."""
        T = self.schedule.T
        top = self.t_max
        if self.t_schedule == "anneal" and n > 1:
            top = self.t_max + (self.t_max_end - self.t_max) * i / (n - 1)
        lo = max(1, int(round(self.t_min * T)))
        return lo, max(lo, min(T - 1, int(round(top * T))))

    def draw(self, x: torch.Tensor, i: int, n: int, generator: torch.Generator | None = None):
        """(t (B,), eps) for step i of n, drawn on the generator's device and moved beside x."""
        lo, hi = self.t_range(i, n)
        where = generator.device if generator is not None else x.device
        t = torch.randint(lo, hi + 1, (x.shape[0],), generator=generator, device=where).to(x.device)
        eps = torch.randn(x.shape, generator=generator, dtype=x.dtype, device=where).to(x.device)
        return t, eps

    def level(self, x: torch.Tensor, i: int, n: int, generator: torch.Generator | None = None):
        """(t, eps, sigma, w) of step i of n: the drawn timesteps and noise, their VE noise level
        s = sqrt((1 - abar) / abar) and weight w(t), each per sample."""
        t, eps = self.draw(x, i, n, generator)
        abar = self.schedule.abar.to(x.device)[t]
        sigma = ((1 - abar) / abar).sqrt().to(x.dtype)
        return t, eps, sigma, sds_weight(abar, self.weighting).to(x.dtype)

    def step(self, x: torch.Tensor, i: int, n: int, generator: torch.Generator | None = None, **cond):
        t, eps, sigma, w = self.level(x, i, n, generator)
        grad, residual = sds_gradient(self.denoiser, x, sigma, eps, weight=w, **cond)
        info = {
            "t": t,
            "weight": w,
            "sigma": sigma,
            "residual_sq": residual.pow(2).flatten(1).mean(1),
            "grad": grad,
            "x0_hat": x.detach() - append_dims(sigma, x.ndim) * residual,  # D(x + s eps, s)
        }
        return sds_surrogate(x, grad), info


def decoded_sds_gradient(
    image: torch.Tensor, decoded_x0_hat: torch.Tensor, sigma: torch.Tensor, weight: torch.Tensor
) -> torch.Tensor:
    """SDS with the target in image space, for a latent model whose generator renders pixels:
    grad_x = w(t) (x - Dec(x0_hat)) / s, the pixel-space form of w(t) (z - x0_hat) / s with the
    denoised latent decoded (HiFA's image-space loss, Zhu et al. 2023). It asks no backward pass
    through the encoder, whose Jacobian off the image manifold turns latent gradients into
    high-frequency pixel patterns (docs/score_distillation.md)."""
    s = append_dims(sigma.to(image.dtype), image.ndim)
    w = append_dims(weight.to(image.dtype), image.ndim)
    return w * (image.detach() - decoded_x0_hat.to(image.dtype)) / s


def kl_form_step(grad: torch.Tensor, x_before: torch.Tensor, x_after: torch.Tensor) -> float:
    """One step's change of the weighted KL form (module doc): <grad, x_after - x_before>, the
    batch mean of the per-sample inner products."""
    return float((grad * (x_after - x_before)).flatten(1).sum(1).mean())


def kl_form_change(grads: list[torch.Tensor], xs: list[torch.Tensor]) -> list[float]:
    """The running change of the weighted KL form along an optimisation path: the cumulative sum of
    :func:`kl_form_step` over the steps, one value per step."""
    out, acc = [], 0.0
    for g, a, b in zip(grads, xs[:-1], xs[1:]):
        acc += kl_form_step(g, a, b)
        out.append(acc)
    return out


def cosine_lr(i: int, n: int, lr: float, final: float = 0.0) -> float:
    """A cosine learning-rate decay from ``lr`` to ``final`` over n steps."""
    return final + 0.5 * (lr - final) * (1 + math.cos(math.pi * i / max(n - 1, 1)))


__all__ = [
    "ScoreDistillation",
    "T_SCHEDULES",
    "WEIGHTINGS",
    "cosine_lr",
    "decoded_sds_gradient",
    "kl_form_change",
    "kl_form_step",
    "sds_gradient",
    "sds_surrogate",
    "sds_weight",
]
