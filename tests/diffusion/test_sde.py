"""Score SDEs: closed-form marginals, discretisations, reverse SDE / probability-flow drifts, and the
sampling equivalences with DDPM and NCSN."""

import pytest
import torch

from kuosan.diffusion import GaussianMixtureDenoiser, gaussian_denoiser
from kuosan.diffusion.schedules import DiscreteSchedule, make_sigmas, sigmas_exponential
from kuosan.diffusion.sde import VESDE, VPSDE, SubVPSDE, geometric_sigmas, schedule_from_sigmas, score_fn_from_denoiser
from kuosan.samplers import sample_ddpm
from kuosan.samplers.langevin import sample_pc, sample_sde_ode, sample_sde_pc

F64 = torch.float64
SDES = {"vp": VPSDE(), "subvp": SubVPSDE(), "ve": VESDE(0.01, 50.0)}


def _gen(seed):
    return torch.Generator().manual_seed(seed)


def test_vp_discretisation_is_ddpm_linear_schedule():
    sde, ddpm = VPSDE(), DiscreteSchedule.from_name("linear", 1000)
    assert torch.allclose(sde.discrete_betas, ddpm.betas, rtol=1e-14, atol=0)
    assert torch.allclose(sde.discrete_schedule().abar, ddpm.abar, rtol=1e-12)
    # the continuous marginal at t_i = (i + 1) / N tracks DDPM's abar_i (Song et al. 2021, App. B):
    # log abar_i = sum log(1 - beta_j) = -sum beta_j - sum beta_j^2 / 2 - ... ~ -B(t_i) - 0.07 at the end
    t = (torch.arange(1000, dtype=F64) + 1) / 1000
    assert (2 * sde.scale(t).log() - ddpm.abar.log()).abs().max() < 0.07
    # forward step x_{i+1} = sqrt(1 - beta_i) x_i + sqrt(beta_i) z
    x = torch.randn(5, 3, dtype=F64)
    for i in [0, 500, 999]:
        f, G = sde.discretize(x, torch.full((5,), i / 999, dtype=F64))
        assert torch.allclose(x + f, (1 - ddpm.betas[i]).sqrt() * x) and torch.allclose(G**2, ddpm.betas[i].expand(5))


def test_ve_noise_levels_are_ncsn_geometric_sigmas():
    """VE-SDE levels = NCSN's geometric sigmas: the discretisation's table, the continuous marginal
    std at t_i = i / (N - 1), the discrete schedule built from them and the exponential grid."""
    L, smin, smax = 25, 0.01, 10.0
    ncsn = geometric_sigmas(L, smin, smax)
    ratios = ncsn[:-1] / ncsn[1:]
    assert torch.allclose(ratios, ratios[0].expand(L - 1), rtol=1e-12) and ncsn[0] == pytest.approx(smax)
    sde = VESDE(smin, smax, L)
    assert torch.allclose(sde.discrete_sigmas.flip(0), ncsn, rtol=1e-13)
    assert torch.allclose(sde.marginal_prob(torch.zeros(L, 1), torch.linspace(1, 0, L, dtype=F64))[1], ncsn, rtol=1e-12)
    assert torch.allclose(make_sigmas(sde.discrete_schedule(), L, "trailing")[:-1], ncsn, rtol=1e-10)
    assert torch.allclose(sigmas_exponential(L, smin, smax)[:-1], ncsn, rtol=1e-13)
    # NCSN's chain: the per-step variances telescope to sigma_i^2
    G2 = torch.stack([sde.discretize(torch.zeros(1, 1), i / (L - 1))[1][0] ** 2 for i in range(L)])
    assert torch.allclose(G2.cumsum(0), sde.discrete_sigmas**2, rtol=1e-12)
    with pytest.raises(ValueError, match="increasing"):
        schedule_from_sigmas(ncsn)


@pytest.mark.parametrize("name", list(SDES))
def test_marginals_solve_the_moment_equations(name):
    """For dx = a(t) x dt + g(t) dw the mean coefficient obeys s' = a s and the variance
    v' = 2 a v + g^2 (Saerkkae & Solin 2019, Eq. 5.51): the closed forms of marginal_prob satisfy both."""
    sde = SDES[name]
    t = torch.tensor([0.05, 0.3, 0.6, 0.95], dtype=F64)
    h = 1e-6
    ones = torch.ones(4, 1, dtype=F64)
    a = sde.sde(ones, t)[0][:, 0]  # drift of x = 1 is a(t)
    g = sde.sde(ones, t)[1]
    mean = lambda u: sde.marginal_prob(ones, u)[0][:, 0]  # noqa: E731
    var = lambda u: sde.marginal_prob(ones, u)[1] ** 2  # noqa: E731
    assert torch.allclose((mean(t + h) - mean(t - h)) / (2 * h), a * mean(t), rtol=1e-6, atol=1e-8)
    assert torch.allclose((var(t + h) - var(t - h)) / (2 * h), 2 * a * var(t) + g**2, rtol=1e-5)
    # the contract map: x(t) / s(t) has noise level sigma(t), and t_from_sigma inverts it
    assert torch.allclose(sde.marginal_prob(ones, t)[1], sde.scale(t) * sde.sigma(t))
    assert torch.allclose(sde.t_from_sigma(sde.sigma(t)), t, atol=1e-10)


