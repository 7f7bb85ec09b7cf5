import pytest
import torch

from kuosan.diffusion import gaussian as G
from kuosan.diffusion.schedules import DiscreteSchedule
from kuosan.losses import diffusion_loss, diffusion_target, l_simple, min_snr_weight

F64 = torch.float64
SCH = DiscreteSchedule.from_name("linear", 1000)


class Perfect(torch.nn.Module):
    """Returns the exact target for the batch it was built for (the loss's minimiser)."""

    def __init__(self, target):
        super().__init__()
        self.target = target

    def forward(self, x_t, t):
        return self.target


@pytest.mark.parametrize("prediction", ["eps", "x0", "v"])
def test_loss_is_zero_at_the_true_target_and_per_sample(prediction):
    g = torch.Generator().manual_seed(0)
    x0 = torch.randn(5, 1, 4, 4, generator=g, dtype=F64)
    eps = torch.randn(5, 1, 4, 4, generator=g, dtype=F64)
    t = torch.tensor([0, 5, 100, 500, 999])
    target = diffusion_target(prediction, x0, eps, SCH.abar[t])
    loss = diffusion_loss(Perfect(target), x0, t, SCH.abar[t], eps, prediction=prediction)
    assert loss.shape == (5,) and torch.allclose(loss, torch.zeros(5, dtype=torch.float32))
    wrong = diffusion_loss(Perfect(target + 0.5), x0, t, SCH.abar[t], eps, prediction=prediction)
    assert torch.allclose(wrong, torch.full((5,), 0.25))


def test_v_target_is_consistent_with_eps_and_x0():
    x0, eps = torch.randn(3, 2, dtype=F64), torch.randn(3, 2, dtype=F64)
    abar = SCH.abar[torch.tensor([10, 300, 900])]
    x_t = G.q_sample(x0, abar, eps)
    v = diffusion_target("v", x0, eps, abar)
    assert torch.allclose(G.x0_from_v(x_t, v, abar), x0) and torch.allclose(G.eps_from_v(x_t, v, abar), eps)


def test_min_snr_weights():
    abar = SCH.abar[torch.tensor([0, 500, 999])]
    snr = abar / (1 - abar)
    gamma = 5.0
    assert torch.allclose(min_snr_weight(abar, "x0", gamma), snr.clamp(max=gamma))
    assert torch.allclose(min_snr_weight(abar, "eps", gamma), snr.clamp(max=gamma) / snr)
    assert torch.allclose(min_snr_weight(abar, "v", gamma), snr.clamp(max=gamma) / (snr + 1))
    # eps weights are 1 where SNR <= gamma (noisy steps) and gamma/SNR below that
    w = min_snr_weight(abar, "eps", gamma)
    assert w[2] == 1 and w[0] < 1e-3


def test_weighted_loss_and_errors():
    x0, eps = torch.zeros(2, 3), torch.ones(2, 3)
    t = torch.tensor([0, 999])
    out = diffusion_loss(Perfect(torch.zeros(2, 3)), x0, t, SCH.abar[t], eps, weighting="min_snr")
    assert torch.allclose(out, min_snr_weight(SCH.abar[t], "eps").float())
    with pytest.raises(ValueError):
        diffusion_loss(Perfect(x0), x0, t, SCH.abar[t], eps, weighting="p2")
    assert torch.allclose(l_simple(torch.ones(2, 3), torch.zeros(2, 3)), torch.ones(2))
