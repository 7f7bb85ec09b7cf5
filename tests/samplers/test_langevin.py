"""Langevin dynamics, annealed Langevin dynamics (NCSN) and the predictor-corrector sampler on the
Denoiser contract."""

import math

import pytest
import torch

from kuosan.diffusion import GaussianMixtureDenoiser, gaussian_denoiser
from kuosan.diffusion.schedules import DiscreteSchedule, make_sigmas
from kuosan.diffusion.sde import geometric_sigmas
from kuosan.samplers import sample_ddpm, sample_euler_ancestral
from kuosan.samplers.langevin import langevin_dynamics, ncsnv2_step_lr, sample_annealed_langevin, sample_pc

F64 = torch.float64


def _gen(seed):
    return torch.Generator().manual_seed(seed)


def _grid(L, smin, smax):
    return torch.cat([geometric_sigmas(L, smin, smax), torch.zeros(1, dtype=F64)])


def test_langevin_dynamics_has_the_ula_stationary_variance():
    """On N(0, v) with the exact score -x / v, the chain x + a/2 s + sqrt(a) z (NCSN Eq. 4) has the
    stationary variance a / (1 - (1 - a / (2v))^2) (-> v as a -> 0): a check of the step convention."""
    v, a = 2.0, 0.4
    x = torch.zeros(20000, 1, dtype=F64)
    out = langevin_dynamics(lambda y: -y / v, x, step_size=a, n_steps=200, generator=_gen(0))
    want = a / (1 - (1 - a / (2 * v)) ** 2)
    assert out.var().item() == pytest.approx(want, rel=0.04) and abs(want - v) > 0.1


class IsotropicMixture(torch.nn.Module):
    """Exact denoiser of sum_k w_k N(m_k, I) (a fast special case of GaussianMixtureDenoiser):
    D(x, sigma) = sum_k r_k(x) (m_k + (x - m_k) / (1 + sigma^2))."""

    def __init__(self, weights, means):
        super().__init__()
        self.log_w, self.means = torch.as_tensor(weights, dtype=F64).log(), means

    def _parts(self, x, sigma):
        v = 1 + torch.as_tensor(sigma, dtype=F64).reshape(-1, 1, 1) ** 2
        d = x[:, None, :] - self.means[None]
        return torch.softmax(self.log_w[None] - 0.5 * d.pow(2).sum(-1) / v[:, :, 0], dim=1)[..., None], d, v

    def forward(self, x, sigma):
        r, d, v = self._parts(x, sigma)
        return (r * (self.means[None] + d / v)).sum(1)

    def score(self, x, sigma=0.0):
        """grad log p_sigma(x) = -sum_k r_k(x) (x - m_k) / (1 + sigma^2), exact also at sigma = 0."""
        r, d, v = self._parts(x, sigma)
        return -(r * d / v).sum(1)


def test_seed_003_langevin_loses_mixture_weights_annealed_langevin_keeps_them():
    """Seed 003 / Song & Ermon 2019, Fig. 3: 0.8 N((5, 5), I) + 0.2 N((-5, -5), I). With the exact
    score, plain Langevin from uniform starts on [-8, 8]^2 keeps the starts' 50/50 split; annealed
    Langevin over 20 levels 20 -> 1 (T = 25, eps = 0.4) recovers 0.8 / 0.2 (ERRATA, seed 003: the
    score of far-apart components carries no information about their weights). NCSN's own setting
    (10 levels, T = 100, eps = 0.1) is in benchmarks/score_models.py."""
    means = torch.tensor([[5.0, 5.0], [-5.0, -5.0]], dtype=F64)
    mix = IsotropicMixture([0.8, 0.2], means)
    y = torch.randn(7, 2, dtype=F64) * 4
    ref = GaussianMixtureDenoiser(torch.tensor([0.8, 0.2]), means, torch.ones(2, 2))
    assert torch.allclose(mix(y, 0.7), ref(y, 0.7), atol=1e-10) and torch.allclose(mix.score(y, 0.7), ref.score(y, 0.7))
    n = 3000
    x = torch.rand(n, 2, generator=_gen(1), dtype=F64) * 16 - 8
    share = lambda z: ((z - means[0]).norm(dim=1) < (z - means[1]).norm(dim=1)).double().mean().item()  # noqa: E731
    plain = langevin_dynamics(mix.score, x, step_size=0.1, n_steps=300, generator=_gen(2))
    assert abs(share(plain) - 0.5) < 0.05
    annealed = sample_annealed_langevin(mix, x, _grid(20, 1.0, 20.0), langevin_steps=25, step_lr=0.4, generator=_gen(2))
    assert abs(share(annealed) - 0.8) < 0.03, share(annealed)