@pytest.mark.parametrize("name", list(SDES))
def test_prior_sampling_and_log_density(name):
    sde = SDES[name]
    z = sde.prior_sampling((20000, 3), generator=_gen(0), dtype=F64)
    assert z.std().item() == pytest.approx(sde.prior_std, rel=0.02)
    ref = torch.distributions.Normal(0.0, sde.prior_std).log_prob(z[:50]).sum(1)
    assert torch.allclose(sde.prior_logp(z[:50]), ref, atol=1e-10)
    # the VP / sub-VP prior N(0, I) is the marginal at T up to e^{-B(1)}
    assert (sde.marginal_prob(torch.ones(1, 1), 1.0)[1] / sde.prior_std).item() == pytest.approx(1.0, abs=0.01)


@pytest.mark.parametrize("name", list(SDES))
def test_probability_flow_is_edm_ode_and_reverse_sde_doubles_the_score_term(name):
    """Probability-flow drift f - g^2 s / 2 (Song et al. 2021, Eq. 13) equals Karras et al. 2022,
    Eq. 4, dx/dt = (s'/s) x - s^2 sigma' sigma grad log p(x / s; sigma), with s(t), sigma(t) of the
    contract map; the reverse SDE's drift is f - g^2 s (Eq. 6)."""
    sde, oracle = (
        SDES[name],
        GaussianMixtureDenoiser(torch.tensor([0.3, 0.7]), torch.tensor([[-1.0], [2.0]]), torch.tensor([[0.2], [0.5]])),
    )
    score_fn = score_fn_from_denoiser(sde, oracle)
    x = torch.randn(6, 1, generator=_gen(1), dtype=F64) * 2
    t = torch.tensor([0.02, 0.1, 0.3, 0.5, 0.7, 0.99], dtype=F64)
    h = 1e-6
    s, sig = sde.scale(t), sde.sigma(t)
    ds = (sde.scale(t + h) - sde.scale(t - h)) / (2 * h)
    dsig = (sde.sigma(t + h) - sde.sigma(t - h)) / (2 * h)
    score_ve = (oracle(x / s[:, None], sig) - x / s[:, None]) / sig[:, None] ** 2
    edm = (ds / s)[:, None] * x - (s * dsig * sig)[:, None] * score_ve
    pf_drift, pf_diff = sde.reverse(score_fn, probability_flow=True).sde(x, t)
    assert torch.allclose(pf_drift, edm, rtol=1e-5, atol=1e-6) and torch.all(pf_diff == 0)
    f, g = sde.sde(x, t)
    rev_drift, rev_diff = sde.reverse(score_fn).sde(x, t)
    assert torch.allclose(rev_drift, 2 * pf_drift - f) and torch.equal(rev_diff, g)


@pytest.mark.parametrize("N", [1000, 100])
def test_vp_ancestral_predictor_is_ddpm_sampling(mixture2d, N):
    """score_sde's ancestral predictor on the VP SDE (Eq. 47) over its N steps is DDPM's Algorithm 2
    with sigma_t^2 = beta_t: equal to kuosan's sample_ddpm(variance="large") on the DDPM grid of the
    discretisation (linear betas 1e-4 .. 0.02 for N = 1000), noise for noise; the last step returns
    the mean, which is x0_hat."""
    sde = VPSDE(N=N)
    ddpm = sde.discrete_schedule()
    x_T = torch.randn(64, 2, generator=_gen(2), dtype=F64)
    ours = sample_sde_pc(
        sde,
        score_fn_from_denoiser(sde, mixture2d, discrete=True),
        x_T,
        predictor="ancestral",
        corrector="none",
        generator=_gen(3),
    )
    ref = sample_ddpm(
        mixture2d, x_T * (1 + ddpm.sigma_max**2) ** 0.5, make_sigmas(ddpm, N), variance="large", generator=_gen(3)
    )
    assert torch.allclose(ours, ref, atol=1e-9), (ours - ref).abs().max()


