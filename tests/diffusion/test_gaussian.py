import math

import torch
from torch.distributions import Normal, kl_divergence

from kuosan.diffusion import gaussian as G
from kuosan.diffusion.schedules import DiscreteSchedule

F64 = torch.float64
SCH = DiscreteSchedule.from_name("linear", 1000)


def _rand(*shape, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=F64)


def test_posterior_equals_direct_gaussian_conditioning():
    """q(x_{t-1} | x_t, x_0) from Eqs. 6-7 equals conditioning the joint Gaussian of (x_{t-1}, x_t)
    given x_0: x_{t-1} ~ N(sqrt(abar_{t-1}) x0, 1 - abar_{t-1}), x_t = sqrt(alpha_t) x_{t-1} + sqrt(beta_t) z."""
    abar, abar_prev = SCH.abar, SCH.abar_prev
    x0, x_t = _rand(5, seed=1), _rand(5, seed=2)
    for t in [1, 10, 500, 999]:
        a, ap = abar[t], abar_prev[t]
        alpha = a / ap
        m1, v1 = ap.sqrt() * x0, 1 - ap  # x_{t-1} | x0
        m2, v2 = alpha.sqrt() * m1, alpha * v1 + (1 - alpha)  # x_t | x0
        c12 = alpha.sqrt() * v1
        mean_ref = m1 + c12 / v2 * (x_t - m2)
        var_ref = v1 - c12**2 / v2
        mean, var, logvar = G.q_posterior_mean_variance(x0, x_t, a, ap)
        assert torch.allclose(mean, mean_ref, rtol=1e-12, atol=1e-12)
        assert torch.allclose(var, var_ref, rtol=1e-10)
        assert torch.allclose(logvar, var_ref.log(), rtol=1e-10)


def test_conversions_roundtrip():
    t = torch.tensor([0, 3, 250, 999])
    abar, abar_prev = SCH.abar[t], SCH.abar_prev[t]
    x0, eps = _rand(4, 1, 8, 8, seed=3), _rand(4, 1, 8, 8, seed=4)
    x_t = G.q_sample(x0, abar, eps)
    assert torch.allclose(G.x0_from_eps(x_t, eps, abar), x0, atol=1e-9)
    assert torch.allclose(G.eps_from_x0(x_t, x0, abar), eps, atol=1e-9)
    v = G.v_from_x0_eps(x0, eps, abar)
    assert torch.allclose(G.x0_from_v(x_t, v, abar), x0, atol=1e-9)
    assert torch.allclose(G.eps_from_v(x_t, v, abar), eps, atol=1e-9)
    # the epsilon-form mean (Eq. 11) is the posterior mean at x0_hat(eps); x0_from_mean inverts it
    mean = G.mean_from_eps(x_t, eps, abar, abar_prev)
    assert torch.allclose(mean, G.q_posterior_mean_variance(x0, x_t, abar, abar_prev)[0], atol=1e-9)
    assert torch.allclose(G.x0_from_mean(x_t, mean, abar, abar_prev), x0, atol=1e-6)


def test_seed_002_printed_reverse_step_is_not_the_posterior_mean():
    """ERRATA: seed 002 prints x_{t-1} = x_t/sqrt(alpha) - sqrt(1-alpha)/sqrt(alpha) eps; the right
    coefficient is beta_t / sqrt(1 - abar_t) (DDPM Eq. 11). The two differ except at t = 0."""
    t = 500
    abar, abar_prev = SCH.abar[t], SCH.abar_prev[t]
    alpha = abar / abar_prev
    x0, eps = _rand(6, seed=5), _rand(6, seed=6)
    x_t = G.q_sample(x0, abar, eps)
    seed_form = x_t / alpha.sqrt() - (1 - alpha).sqrt() / alpha.sqrt() * eps
    right = G.mean_from_eps(x_t, eps, abar, abar_prev)
    assert not torch.allclose(seed_form, right, atol=1e-3)


def test_normal_kl_against_torch_distributions():
    m1, m2 = _rand(10, seed=7), _rand(10, seed=8)
    lv1, lv2 = _rand(10, seed=9), _rand(10, seed=10)
    ours = G.normal_kl(m1, lv1, m2, lv2)
    ref = kl_divergence(Normal(m1, (0.5 * lv1).exp()), Normal(m2, (0.5 * lv2).exp()))
    assert torch.allclose(ours, ref, atol=1e-12)
    assert torch.allclose(G.normal_kl(m1, lv1, m1, lv1), torch.zeros(10, dtype=F64))


def test_discretized_likelihood_is_a_distribution_over_levels():
    for levels in (256, 17):
        bw = 2.0 / (levels - 1)
        x = torch.linspace(-1, 1, levels, dtype=F64)
        for mean, log_scale in [(0.1, -1.0), (-0.9, -3.0), (0.95, 0.5)]:
            logp = G.discretized_gaussian_log_likelihood(
                x, torch.full_like(x, mean), torch.full_like(x, log_scale), bin_width=bw
            )
            assert abs(float(logp.exp().sum()) - 1) < 1e-9
            # interior bins are CDF differences of N(mean, scale)
            d = Normal(torch.tensor(mean, dtype=F64), torch.tensor(log_scale, dtype=F64).exp())
            i = min(max(int((x - mean).abs().argmin()), 1), levels - 2)  # an interior bin near the mean
            ref = (d.cdf(x[i] + bw / 2) - d.cdf(x[i] - bw / 2)).log()
            assert torch.allclose(logp[i], ref, atol=1e-9)


def test_prior_bpd_and_vlb_terms():
    x0 = _rand(3, 4, seed=11).clamp(-1, 1)
    abar_T = SCH.abar[-1]
    ref = kl_divergence(Normal(abar_T.sqrt() * x0, (1 - abar_T).sqrt()), Normal(0.0, 1.0)).mean(1) / math.log(2)
    assert torch.allclose(G.prior_bpd(x0, abar_T), ref, rtol=1e-10)
    # with the true posterior as the model, the KL term is zero
    t = 300
    x_t = G.q_sample(x0, SCH.abar[t], _rand(3, 4, seed=12))
    mean, var, logvar = G.q_posterior_mean_variance(x0, x_t, SCH.abar[t], SCH.abar_prev[t])
    kl = G.vlb_term_bpd(x0, x_t, mean, logvar, SCH.abar[t], SCH.abar_prev[t])
    assert torch.allclose(kl, torch.zeros(3, dtype=F64), atol=1e-12)
    # the decoder term is the discretized NLL in bits
    nll = G.vlb_term_bpd(x0, x_t, mean, torch.tensor(-4.0, dtype=F64), SCH.abar[0], SCH.abar_prev[0], is_first=True)
    ref = -G.discretized_gaussian_log_likelihood(x0, mean, torch.full_like(x0, -2.0)).mean(1) / math.log(2)
    assert torch.allclose(nll, ref)
