"""Score matching losses, per sample (shape (B,)): learn s_theta(x) ~ grad_x log p(x) without the
normalising constant of p (seed 003, section 2(1) 4); Song & Ermon 2019; Song et al. 2019).

The Fisher divergence 1/2 E_p ||s_theta(x) - grad_x log p(x)||^2 needs the unknown score. Three
tractable objectives equal it up to a constant that does not depend on theta:

- score matching (Hyvarinen 2005, Thm. 1): E_p [tr(grad_x s_theta(x)) + 1/2 ||s_theta(x)||^2],
  here with the exact trace (D backward passes: low dimensions only);
- sliced score matching (Song et al. 2019, Eq. 7; Hutchinson's trace estimator): the trace becomes
  v^T grad_x s_theta(x) v with random projections v, E[v v^T] = I; SSM-VR (Eq. 8) integrates the
  second term in closed form, 1/2 (v^T s)^2 -> 1/2 ||s||^2;
- denoising score matching (Vincent 2011): for x~ = x + sigma eps, the score of the noised data
  q_sigma is learnt from the conditional one, grad log q(x~ | x) = -eps / sigma;
  NCSN's annealed DSM (Song & Ermon 2019, Eqs. 5-6) mixes the levels sigma_1 > ... > sigma_L with
  lambda(sigma) = sigma^2.

Per-sample losses sum over the data dimensions, as the papers write them (``reduction="sum"``);
``reduction="mean"`` divides by the dimension (kuosan's L_simple convention, which the Trainer's
learning rates are tuned for). Score functions are ``score_fn(x) -> (B, ...)`` (or
``score_fn(x, sigma)`` for the noise-conditional losses).
"""

from __future__ import annotations

import torch

from kuosan.diffusion.parameterization import ScoreDenoiser
from kuosan.losses.objective import Objective
from kuosan.utils import append_dims

PROJECTIONS = ("rademacher", "gaussian")
REDUCTIONS = ("sum", "mean")


def _reduce(v: torch.Tensor, reduction: str, x: torch.Tensor) -> torch.Tensor:
    if reduction not in REDUCTIONS:
        raise ValueError(f"unknown reduction {reduction!r}; choose from {REDUCTIONS}")
    return v if reduction == "sum" else v / x[0].numel()


