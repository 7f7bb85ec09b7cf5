"""Likelihood in bits/dim: the PF-ODE log-likelihood of an exact denoiser equals the true density, the
variational bound lies above it, conventions (dequantization, bin width) are consistent, the adaptive
solver is accurate, and the likelihood-training objective (hybrid loss, learned variance, importance
sampling) has the properties improved-diffusion's has."""

import math

import pytest
import torch

from kuosan.diffusion import DiscreteSchedule, VPDenoiser, gaussian_denoiser
from kuosan.diffusion.likelihood import (
    bpd_from_log_density,
    dequantize,
    ode_bpd,
    ode_log_likelihood,
    respaced_schedule,
    solve_rk45,
    vlb_bpd,
)
from kuosan.diffusion.parameterization import reverse_log_variance
from kuosan.losses.vlb import LossSecondMomentSampler, VLBObjective

F64 = torch.float64
SCH = DiscreteSchedule.from_name("cosine", 1000)


def _gaussian(dim: int, seed: int = 0):
    """N(m, S) with eigenvalues spread over [0.2, 1.5] in a random basis: its bits/dim are ~1.8, far from 0."""
    g = torch.Generator().manual_seed(seed)
    q, _ = torch.linalg.qr(torch.randn(dim, dim, generator=g, dtype=F64))
    cov = q @ torch.diag(torch.linspace(0.2, 1.5, dim, dtype=F64)) @ q.T
    return gaussian_denoiser(torch.linspace(-0.5, 0.5, dim, dtype=F64), cov)


@pytest.fixture(scope="module")
def gauss6():
    oracle = _gaussian(6)
    x = oracle.sample(200, generator=torch.Generator().manual_seed(1))
    true = bpd_from_log_density(oracle.log_prob(x), 6, None)
    return oracle, x, true


def test_pf_ode_exact_trace_recovers_the_true_density(gauss6):
    oracle, x, true = gauss6
    out = ode_log_likelihood(oracle, x, sigma_min=1e-3, sigma_max=1e3, trace="exact")
    bpd = bpd_from_log_density(out["log_likelihood"], 6, None)
    assert abs(bpd.mean() - true.mean()) < 0.01 * true.mean()  # the "must hold": within 1%
    assert abs(bpd.mean() - true.mean()) < 1e-4 * true.mean()  # in fact much closer
    assert (bpd - true).abs().max() < 2e-3  # per sample too (tolerance 1e-5)
    assert 30 < out["nfe"] < 500


@pytest.mark.parametrize("probe", ["rademacher", "gaussian"])
def test_pf_ode_hutchinson_is_unbiased(probe):
    oracle = _gaussian(16, seed=2)
    x = oracle.sample(300, generator=torch.Generator().manual_seed(3))
    true = bpd_from_log_density(oracle.log_prob(x), 16, None)
    out = ode_log_likelihood(
        oracle,
        x,
        sigma_min=1e-3,
        sigma_max=1e3,
        probe=probe,
        rtol=1e-4,
        atol=1e-4,
        generator=torch.Generator().manual_seed(4),
    )
    bpd = bpd_from_log_density(out["log_likelihood"], 16, None)
    err = bpd - true
    assert err.std() > 1e-3  # a stochastic estimate per sample ...
    assert abs(err.mean()) < 4 * err.std() / math.sqrt(len(err)) + 1e-3  # ... unbiased on average
    assert abs(bpd.mean() - true.mean()) < 0.01 * true.mean()


def test_vlb_is_not_below_the_true_nll(gauss6):
    oracle, x, true = gauss6
    g = torch.Generator().manual_seed(5)
    small = vlb_bpd(oracle, x, SCH, bin_width=None, clip_denoised=False, generator=g)
    large = vlb_bpd(oracle, x, SCH, variance="fixed_large", bin_width=None, clip_denoised=False, generator=g)
    for out in (small, large):
        assert out["bpd"].shape == (200,) and out["terms"].shape == (200, 1000)
        gap = out["bpd"] - true
        assert gap.mean() > 3 * gap.std() / math.sqrt(len(gap))  # above -log2 p / D, beyond Monte-Carlo noise
        assert out["prior_bpd"].max() < 1e-6  # abar_T ~ 2e-9: the prior term vanishes
        assert (out["terms"][:, 1:] >= 0).all()  # KL terms
    assert large["bpd"].mean() < small["bpd"].mean()  # beta_t is the better fixed variance here


