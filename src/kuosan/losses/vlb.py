r"""Training for likelihood: the variational bound as a loss, improved DDPM's hybrid objective with a
learned variance, and importance sampling of timesteps (Nichol & Dhariwal 2021, Secs. 3.1-3.3).

- ``loss="vlb"``: the per-sample Monte-Carlo estimate of the bound without its constant prior term,
  :math:`L_{vlb} \approx T \cdot L_t / (T p_t)` in bits/dim (DDPM Eq. 5), for t ~ p_t; it trains the
  mean (and, with ``learn_sigma``, the variance).
- ``loss="hybrid"``: :math:`L_{hybrid} = L_{simple} + \lambda L_{vlb}` (Eq. 16, lambda = 0.001), where
  the L_vlb term sees the mean with its gradient stopped, so it trains only the learned variance
  (improved-diffusion's ``frozen_out``). With T = 1000 this is improved-diffusion's RESCALED_MSE loss
  ``mse + vb * T / 1000``.
- ``loss="simple"``: L_simple alone (for dequantized or importance-sampled training).

Timestep samplers: "uniform", or "loss-second-moment" (Eq. 18): p_t proportional to
sqrt(E[L_t^2]) over the last 10 losses seen at t, mixed with 0.001 of the uniform distribution, and
uniform until every t has its 10 losses; each sample's loss is weighted by 1 / (T p_t) so the
objective's expectation is unchanged (improved-diffusion's ``LossSecondMomentResampler``).

``dequantize_bin_width``: uniform dequantization y = x_0 + (u - 1/2) w of each training image within
its bin (digits: w = 2/16); the model is then a continuous density of y, trained with the bound
of -log p(y) (Gaussian decoder L_0 on y) that ``diffusion.likelihood.vlb_bpd(..., dequantized=True)``
evaluates. This makes the model's density at small noise smooth within bins, as the PF-ODE
likelihood on dequantized data requires (docs/evaluation.md).

Limitations: the loss history of "loss-second-moment" lives in the objective, not in checkpoints, so
a resumed run warms up again (exact resume holds for the uniform sampler only). Under torchrun the
history is updated with the losses of all processes (all-gather), so every process draws alike.
"""

from __future__ import annotations

import torch

from kuosan.diffusion import gaussian as G
from kuosan.diffusion.likelihood import vlb_term_bpd
from kuosan.diffusion.parameterization import reverse_log_variance
from kuosan.diffusion.schedules import DiscreteSchedule
from kuosan.losses.diffusion import diffusion_target, l_simple
from kuosan.losses.objective import Objective

LOSSES = ("simple", "hybrid", "vlb")
TIMESTEP_SAMPLERS = ("uniform", "loss-second-moment")
F64 = torch.float64


class LossSecondMomentSampler:
    r"""Importance sampler of timesteps (Nichol & Dhariwal 2021, Eq. 18):
    :math:`p_t \propto \sqrt{\mathbb E[L_t^2]}` over a history of ``history`` losses per t, mixed as
    (1 - ``uniform_prob``) p + ``uniform_prob`` / T; uniform until warmed up."""

    def __init__(self, T: int, *, history: int = 10, uniform_prob: float = 0.001):
        self.T, self.history, self.uniform_prob = T, history, uniform_prob
        self.losses = torch.zeros(T, history, dtype=F64)
        self.counts = torch.zeros(T, dtype=torch.long)

    @property
    def warmed_up(self) -> bool:
        return bool((self.counts == self.history).all())

    def probs(self) -> torch.Tensor:
        """p_t, (T,) float64, summing to 1."""
        if not self.warmed_up:
            return torch.full((self.T,), 1.0 / self.T, dtype=F64)
        w = self.losses.pow(2).mean(1).sqrt()
        w = w / w.sum()
        return w * (1 - self.uniform_prob) + self.uniform_prob / self.T

    def sample(self, n: int, *, generator: torch.Generator | None = None):
        """(t (n,) long, weights (n,) = 1 / (T p_t)), the weights keep the objective unbiased."""
        p = self.probs()
        t = torch.multinomial(p, n, replacement=True, generator=generator)
        return t, 1.0 / (self.T * p[t])

    def update(self, t: torch.Tensor, losses: torch.Tensor) -> None:
        """Push each (t, loss) into t's history (the oldest loss leaves a full history)."""
        for ti, li in zip(t.tolist(), losses.detach().to(F64).tolist()):
            c = int(self.counts[ti])
            if c == self.history:
                self.losses[ti] = torch.roll(self.losses[ti], -1)
                self.losses[ti, -1] = li
            else:
                self.losses[ti, c] = li
                self.counts[ti] += 1


def _all_gather_cat(x: torch.Tensor) -> torch.Tensor:
    """Concatenate x from every process (identity without torch.distributed)."""
    if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
        return x
    parts = [torch.empty_like(x) for _ in range(torch.distributed.get_world_size())]
    torch.distributed.all_gather(parts, x.contiguous())
    return torch.cat(parts)


