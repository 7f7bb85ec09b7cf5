import pytest
import torch
from diffusers import DDIMScheduler, DDPMScheduler

from kuosan.diffusion import ClampDenoiser, EpsFromDenoiser, VPDenoiser
from kuosan.diffusion import gaussian as G
from kuosan.diffusion.schedules import DiscreteSchedule, make_sigmas, timesteps_spaced
from kuosan.samplers import SAMPLERS, sample_ddim, sample_ddpm
from kuosan.samplers.literal import sample_ddim_literal, sample_ddpm_literal

F64 = torch.float64
SCH = DiscreteSchedule.from_name("linear", 1000)


def _gen(seed):
    return torch.Generator().manual_seed(seed)


def _float64_tables(sched):
    """diffusers keeps its tables in float32; give it our float64 ones so the comparison is of the
    math, not of the precision."""
    sched.betas = SCH.betas.clone()
    sched.alphas = 1 - sched.betas
    sched.alphas_cumprod = SCH.abar.clone()
    return sched


def _vp_start(n, seed):
    """x_T ~ N(0, I) in VP scaling, and the same point in VE scaling: x = x_T / sqrt(abar_T)."""
    x_T = torch.randn(n, 2, generator=_gen(seed), dtype=F64)
    return x_T, x_T * (1 + SCH.sigma_max**2) ** 0.5


def test_add_noise_matches_diffusers():
    ref = _float64_tables(DDPMScheduler())
    x0, eps = torch.randn(6, 3, 4, 4, dtype=F64), torch.randn(6, 3, 4, 4, dtype=F64)
    t = torch.tensor([0, 1, 10, 500, 998, 999])
    assert torch.allclose(G.q_sample(x0, SCH.abar[t], eps), ref.add_noise(x0, eps, t), atol=1e-13)


@pytest.mark.parametrize("variance", ["small", "large"])
def test_ddpm_full_loop_matches_diffusers(mixture2d, variance):
    """1000 steps of DDPM (Algorithm 2) on the oracle's eps-model: kuosan's sigma-space sampler on
    the Denoiser contract equals diffusers' DDPMScheduler loop, noise for noise."""
    eps_model = EpsFromDenoiser(mixture2d, SCH)
    ref = _float64_tables(DDPMScheduler(clip_sample=False, variance_type=f"fixed_{variance}"))
    ref.set_timesteps(1000)
    x_T, x = _vp_start(64, 0)
    g = _gen(1)
    y = x_T
    for t in ref.timesteps:
        y = ref.step(eps_model(y, t), t, y, generator=g).prev_sample
    ours = sample_ddpm(
        VPDenoiser(eps_model, SCH, "eps"), x, make_sigmas(SCH, 1000), variance=variance, generator=_gen(1)
    )
    assert torch.allclose(ours, y, atol=1e-9), (ours - y).abs().max()


def test_ddpm_single_step_literal_matches_diffusers(mixture2d):
    """One step of Algorithm 2 in the alpha/beta form equals diffusers' DDPMScheduler.step."""
    from kuosan.samplers.literal import ddpm_step

    eps_model = EpsFromDenoiser(mixture2d, SCH)
    ref = _float64_tables(DDPMScheduler(clip_sample=False))
    ref.set_timesteps(1000)
    for t in [999, 500, 1]:
        x_t = torch.randn(16, 2, dtype=F64)
        want = ref.step(eps_model(x_t, t), t, x_t, generator=_gen(2)).prev_sample
        z = torch.randn(x_t.shape, generator=_gen(2), dtype=F64)
        got = ddpm_step(eps_model(x_t, t), x_t, float(SCH.abar[t]), float(SCH.abar[t - 1]), z)
        assert torch.allclose(got, want, atol=1e-12)


@pytest.mark.parametrize("spacing", ["leading", "trailing"])
@pytest.mark.parametrize("eta", [0.0, 0.7])
def test_ddim_full_loop_matches_diffusers(mixture2d, spacing, eta):
    eps_model = EpsFromDenoiser(mixture2d, SCH)
    ref = _float64_tables(DDIMScheduler(clip_sample=False, timestep_spacing=spacing, set_alpha_to_one=True))
    ref.set_timesteps(50)
    ts = timesteps_spaced(1000, 50, spacing)
    abar0 = SCH.abar[int(ts[0])]
    x_T = torch.randn(64, 2, generator=_gen(3), dtype=F64)
    g = _gen(4)
    y = x_T
    for t in ref.timesteps:
        y = ref.step(eps_model(y, t), t, y, eta=eta, generator=g).prev_sample
    ours = sample_ddim(
        VPDenoiser(eps_model, SCH), x_T / abar0.sqrt(), make_sigmas(SCH, 50, spacing), eta=eta, generator=_gen(4)
    )
    assert torch.allclose(ours, y, atol=1e-9), (ours - y).abs().max()