def test_annealed_langevin_is_algorithm_1():
    """Step by step against a literal transcription of Song & Ermon 2019, Algorithm 1 (+ the final
    denoising step), with the same noise."""
    den = gaussian_denoiser(torch.tensor([0.3, -0.2]), torch.tensor([[0.5, 0.1], [0.1, 0.3]]))
    sigmas = _grid(4, 0.1, 3.0)
    x = torch.randn(8, 2, generator=_gen(3), dtype=F64) * 3
    eps, T = 0.01, 3
    g = _gen(4)
    y = x.clone()
    levels = sigmas[:-1].tolist()
    for sigma in levels:
        alpha = eps * sigma**2 / levels[-1] ** 2
        for _ in range(T):
            z = torch.randn(y.shape, generator=g, dtype=F64)
            y = y + alpha / 2 * den.score(y, sigma) + math.sqrt(alpha) * z
    y = y + levels[-1] ** 2 * den.score(y, levels[-1])
    ours = sample_annealed_langevin(den, x, sigmas, langevin_steps=T, step_lr=eps, generator=_gen(4))
    assert torch.allclose(ours, y, atol=1e-12)


def test_ncsnv2_step_lr_technique_4():
    """Technique 4: NCSNv2's CIFAR-10 setting (L = 232, 50 -> 0.01, T = 5) gives an eps of the order
    of the paper's 6.2e-6; on a Gaussian, T steps from variance gamma^2 sigma_L^2 end at the variance
    the recursion predicts, nearer to sigma_L^2 (the criterion) than with a third or thrice the step."""
    gamma = (50 / 0.01) ** (1 / 231)
    eps = ncsnv2_step_lr(gamma, 5, 0.01)
    assert 3e-6 < eps < 2e-5, eps
    gamma, T, s_l = 1.4, 5, 0.1
    eps = ncsnv2_step_lr(gamma, T, s_l)

    def final_var(e):
        g = _gen(5)
        y = torch.randn(40000, 1, generator=g, dtype=F64) * gamma * s_l
        for _ in range(T):
            y = y + e / 2 * (-y / s_l**2) + math.sqrt(e) * torch.randn(y.shape, generator=g, dtype=F64)
        return y.var().item() / s_l**2

    c = eps / (2 * s_l**2)
    v_star = 2 / (2 - c)
    predicted = (1 - c) ** (2 * T) * (gamma**2 - v_star) + v_star  # the variance recursion it minimises
    assert final_var(eps) == pytest.approx(predicted, rel=0.03)
    assert abs(final_var(eps) - 1) < min(abs(final_var(eps / 3) - 1), abs(final_var(eps * 3) - 1))


def test_pc_ancestral_predictor_is_ddpm_posterior_sampling(mixture2d):
    """In VE scaling the ancestral predictor (Song et al. 2021, Eq. 47) is DDPM's posterior step:
    sample_pc(ancestral, no corrector) = sample_ddpm(variance="small") = Euler-ancestral (eta = 1)."""
    sch = DiscreteSchedule.from_name("linear", 1000)
    sigmas = make_sigmas(sch, 50, "trailing")
    x = torch.randn(64, 2, generator=_gen(7), dtype=F64) * float(sigmas[0])
    pc = sample_pc(mixture2d, x, sigmas, predictor="ancestral", corrector="none", generator=_gen(8))
    assert torch.allclose(pc, sample_ddpm(mixture2d, x, sigmas, generator=_gen(8)), atol=1e-10)
    assert torch.allclose(pc, sample_euler_ancestral(mixture2d, x, sigmas, generator=_gen(8)), atol=1e-10)


