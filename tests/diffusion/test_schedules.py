import math

import pytest
import torch
from diffusers import DDIMScheduler, DDPMScheduler

from kuosan.diffusion import schedules as S


def test_linear_betas_match_ddpm_paper_and_diffusers():
    betas = S.betas_linear()
    assert betas.dtype == torch.float64 and betas.shape == (1000,)
    assert betas[0] == 1e-4 and abs(float(betas[-1]) - 0.02) < 1e-15
    ref = DDPMScheduler(beta_schedule="linear").betas.double()
    assert torch.allclose(betas, ref, atol=1e-8)


def test_cosine_schedule_closed_form_and_diffusers():
    T = 1000
    betas = S.betas_cosine(T)
    assert float(betas.max()) <= 0.999
    abar = S.abar_from_betas(betas)
    # Away from the clipped end, abar_t equals f(t/T)/f(0) exactly (Nichol & Dhariwal Eq. 17).
    t = torch.arange(1, T + 1, dtype=torch.float64) / T
    f = torch.cos((t + 0.008) / 1.008 * math.pi / 2) ** 2 / math.cos(0.008 / 1.008 * math.pi / 2) ** 2
    assert torch.allclose(abar[:990], f[:990], rtol=1e-10)
    ref = DDPMScheduler(beta_schedule="squaredcos_cap_v2").betas.double()
    assert torch.allclose(betas, ref, atol=1e-6)


def test_sigmoid_and_scaled_linear_match_diffusers():
    for name, kw in [("sigmoid", {}), ("scaled_linear", dict(beta_start=0.00085, beta_end=0.012))]:
        ref = DDPMScheduler(beta_schedule=name, **kw).betas.double()
        assert torch.allclose(S.make_betas(name, 1000, **kw), ref, atol=1e-7), name
    with pytest.raises(ValueError, match="unknown beta schedule"):
        S.make_betas("nope")


def test_sigma_abar_snr_identities():
    abar = S.abar_from_betas(S.betas_linear())
    sigma = S.sigma_from_abar(abar)
    assert torch.allclose(S.abar_from_sigma(sigma), abar, rtol=1e-14)
    assert torch.allclose(S.snr_from_abar(abar), sigma**-2, rtol=1e-12)
    assert torch.all(sigma[1:] > sigma[:-1])


def test_sigma_t_interpolation_roundtrip():
    sch = S.DiscreteSchedule.from_name("cosine", 1000)
    ints = torch.arange(1000, dtype=torch.float64)
    assert torch.allclose(sch.sigma_to_t(sch.sigmas), ints, atol=1e-9)
    assert torch.allclose(sch.t_to_sigma(ints), sch.sigmas, rtol=1e-12)
    t = torch.tensor([0.25, 17.5, 998.9], dtype=torch.float64)
    assert torch.allclose(sch.sigma_to_t(sch.t_to_sigma(t)), t, atol=1e-9)
    # interpolation is linear in log-sigma between neighbours
    mid = sch.t_to_sigma(torch.tensor([17.5], dtype=torch.float64))
    assert torch.allclose(mid.log(), (sch.sigmas[17].log() + sch.sigmas[18].log()) / 2)


@pytest.mark.parametrize("spacing", ["leading", "linspace", "trailing"])
@pytest.mark.parametrize("n", [1, 7, 10, 50, 999, 1000])
def test_timestep_spacings_equal_diffusers(spacing, n):
    ref = DDIMScheduler(timestep_spacing=spacing)
    ref.set_timesteps(n)
    ours = S.timesteps_spaced(1000, n, spacing)
    assert ours.long().tolist() == ref.timesteps.tolist()


def test_grids_are_decreasing_and_end_in_zero():
    sch = S.DiscreteSchedule.from_name("linear")
    for grid in S.GRIDS:
        s = S.make_sigmas(sch, 12, grid)
        assert s.shape == (13,) and s[-1] == 0 and torch.all(s[:-1] > s[1:]), grid
    k = S.make_sigmas(sch, 12, "karras")
    assert math.isclose(k[0], sch.sigma_max) and math.isclose(k[-2], sch.sigma_min)
    e = S.make_sigmas(sch, 12, "exponential")[:-1].log()
    assert torch.allclose(e[1:] - e[:-1], (e[1] - e[0]).expand(11))
    with pytest.raises(ValueError, match="between 1 and T"):
        S.make_sigmas(sch, 1001, "trailing")
    with pytest.raises(ValueError, match="unknown sigma grid"):
        S.make_sigmas(sch, 10, "bogus")


def test_forward_chain_matches_closed_form_marginal():
    """Running q(x_t | x_{t-1}) t times gives q(x_t | x_0) = N(sqrt(abar_t) x0, 1 - abar_t) (Eq. 4)."""
    g = torch.Generator().manual_seed(0)
    betas = S.betas_cosine(20)
    x0 = 0.7
    x = torch.full((200_000,), x0, dtype=torch.float64)
    for b in betas:
        x = (1 - b).sqrt() * x + b.sqrt() * torch.randn(x.shape, generator=g, dtype=torch.float64)
    abar = S.abar_from_betas(betas)[-1]
    assert abs(float(x.mean()) - float(abar.sqrt()) * x0) < 5e-3
    assert abs(float(x.var()) - float(1 - abar)) < 5e-3