def test_respaced_vlb_is_a_bound_with_fewer_steps(gauss6):
    oracle, x, true = gauss6
    sch = respaced_schedule(SCH, 50)
    assert sch.T == 50
    torch.testing.assert_close(sch.abar, SCH.abar[torch.linspace(0, 999, 50).round().long()])
    out = vlb_bpd(
        oracle,
        x,
        sch,
        variance="fixed_large",
        bin_width=None,
        clip_denoised=False,
        generator=torch.Generator().manual_seed(6),
    )
    gap = out["bpd"] - true  # a Monte-Carlo estimate per sample (x_t drawn once per step)
    assert gap.mean() > -3 * gap.std() / math.sqrt(len(gap))  # the bound holds in expectation
    assert gap.mean() < 0.5


def test_dequantized_bpd_convention():
    """17 levels of width 1/8: a uniform density on [-1 - 1/16, 1 + 1/16]^D scores log2(17) bits/dim,
    and the ODE on dequantized data converts the same way as the closed-form density."""
    w, d = 2.0 / 16, 4
    assert bpd_from_log_density(torch.tensor([-d * math.log(17 * w)]), d, w).item() == pytest.approx(math.log2(17))
    g = torch.Generator().manual_seed(7)
    x = torch.randint(0, 17, (64, d), generator=g).to(F64) / 8 - 1
    y = dequantize(x, w, generator=torch.Generator().manual_seed(8))
    assert ((y - x).abs() <= w / 2).all() and (y - x).abs().max() > 0.9 * w / 2
    oracle = gaussian_denoiser(torch.zeros(d, dtype=F64), 0.4 * torch.eye(d, dtype=F64))
    out = ode_bpd(
        oracle, x, bin_width=w, generator=torch.Generator().manual_seed(8), trace="exact", sigma_min=1e-3, sigma_max=1e3
    )
    expected = bpd_from_log_density(oracle.log_prob(y), d, w)
    assert (out["bpd"] - expected).abs().max() < 1e-3
    assert out["bpd"].mean().item() == pytest.approx(
        (-oracle.log_prob(y) / (d * math.log(2))).mean().item() + 3, abs=1e-3
    )


def test_dequantized_vlb_bounds_the_dequantized_density():
    """On grid data, vlb_bpd(dequantized=True) of an exact Gaussian denoiser lies above the true
    bits/dim of the dequantized points, log2(1/w) included, and the chain clips to [-1 - w/2, 1 + w/2]."""
    w, d = 2.0 / 16, 4
    x = torch.randint(0, 17, (300, d), generator=torch.Generator().manual_seed(9)).to(F64) / 8 - 1
    oracle = gaussian_denoiser(torch.zeros(d, dtype=F64), 0.35 * torch.eye(d, dtype=F64))
    out = vlb_bpd(
        oracle,
        x,
        respaced_schedule(SCH, 100),
        variance="fixed_large",
        bin_width=w,
        dequantized=True,
        generator=torch.Generator().manual_seed(10),
    )
    y = dequantize(x, w, generator=torch.Generator().manual_seed(10))  # the same first draw
    true = bpd_from_log_density(oracle.log_prob(y), d, w)
    gap = out["bpd"] - true
    assert -3 * gap.std() / math.sqrt(len(gap)) < gap.mean() < 0.3  # a bound (in expectation), and a tight one
    assert out["terms"][:, 0].mean() < 0  # L_0 is a Gaussian density of y now, not a bin probability


def test_discretized_vlb_of_an_untrained_network_is_finite_and_positive():
    class Zero(torch.nn.Module):
        def forward(self, x_t, t):
            return torch.zeros_like(x_t)

    sch = DiscreteSchedule.from_name("cosine", 20)
    x = torch.randint(0, 17, (8, 1, 8, 8)).float() / 8 - 1
    out = vlb_bpd(VPDenoiser(Zero(), sch), x, sch, bin_width=1 / 8, generator=torch.Generator().manual_seed(0))
    assert torch.isfinite(out["bpd"]).all() and (out["bpd"] > 0).all()


def test_rk45_matches_closed_form():
    k = torch.tensor([[1.0], [0.5], [-0.3]], dtype=F64)
    y1, nfe = solve_rk45(
        lambda s, y: -k * y + torch.cos(torch.tensor(s)), torch.ones(3, 1, dtype=F64), 0.0, 3.0, rtol=1e-8, atol=1e-10
    )
    s = 3.0
    exact = []
    for kk in k[:, 0].tolist():  # y' = -k y + cos s, y(0) = 1
        a = (kk * math.cos(s) + math.sin(s)) / (kk**2 + 1)
        exact.append(a + (1 - kk / (kk**2 + 1)) * math.exp(-kk * s))
    torch.testing.assert_close(y1[:, 0], torch.tensor(exact, dtype=F64), rtol=1e-7, atol=1e-8)
    _, nfe_loose = solve_rk45(lambda s, y: -k * y, torch.ones(3, 1, dtype=F64), 0.0, 3.0, rtol=1e-3, atol=1e-6)
    assert nfe_loose < nfe