def test_pc_step_formulas():
    """One predictor step on a denoiser with a known score, noise replayed from the same generator."""
    den = gaussian_denoiser(torch.zeros(2), torch.eye(2, dtype=F64))
    x = torch.randn(5, 2, generator=_gen(9), dtype=F64)
    s, sn = 2.0, 1.2
    grid = torch.tensor([s, sn, 0.0], dtype=F64)
    score = den.score(x, s)
    z = torch.randn(x.shape, generator=_gen(10), dtype=F64)
    want = {
        "reverse-diffusion": x + (s**2 - sn**2) * score + (s**2 - sn**2) ** 0.5 * z,
        "euler-maruyama": x + 2 * s * (s - sn) * score + (2 * s * (s - sn)) ** 0.5 * z,
        "ancestral": x + (s**2 - sn**2) * score + sn / s * (s**2 - sn**2) ** 0.5 * z,
    }
    for name, value in want.items():
        seen = []
        sample_pc(
            den,
            x,
            grid,
            predictor=name,
            corrector="none",
            generator=_gen(10),
            callback=lambda d, seen=seen: seen.append(d["x"]),
        )
        assert torch.allclose(seen[1], value, atol=1e-12), name


@pytest.mark.parametrize("corrector", ["langevin", "ald"])
def test_pc_corrector_step_sizes(corrector):
    """Corrector only (predictor "none"): the Langevin corrector's step is 2 (r ||z|| / ||s||)^2 with
    the norms averaged over the batch (score_sde), the ALD corrector's 2 (r sigma)^2."""
    den = gaussian_denoiser(torch.zeros(3), torch.eye(3, dtype=F64))
    x = torch.randn(6, 3, generator=_gen(11), dtype=F64) * 2
    sigma, r = 1.5, 0.2
    seen = []
    sample_pc(
        den,
        x,
        torch.tensor([sigma, 0.0], dtype=F64),
        predictor="none",
        corrector=corrector,
        snr=r,
        generator=_gen(12),
        callback=lambda d, seen=seen: seen.append(d["x"]),
    )
    score, z = den.score(x, sigma), torch.randn(x.shape, generator=_gen(12), dtype=F64)
    if corrector == "langevin":
        step = 2 * (r * z.norm(dim=1).mean() / score.norm(dim=1).mean()) ** 2
    else:
        step = 2 * (r * sigma) ** 2
    assert torch.allclose(seen[0], x + step * score + (2 * step) ** 0.5 * z, atol=1e-12)


@pytest.mark.parametrize(
    "name,kwargs", [("ald", {}), ("pc", {}), ("pc", {"corrector": "ald"}), ("pc", {"predictor": "reverse-diffusion"})]
)
def test_langevin_samplers_reproduce_mixture(mixture2d, name, kwargs):
    """Driven by the exact denoiser over 50 geometric levels 10 -> 0.01, annealed Langevin (T = 5,
    Technique 4's step) and PC reproduce the mixture's mean, covariance and weights."""
    n = 3000
    sigmas = _grid(50, 0.01, 10.0)
    x = torch.randn(n, 2, generator=_gen(13), dtype=F64) * 10
    fn = sample_annealed_langevin if name == "ald" else sample_pc
    out = fn(mixture2d, x, sigmas, generator=_gen(14), **kwargs)
    se = (mixture2d.covariance.diagonal() / n).sqrt()
    assert torch.all((out.mean(0) - mixture2d.mean).abs() < 4 * se), out.mean(0)
    assert torch.allclose(torch.cov(out.T), mixture2d.covariance, atol=0.15)
    share = torch.bincount(torch.cdist(out, mixture2d.means).argmin(1), minlength=3).double() / n
    assert torch.allclose(share, mixture2d.log_w.exp(), atol=0.03), share