def test_vp_reverse_diffusion_predictor_is_ddpm_to_first_order(mixture2d):
    """The reverse-diffusion predictor of the VP SDE, x + (1 - sqrt(1 - beta)) x + beta s + sqrt(beta) z
    (Eq. 46), is DDPM's step (x + beta s) / sqrt(1 - beta) + sqrt(beta) z to first order in beta:
    their means differ by -beta^2 (x / 4 + s / 2) + O(beta^3) with the same noise, and a whole
    1000-step run with shared noise ends at nearly the same samples."""
    sde = VPSDE()
    score_fn = score_fn_from_denoiser(sde, mixture2d, discrete=True)
    x = torch.randn(64, 2, generator=_gen(4), dtype=F64) * 2
    for i in [0, 300, 999]:
        t = torch.full((64,), i / 999, dtype=F64)
        beta, s = sde.discrete_betas[i], score_fn(x, t)
        f, G = sde.reverse(score_fn).discretize(x, t)
        ddpm_mean = (x + beta * s) / (1 - beta).sqrt()
        assert torch.allclose(G, beta.sqrt().expand(64))
        diff = (x - f) - ddpm_mean
        assert torch.all((diff + beta**2 * (x / 4 + s / 2)).abs() <= beta**3 * (x.abs() + s.abs()))
    assert diff.abs().max() > 1e-5  # at beta = 0.02 the steps differ: they agree to first order only
    x_T = torch.randn(64, 2, generator=_gen(5), dtype=F64)
    rd = sample_sde_pc(sde, score_fn, x_T, predictor="reverse-diffusion", corrector="none", generator=_gen(6))
    anc = sample_sde_pc(sde, score_fn, x_T, predictor="ancestral", corrector="none", generator=_gen(6))
    assert (rd - anc).abs().median() < 0.01


@pytest.mark.parametrize("predictor", ["reverse-diffusion", "ancestral"])
@pytest.mark.parametrize("corrector", ["none", "langevin"])
def test_ve_sde_pc_equals_contract_pc_on_ncsn_levels(mixture2d, predictor, corrector):
    """score_sde's PC sampler on the VE SDE with N levels (discrete score) and kuosan's contract-level
    sample_pc on the same geometric grid give the same numbers, noise for noise. (score_sde's "ald"
    corrector takes the continuous marginal std sigma(t_k), t_k = linspace(1, eps, N), where the
    contract takes the level sigma_k itself, so it differs by O(eps).)"""
    sde = VESDE(0.01, 10.0, 30)
    x = sde.prior_sampling((64, 2), generator=_gen(7), dtype=F64)
    ours = sample_pc(
        mixture2d,
        x,
        torch.cat([geometric_sigmas(30, 0.01, 10.0), torch.zeros(1, dtype=F64)]),
        predictor=predictor,
        corrector=corrector,
        generator=_gen(8),
    )
    ref = sample_sde_pc(
        sde,
        score_fn_from_denoiser(sde, mixture2d, discrete=True),
        x,
        predictor=predictor,
        corrector=corrector,
        eps=1e-5,
        generator=_gen(8),
    )
    assert torch.allclose(ours, ref, atol=1e-10), (ours - ref).abs().max()


@pytest.mark.parametrize("name", list(SDES))
def test_ode_sampler_is_the_exact_gaussian_flow(name):
    """For Gaussian data N(m, c^2) the probability-flow ODE is the affine map
    x(t)/s(t) = m + sqrt((c^2 + sigma(t)^2) / (c^2 + sigma(T)^2)) (x(T)/s(T) - m); the adaptive RK45
    sampler reproduces it point by point."""
    sde = SDES[name]
    m, c = torch.tensor([0.5, -1.0], dtype=F64), 0.3
    oracle = gaussian_denoiser(m, c**2 * torch.eye(2, dtype=F64))
    x_T = torch.randn(200, 2, generator=_gen(9), dtype=F64) * 3
    out, nfe = sample_sde_ode(sde, score_fn_from_denoiser(sde, oracle), x_T, rtol=1e-7, atol=1e-7)
    s1, sig1 = sde.scale(1.0), sde.sigma(1.0)
    se, sige = sde.scale(1e-3), sde.sigma(1e-3)
    want = se * (m + ((c**2 + sige**2) / (c**2 + sig1**2)).sqrt() * (x_T / s1 - m))
    assert torch.allclose(out, want, atol=2e-4), (out - want).abs().max()
    assert 7 <= nfe < 2000


@pytest.mark.parametrize("name", list(SDES))
def test_sde_samplers_reproduce_the_mixture(mixture2d, name):
    """From the prior, the PC sampler (reverse diffusion + Langevin, N = 100) and the ODE sampler
    driven by the exact score reproduce the mixture's mean, covariance and component weights."""
    n = 2000
    sde = {"vp": VPSDE(N=100), "subvp": SubVPSDE(N=100), "ve": VESDE(0.01, 50.0, N=100)}[name]
    score_fn = score_fn_from_denoiser(sde, mixture2d)
    x = sde.prior_sampling((n, 2), generator=_gen(10), dtype=F64)
    ode, _ = sample_sde_ode(sde, score_fn, x, rtol=1e-4, atol=1e-4)
    pc = sample_sde_pc(sde, score_fn, x, snr=0.16 if name == "ve" else 0.01, generator=_gen(11))
    se = (mixture2d.covariance.diagonal() / n).sqrt()
    for out in (ode, pc):
        assert torch.all((out.mean(0) - mixture2d.mean).abs() < 4 * se), out.mean(0)
        assert torch.allclose(torch.cov(out.T), mixture2d.covariance, atol=0.25)
        share = torch.bincount(torch.cdist(out, mixture2d.means).argmin(1), minlength=3).double() / n
        assert torch.allclose(share, mixture2d.log_w.exp(), atol=0.035), share