@pytest.mark.parametrize("variance", ["small", "large"])
@pytest.mark.parametrize("clip", [False, True])
def test_literal_ddpm_equals_sigma_space_respaced(mixture2d, variance, clip):
    """The alpha/beta form (Algorithm 2, respaced) and the sigma-space sampler agree."""
    eps_model = EpsFromDenoiser(mixture2d, SCH)
    ts = timesteps_spaced(1000, 25, "trailing")
    abar0 = SCH.abar[int(ts[0])]
    x_T = torch.randn(32, 2, generator=_gen(5), dtype=F64)
    lit = sample_ddpm_literal(eps_model, x_T, SCH, ts, variance=variance, clip=clip, generator=_gen(6))
    den = VPDenoiser(eps_model, SCH)
    den = ClampDenoiser(den) if clip else den
    ours = sample_ddpm(den, x_T / abar0.sqrt(), make_sigmas(SCH, 25, "trailing"), variance=variance, generator=_gen(6))
    assert torch.allclose(lit, ours, atol=1e-9)


@pytest.mark.parametrize("eta", [0.0, 1.0])
def test_literal_ddim_equals_sigma_space(mixture2d, eta):
    eps_model = EpsFromDenoiser(mixture2d, SCH)
    ts = timesteps_spaced(1000, 10, "linspace")
    x_T = torch.randn(32, 2, generator=_gen(7), dtype=F64)
    lit = sample_ddim_literal(eps_model, x_T, SCH, ts, eta=eta, generator=_gen(8))
    ours = sample_ddim(
        VPDenoiser(eps_model, SCH),
        x_T / SCH.abar[int(ts[0])].sqrt(),
        make_sigmas(SCH, 10, "linspace"),
        eta=eta,
        generator=_gen(8),
    )
    assert torch.allclose(lit, ours, atol=1e-9)


def _moments_match(x, oracle, n):
    mean, cov = oracle.mean, oracle.covariance
    se = (cov.diagonal() / n).sqrt()
    assert torch.all((x.mean(0) - mean).abs() < 4 * se), (x.mean(0), mean)
    assert torch.allclose(torch.cov(x.T), cov, atol=0.12), (torch.cov(x.T), cov)


@pytest.mark.parametrize("name,steps", [("ddpm", 1000), ("ddim", 50), ("heun", 25), ("dpmpp-2m", 25)])
def test_oracle_samplers_reproduce_mixture_moments(mixture2d, name, steps):
    """Driven by the exact denoiser, samplers reproduce the mixture's mean and covariance."""
    n = 4000
    x = torch.randn(n, 2, generator=_gen(9), dtype=F64) * (1 + SCH.sigma_max**2) ** 0.5
    out = SAMPLERS[name](mixture2d, x, make_sigmas(SCH, steps, "trailing"), generator=_gen(10))
    _moments_match(out, mixture2d, n)
    # and the per-component weights: assign each sample to the nearest mean
    k = torch.cdist(out, mixture2d.means).argmin(1)
    share = torch.bincount(k, minlength=3).double() / n
    assert torch.allclose(share, mixture2d.log_w.exp(), atol=0.03), share


@pytest.mark.parametrize("name", list(SAMPLERS))
def test_sampler_contract(mixture2d, name):
    """Every sampler: shape kept, same generator -> same samples, the callback sees every step, each
    step's x0_hat comes from the denoiser at that sigma, wrappers pass through, bad grids refused."""
    fn = SAMPLERS[name]
    sigmas = make_sigmas(SCH, 8, "karras")
    x = torch.randn(16, 2, generator=_gen(11), dtype=F64) * float(sigmas[0])
    seen = []
    a = fn(mixture2d, x, sigmas, generator=_gen(12), callback=lambda d: seen.append(d["sigma_next"]))
    b = fn(mixture2d, x, sigmas, generator=_gen(12))
    assert a.shape == x.shape and torch.equal(a, b)
    assert seen[-1] == 0 and len(seen) == 8
    clamped = fn(ClampDenoiser(mixture2d, -0.1, 0.1), x, sigmas, generator=_gen(12))
    assert clamped.abs().max() <= 0.1 + 1e-9  # the last step lands on x0_hat, which is clamped
    with pytest.raises(ValueError, match="decreasing"):
        fn(mixture2d, x, sigmas.flip(0), generator=_gen(12))


def test_ddim_eta0_is_deterministic_and_eta1_is_not(mixture2d):
    sigmas = make_sigmas(SCH, 20, "trailing")
    x = torch.randn(32, 2, generator=_gen(13), dtype=F64) * float(sigmas[0])
    assert torch.equal(
        sample_ddim(mixture2d, x, sigmas, generator=_gen(1)), sample_ddim(mixture2d, x, sigmas, generator=_gen(2))
    )
    assert not torch.equal(
        sample_ddim(mixture2d, x, sigmas, eta=1.0, generator=_gen(1)),
        sample_ddim(mixture2d, x, sigmas, eta=1.0, generator=_gen(2)),
    )