def test_ancestral_predictor_beats_reverse_diffusion_on_a_coarse_grid(mixture2d):
    """Why sample_pc defaults to the ancestral predictor: on 10 levels 10 -> 0.01 with the exact
    score, reverse diffusion (score_sde's default for N = 1000) misplaces the mixture's mass (its
    mean is off); the ancestral step (the exact posterior for Gaussian data) is far closer."""
    n = 3000
    x = torch.randn(n, 2, generator=_gen(17), dtype=F64) * 10
    err = {}
    for predictor in ["ancestral", "reverse-diffusion"]:
        out = sample_pc(mixture2d, x, _grid(10, 0.01, 10.0), predictor=predictor, generator=_gen(18))
        err[predictor] = (out.mean(0) - mixture2d.mean).norm().item()
    assert err["ancestral"] < 0.6 * err["reverse-diffusion"], err


def test_pc_langevin_step_is_capped_where_the_score_vanishes():
    """An untrained network (D(x) = x, score 0): score_sde's step 2 (r ||z|| / ||s||)^2 is infinite;
    kuosan caps it at sigma_1^2, so the samples stay finite (and equal x + noise)."""
    sigmas = _grid(5, 0.1, 5.0)
    x = torch.randn(32, 2, generator=_gen(15), dtype=F64) * 5
    out = sample_pc(lambda y, sigma: y, x, sigmas, predictor="none", generator=_gen(16))
    assert torch.isfinite(out).all() and out.std() < 5 * (1 + 2 * 5 * 25) ** 0.5


def test_bad_arguments_are_refused(mixture2d):
    sigmas = _grid(5, 0.1, 5.0)
    x = torch.zeros(2, 2, dtype=F64)
    with pytest.raises(ValueError, match="predictor"):
        sample_pc(mixture2d, x, sigmas, predictor="heun")
    with pytest.raises(ValueError, match="corrector"):
        sample_pc(mixture2d, x, sigmas, corrector="mala")
    with pytest.raises(ValueError, match="langevin_steps"):
        sample_annealed_langevin(mixture2d, x, sigmas, langevin_steps=0)
    with pytest.raises(ValueError, match="decreasing"):
        sample_annealed_langevin(mixture2d, x, sigmas.flip(0))


def test_ncsn_run_trains_and_samples_through_the_cli(tmp_path):
    """A toy2d-ncsn run end to end as a user runs it: train (a tiny MLP, a few steps), then sample by
    annealed Langevin and PC; the run's denoiser is a ScoreDenoiser on the geometric levels."""
    import numpy as np

    from kuosan.build import build_denoiser, build_objective, build_schedule
    from kuosan.cli import main
    from kuosan.diffusion.parameterization import ScoreDenoiser
    from kuosan.losses.score_matching import AnnealedDSMObjective
    from kuosan.runs import load_run

    out = tmp_path / "run"
    args = [
        "train",
        "--preset",
        "toy2d-ncsn",
        "--steps",
        "3",
        "--out",
        str(out),
        "--no-progress",
        "data.n=512",
        "model.params.hidden=16",
        "model.params.depth=1",
        "train.batch_size=64",
        "diffusion.num_scales=6",
        "sample.steps=6",
    ]
    assert main(args) == 0
    cfg, net = load_run(out)
    assert isinstance(build_objective(cfg), AnnealedDSMObjective)
    assert isinstance(build_denoiser(cfg, net), ScoreDenoiser)
    assert torch.allclose(build_schedule(cfg).sigmas.flip(0), geometric_sigmas(6, 0.01, 5.0), rtol=1e-10)
    for sampler, extra in [("annealed-langevin", ["--langevin-steps", "2"]), ("pc", ["--snr", "0.1"])]:
        path = tmp_path / f"{sampler}.npy"
        assert main(["sample", str(out), "--sampler", sampler, "-n", "16", "--out", str(path), *extra]) == 0
        x = np.load(path)
        assert x.shape == (16, 2) and np.isfinite(x).all()
    assert (
        main(["sample", str(out), "--sampler", "pc", "--steps", "7", "-n", "4", "--out", str(tmp_path / "x.npy")]) == 2
    )  # more steps than noise levels