class VLBObjective(Objective):
    """The likelihood-aware training objective (module doc) on a discrete VP schedule, per sample (B,).

    ``draw`` gives t (from the timestep sampler), eps, the importance weight and, with
    ``dequantize_bin_width``, the dequantization noise u; ``loss`` evaluates the network (which
    outputs 2x channels, prediction then variance, when ``learn_sigma``).
    ``bin_width`` is the data's grid for the decoder L_0 (None: continuous data, Gaussian density).
    """

    def __init__(
        self,
        schedule: DiscreteSchedule,
        *,
        prediction: str = "eps",
        loss: str = "hybrid",
        learn_sigma: bool = True,
        vlb_weight: float = 0.001,
        timestep_sampler: str = "uniform",
        bin_width: float | None = 2.0 / 255,
        dequantize_bin_width: float | None = None,
    ):
        if loss not in LOSSES:
            raise ValueError(f"unknown loss {loss!r}; choose from {LOSSES}")
        if timestep_sampler not in TIMESTEP_SAMPLERS:
            raise ValueError(f"unknown timestep sampler {timestep_sampler!r}; choose from {TIMESTEP_SAMPLERS}")
        if loss == "hybrid" and not learn_sigma:
            raise ValueError("the hybrid loss trains a learned variance: it needs learn_sigma")
        self.schedule, self.prediction, self.loss_type = schedule, prediction, loss
        self.learn_sigma, self.vlb_weight, self.bin_width = learn_sigma, vlb_weight, bin_width
        self.dequantize_bin_width = dequantize_bin_width
        self.abar = schedule.abar
        self.sampler = LossSecondMomentSampler(schedule.T) if timestep_sampler == "loss-second-moment" else None

    def draw(self, x0: torch.Tensor, generator: torch.Generator | None = None) -> dict[str, torch.Tensor]:
        b = x0.shape[0]
        if self.sampler is None:
            t, w = torch.randint(self.schedule.T, (b,), generator=generator), torch.ones(b, dtype=F64)
        else:
            t, w = self.sampler.sample(b, generator=generator)
        drawn = {"t": t, "eps": torch.randn(x0.shape, generator=generator, dtype=x0.dtype), "weight": w}
        if self.dequantize_bin_width is not None:
            drawn["u"] = torch.rand(x0.shape, generator=generator, dtype=x0.dtype)
        return drawn

    def _x0_hat(self, out: torch.Tensor, x_t: torch.Tensor, abar: torch.Tensor) -> torch.Tensor:
        if self.prediction == "eps":
            return G.x0_from_eps(x_t, out, abar)
        if self.prediction == "x0":
            return out
        if self.prediction == "v":
            return G.x0_from_v(x_t, out, abar)
        raise ValueError(f"unknown prediction {self.prediction!r}")

    def vlb_bpd(
        self, out: torch.Tensor, v: torch.Tensor | None, y: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor
    ) -> torch.Tensor:
        """L_t in bits/dim (B,) of the network output at x_t ~ q(x_t | y), y the (possibly dequantized)
        data: the KL to the posterior given y for t > 0, the decoder at t = 0: discretized on y's bin,
        or, when training on dequantized y, a Gaussian density of y
        (:func:`~kuosan.diffusion.likelihood.vlb_term_bpd`)."""
        abar = self.abar[t]
        x0_hat = self._x0_hat(out.to(F64), x_t.to(F64), abar)
        kind = "learned_range" if self.learn_sigma else "fixed_small"
        logvar = reverse_log_variance(self.schedule, t, kind, v)
        bin_width = None if self.dequantize_bin_width is not None else self.bin_width
        return vlb_term_bpd(y, x_t, x0_hat, t, self.schedule, log_variance=logvar, bin_width=bin_width)

    def loss(
        self,
        net,
        x0: torch.Tensor,
        *,
        t: torch.Tensor,
        eps: torch.Tensor,
        weight: torch.Tensor,
        u: torch.Tensor | None = None,
    ) -> torch.Tensor:
        y = x0 if u is None else x0 + (u - 0.5) * self.dequantize_bin_width
        abar = self.abar[t]
        x_t = G.q_sample(y, abar, eps)
        out = net(x_t, t.to(x0.dtype)).float()
        v = None
        if self.learn_sigma:
            out, v = out.chunk(2, dim=1)
        terms = torch.zeros(x0.shape[0], dtype=F64, device=x0.device)
        if self.loss_type in ("simple", "hybrid"):
            terms = terms + l_simple(out, diffusion_target(self.prediction, y, eps, abar).float()).to(F64)
        if self.loss_type == "hybrid":
            vb = self.vlb_bpd(out.detach(), v, y, x_t, t)
            terms = terms + self.vlb_weight * self.schedule.T * vb
        elif self.loss_type == "vlb":
            terms = terms + self.schedule.T * self.vlb_bpd(out, v, y, x_t, t)
        if self.sampler is not None:
            self.sampler.update(_all_gather_cat(t), _all_gather_cat(terms.detach()))
        return (terms * weight.to(F64)).float()


__all__ = ["LOSSES", "TIMESTEP_SAMPLERS", "LossSecondMomentSampler", "VLBObjective"]
