"""Adapters: a network that predicts eps, x0, v or the posterior mean exactly (built from the oracle)
becomes, through VPDenoiser, the oracle's Denoiser again."""

import pytest
import torch

from kuosan.diffusion import VPDenoiser
from kuosan.diffusion import gaussian as G
from kuosan.diffusion.schedules import DiscreteSchedule

F64 = torch.float64
SCH = DiscreteSchedule.from_name("cosine", 1000)


class ExactNet(torch.nn.Module):
    """net(x_t, t) predicting `kind` exactly, from the oracle's x0 at integer t."""

    def __init__(self, oracle, kind):
        super().__init__()
        self.oracle, self.kind = oracle, kind

    def forward(self, x_t, t):
        t = t.round().long()
        abar, abar_prev = SCH.abar[t], SCH.abar_prev[t]
        sigma = SCH.sigmas[t]
        x0 = self.oracle(x_t / abar.sqrt()[:, None], sigma)
        eps = G.eps_from_x0(x_t, x0, abar)
        return {
            "eps": eps,
            "x0": x0,
            "v": G.v_from_x0_eps(x0, eps, abar),
            "mean": G.q_posterior_mean_variance(x0, x_t, abar, abar_prev)[0],
        }[self.kind]


@pytest.mark.parametrize("kind", ["eps", "x0", "v", "mean"])
def test_adapter_recovers_the_oracle(mixture2d, kind):
    den = VPDenoiser(ExactNet(mixture2d, kind), SCH, kind)
    x = torch.randn(20, 2, dtype=F64) * 2
    t = torch.tensor([0, 1, 10, 400, 999] * 4)
    sigma = SCH.sigmas[t]
    x = x + sigma[:, None] * torch.randn(20, 2, dtype=F64)
    tol = 1e-6 if kind == "mean" else 1e-9
    assert torch.allclose(den(x, sigma), mixture2d(x, sigma), atol=tol, rtol=tol)


def test_adapter_feeds_the_network_vp_inputs_at_interpolated_t():
    seen = {}

    class Spy(torch.nn.Module):
        def forward(self, x_t, t):
            seen["x_t"], seen["t"] = x_t, t
            return torch.zeros_like(x_t)

    den = VPDenoiser(Spy(), SCH, "eps")
    sigma = SCH.t_to_sigma(torch.tensor([250.5], dtype=F64))
    x = torch.ones(1, 3, dtype=F64)
    assert torch.allclose(den(x, sigma), x)  # eps = 0 -> x0_hat = x
    assert torch.allclose(seen["t"], torch.tensor([250.5], dtype=F64))
    assert torch.allclose(seen["x_t"], x / (1 + sigma**2).sqrt())
    with pytest.raises(ValueError, match="unknown prediction"):
        VPDenoiser(Spy(), SCH, "score")