def test_reverse_log_variance_choices():
    t = torch.tensor([0, 1, 500, 999])
    post = SCH.betas * (1 - SCH.abar_prev) / (1 - SCH.abar)
    small = reverse_log_variance(SCH, t, "fixed_small")
    torch.testing.assert_close(small, torch.stack([post[1], post[1], post[500], post[999]]).log())
    large = reverse_log_variance(SCH, t, "fixed_large")
    torch.testing.assert_close(large[1:], SCH.betas[t[1:]].log())
    ones = torch.ones(4, 1, 2, 2)
    torch.testing.assert_close(reverse_log_variance(SCH, t, "learned_range", ones)[:, 0, 0, 0], SCH.betas[t].log())
    torch.testing.assert_close(reverse_log_variance(SCH, t, "learned_range", -ones)[:, 0, 0, 0], small)


class TwoHeads(torch.nn.Module):
    """A 'learned-variance' network: eps from a fixed linear map, then a variance channel."""

    def __init__(self):
        super().__init__()
        self.lin = torch.nn.Conv2d(1, 2, 1)

    def forward(self, x_t, t):
        return self.lin(x_t)


def test_learned_sigma_denoiser_uses_only_the_mean_channels():
    net = TwoHeads()
    den = VPDenoiser(net, SCH, "eps", learn_sigma=True)

    class MeanOnly(torch.nn.Module):
        def forward(self, x_t, t):
            return net(x_t, t)[:, :1]

    x, sigma = torch.randn(4, 1, 3, 3), torch.tensor([0.1, 1.0, 3.0, 10.0])
    torch.testing.assert_close(den(x, sigma), VPDenoiser(MeanOnly(), SCH, "eps")(x, sigma))
    x0_hat, v = den.forward_with_variance(x, sigma)
    assert v.shape == x.shape and torch.equal(x0_hat, den(x, sigma))
    out = vlb_bpd(den, x.clamp(-1, 1), respaced_schedule(SCH, 10), variance="learned_range", bin_width=1 / 8)
    assert torch.isfinite(out["bpd"]).all()


def test_hybrid_loss_trains_the_variance_only_through_the_vlb():
    torch.manual_seed(0)
    x0 = torch.randint(0, 17, (16, 1, 3, 3)).float() / 8 - 1
    g = torch.Generator().manual_seed(0)
    hybrid = VLBObjective(SCH, loss="hybrid", learn_sigma=True, bin_width=1 / 8)
    simple = VLBObjective(SCH, loss="simple", learn_sigma=True, bin_width=1 / 8)
    drawn = hybrid.draw(x0, g)
    grads = {}
    for name, obj in (("hybrid", hybrid), ("simple", simple)):
        net = TwoHeads()
        net.lin.weight.data.fill_(0.1)
        net.lin.bias.data.fill_(0.05)
        obj.loss(net, x0, **drawn).mean().backward()
        grads[name] = net.lin.weight.grad.clone()
    torch.testing.assert_close(grads["hybrid"][0], grads["simple"][0])  # mean: L_simple only (stop-gradient)
    assert grads["simple"][1].abs().max() == 0 and grads["hybrid"][1].abs().max() > 0  # variance: L_vlb only
    with pytest.raises(ValueError, match="learn_sigma"):
        VLBObjective(SCH, loss="hybrid", learn_sigma=False)


def test_vlb_loss_is_the_scaled_bound_term_and_dequantizes():
    x0 = torch.randint(0, 17, (8, 1, 3, 3)).float() / 8 - 1
    obj = VLBObjective(SCH, loss="vlb", learn_sigma=True, bin_width=1 / 8, dequantize_bin_width=1 / 8)
    drawn = obj.draw(x0, torch.Generator().manual_seed(0))
    assert set(drawn) == {"t", "eps", "weight", "u"} and ((drawn["u"] >= 0) & (drawn["u"] < 1)).all()
    net = TwoHeads()
    loss = obj.loss(net, x0, **drawn)
    with torch.no_grad():
        y = x0 + (drawn["u"] - 0.5) / 8
        from kuosan.diffusion import gaussian as G

        x_t = G.q_sample(y, SCH.abar[drawn["t"]], drawn["eps"])
        out, v = net(x_t, drawn["t"].float()).chunk(2, dim=1)
        expected = 1000 * obj.vlb_bpd(out, v, y, x_t, drawn["t"])
    torch.testing.assert_close(loss, expected.float())