def _dot(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return (a * b).flatten(1).sum(1)


def fisher_divergence(score: torch.Tensor, true_score: torch.Tensor, *, reduction: str = "sum") -> torch.Tensor:
    """1/2 ||s_theta(x) - grad_x log p(x)||^2 per sample: the integrand of the Fisher divergence
    (seed 003's "explicit score matching" when the true score is known, e.g. of q_sigma)."""
    return _reduce(0.5 * (score.double() - true_score.double()).flatten(1).pow(2).sum(1), reduction, score)


def explicit_score_matching_loss(
    score_fn, x: torch.Tensor, *, create_graph: bool = True, reduction: str = "sum"
) -> torch.Tensor:
    """Score matching with the exact Jacobian trace (Hyvarinen 2005, Eq. 4 / Thm. 1; seed 003):

        J(theta; x) = tr(grad_x s_theta(x)) + 1/2 ||s_theta(x)||^2,

    E_p J = Fisher divergence - 1/2 E_p ||grad log p||^2. The trace costs one backward pass per data
    dimension: for low-dimensional data. ``create_graph`` keeps the graph for training."""
    x = x.detach().requires_grad_(True)
    with torch.enable_grad():
        s = score_fn(x)
        flat = s.flatten(1)
        trace = torch.zeros(x.shape[0], dtype=s.dtype, device=x.device)
        for j in range(flat.shape[1]):
            (g,) = torch.autograd.grad(flat[:, j].sum(), x, create_graph=create_graph, retain_graph=True)
            trace = trace + g.flatten(1)[:, j]
    return _reduce(trace + 0.5 * flat.pow(2).sum(1), reduction, x)


def random_projections(x: torch.Tensor, n: int, kind: str = "rademacher", *, generator=None) -> torch.Tensor:
    """n projection vectors per sample, shape (n, B, ...), with E[v v^T] = I: Rademacher (+-1, the
    lowest-variance choice for Hutchinson's estimator) or standard Gaussian."""
    if kind not in PROJECTIONS:
        raise ValueError(f"unknown projection {kind!r}; choose from {PROJECTIONS}")
    shape = (n, *x.shape)
    if kind == "gaussian":
        return torch.randn(shape, generator=generator, dtype=x.dtype, device=x.device)
    return torch.randint(0, 2, shape, generator=generator, device=x.device).to(x.dtype) * 2 - 1


def sliced_score_matching_loss(
    score_fn,
    x: torch.Tensor,
    *,
    v: torch.Tensor | None = None,
    n_projections: int = 1,
    projection: str = "rademacher",
    variance_reduction: bool = False,
    generator=None,
    create_graph: bool = True,
    reduction: str = "sum",
) -> torch.Tensor:
    """Sliced score matching (Song, Garg, Shi & Ermon 2019, Eq. 7), averaged over the projections v:

        SSM:    v^T grad_x s_theta(x) v + 1/2 (v^T s_theta(x))^2
        SSM-VR: v^T grad_x s_theta(x) v + 1/2 ||s_theta(x)||^2        (Eq. 8, ``variance_reduction``)

    v^T (grad_x s) v = v . grad_x (v . s) costs one backward pass per projection (Hutchinson's trace
    estimator, seed 003). Both are unbiased for the score matching loss of
    :func:`explicit_score_matching_loss`. ``v`` (n, B, ...) overrides the drawn projections."""
    if v is None:
        v = random_projections(x, n_projections, projection, generator=generator)
    x = x.detach().requires_grad_(True)
    with torch.enable_grad():
        s = score_fn(x)
        total = torch.zeros(x.shape[0], dtype=s.dtype, device=x.device)
        for vk in v:
            sv = _dot(s, vk)
            (g,) = torch.autograd.grad(sv.sum(), x, create_graph=create_graph, retain_graph=True)
            second = 0.5 * s.flatten(1).pow(2).sum(1) if variance_reduction else 0.5 * sv**2
            total = total + _dot(g, vk) + second
    return _reduce(total / v.shape[0], reduction, x)


def denoising_score_matching_loss(
    score_fn, x0: torch.Tensor, sigma, eps: torch.Tensor, *, reduction: str = "sum"
) -> torch.Tensor:
    """Denoising score matching for one noise level (Vincent 2011; NCSN Eq. 5; seed 003):

        l(theta; sigma) = 1/2 || s_theta(x~) - grad log q_sigma(x~ | x) ||^2 = 1/2 || s_theta(x~) + eps / sigma ||^2,

    x~ = x0 + sigma eps. Its expectation is the Fisher divergence to q_sigma plus a constant.
    ``score_fn(x~) -> (B, ...)``; ``sigma`` a float or (B,)."""
    sigma = torch.as_tensor(sigma, dtype=x0.dtype, device=x0.device)
    sigma_b = append_dims(sigma, x0.ndim) if sigma.ndim else sigma
    s = score_fn(x0 + sigma_b * eps)
    return _reduce(0.5 * (s + eps / sigma_b).flatten(1).pow(2).sum(1), reduction, x0)


def annealed_dsm_loss(
    score_fn,
    x0: torch.Tensor,
    sigma: torch.Tensor,
    eps: torch.Tensor,
    *,
    anneal_power: float = 2.0,
    reduction: str = "sum",
) -> torch.Tensor:
    """NCSN's per-sample objective (Song & Ermon 2019, Eq. 6) at the drawn levels ``sigma`` (B,):

        lambda(sigma) l(theta; sigma) = 1/2 || sigma s_theta(x~, sigma) + eps ||^2   for lambda = sigma^2,

    x~ = x0 + sigma eps; ``anneal_power`` p gives lambda = sigma^p. Averaged over sigma ~ U{sigma_i}
    it is (1/L) sum_i lambda(sigma_i) l(theta; sigma_i). ``score_fn(x~, sigma) -> (B, ...)``."""
    sigma_b = append_dims(sigma.to(x0.dtype), x0.ndim)
    s = score_fn(x0 + sigma_b * eps, sigma)
    loss = 0.5 * (sigma_b * s + eps).flatten(1).pow(2).sum(1)  # = sigma^2 l(theta; sigma), no 1/sigma
    if anneal_power != 2:
        loss = loss * sigma.to(loss.dtype) ** (anneal_power - 2)
    return _reduce(loss, reduction, x0)


class AnnealedDSMObjective(Objective):
    """NCSN's training objective for the Trainer: draw a level sigma ~ U{sigma_1..sigma_L} (or, with
    ``continuous``, log-uniform between them: score_sde's continuous VE training) and eps ~ N(0, I);
    the network is the score model s = net(c_in x, c_noise(sigma)) / sigma of
    :class:`~kuosan.diffusion.parameterization.ScoreDenoiser`, and the per-sample loss is
    :func:`annealed_dsm_loss` (lambda = sigma^2, mean over dimensions by default: with this score
    model it is 1/2 ||net(...) + eps||^2, DDPM's L_simple up to the factor 1/2 and the sign).

    ``objective(net, x0, generator) -> (B,)``; also ``draw(x0, generator)`` and ``loss(net, x0, **drawn)``
    (the random draw and the deterministic part, for data-parallel training)."""

    def __init__(
        self,
        sigmas: torch.Tensor,
        *,
        anneal_power: float = 2.0,
        continuous: bool = False,
        reduction: str = "mean",
        scale_input: bool = True,
    ):
        self.sigmas = torch.as_tensor(sigmas, dtype=torch.float64)
        self.anneal_power, self.continuous, self.reduction = anneal_power, continuous, reduction
        self.scale_input = scale_input

    def draw(self, x0: torch.Tensor, generator: torch.Generator | None = None) -> dict[str, torch.Tensor]:
        b = x0.shape[0]
        if self.continuous:
            lo, hi = self.sigmas.min().log(), self.sigmas.max().log()
            sigma = (lo + (hi - lo) * torch.rand(b, generator=generator, dtype=torch.float64)).exp()
        else:
            sigma = self.sigmas[torch.randint(self.sigmas.shape[0], (b,), generator=generator)]
        return {"sigma": sigma, "eps": torch.randn(x0.shape, generator=generator, dtype=x0.dtype)}

    def loss(self, net, x0: torch.Tensor, *, sigma: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
        model = ScoreDenoiser(net, scale_input=self.scale_input)
        return annealed_dsm_loss(model.score, x0, sigma, eps, anneal_power=self.anneal_power, reduction=self.reduction)

    def __call__(self, net, x0: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        return self.loss(net, x0, **self.draw(x0, generator))