def test_importance_sampler_warms_up_and_stays_unbiased():
    s = LossSecondMomentSampler(5, history=2, uniform_prob=0.01)
    torch.testing.assert_close(s.probs(), torch.full((5,), 0.2, dtype=F64))
    losses = torch.tensor([1.0, 2.0, 3.0, 4.0, 10.0], dtype=F64)
    for _ in range(2):
        s.update(torch.arange(5), losses)
    assert s.warmed_up
    p = s.probs()
    expected = losses / losses.sum() * 0.99 + 0.01 / 5
    torch.testing.assert_close(p, expected)
    t, w = s.sample(20000, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(w, 1 / (5 * p[t]))
    # E_p[w L_t] = mean_t L_t: the weighted objective has the uniform objective's expectation
    assert (w * losses[t]).mean().item() == pytest.approx(losses.mean().item(), rel=0.03)
    s.update(torch.tensor([4]), torch.tensor([0.0]))  # the oldest loss at t = 4 leaves the history
    assert s.losses[4].tolist() == [10.0, 0.0]


def test_config_builds_the_likelihood_objective():
    from kuosan.build import build_denoiser, build_network, build_objective, validate
    from kuosan.config import ConfigError, resolve_config

    cfg = resolve_config(
        "digits",
        overrides=[
            "diffusion.loss=hybrid",
            "diffusion.learn_sigma=true",
            "diffusion.timestep_sampler=loss-second-moment",
            "diffusion.dequantize=true",
            "model.params.base_channels=8",
            "model.params.num_res_blocks=1",
        ],
    )
    net = build_network(cfg, (1, 8, 8))
    obj = build_objective(cfg)
    assert isinstance(obj, VLBObjective) and obj.bin_width == obj.dequantize_bin_width == 1 / 8
    assert obj.sampler is not None
    assert net(torch.zeros(2, 1, 8, 8), torch.zeros(2)).shape == (2, 2, 8, 8)
    assert build_denoiser(cfg, net, clip=False)(torch.zeros(2, 1, 8, 8), torch.ones(2)).shape == (2, 1, 8, 8)
    for bad in (
        ["diffusion.loss=hybrid"],
        ["diffusion.learn_sigma=true"],
        ["diffusion.loss=nope"],
        ["diffusion.timestep_sampler=nope"],
        ["data.name=toy2d:moons", "diffusion.dequantize=true"],
    ):
        with pytest.raises(ConfigError):
            validate(resolve_config("digits", overrides=bad))


@pytest.mark.slow
def test_cli_nll_both_methods(tmp_path):
    import json
    import subprocess
    import sys

    def kuosan(*args):
        return subprocess.run([sys.executable, "-m", "kuosan", *map(str, args)], capture_output=True, text=True)

    run = tmp_path / "run"
    r = kuosan(
        "train",
        "--preset",
        "digits",
        "--steps",
        2,
        "--out",
        run,
        "--no-progress",
        "diffusion.T=20",
        "model.params.base_channels=8",
        "model.params.num_res_blocks=1",
        "train.batch_size=8",
        "train.precision=fp32",
        "diffusion.loss=hybrid",
        "diffusion.learn_sigma=true",
        "diffusion.dequantize=true",
        "sample.steps=2",
    )
    assert r.returncode == 0, r.stderr
    r = kuosan("nll", run, "--method", "vlb", "-n", 4, "--out", tmp_path / "bpd.npy")
    assert r.returncode == 0, r.stderr
    vlb = json.loads(r.stdout)
    assert vlb["method"] == "vlb" and vlb["n"] == 4 and vlb["dequantized"] and vlb["variance"] == "learned_range"
    assert vlb["steps"] == 20 and math.isfinite(vlb["bpd"]) and vlb["bin_width"] == 0.125
    import numpy as np

    assert np.load(tmp_path / "bpd.npy").shape == (4,)
    r = kuosan("nll", run, "--method", "ode", "-n", 3, "--rtol", "1e-3", "--atol", "1e-3")
    assert r.returncode == 0, r.stderr
    ode = json.loads(r.stdout)
    assert ode["method"] == "ode" and ode["n"] == 3 and math.isfinite(ode["bpd"]) and ode["nfe_per_batch"][0] > 6
    r = kuosan("nll", run, "--split", "nope")
    assert r.returncode == 2 and r.stderr.startswith("kuosan nll: error:"), r.stderr
