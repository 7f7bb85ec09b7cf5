"""Score matching losses (explicit / exact-trace, sliced, denoising, annealed DSM) and the NCSN score
adapter: the identities that make them score matching, checked against closed forms."""

import math

import pytest
import torch

from kuosan.diffusion.parameterization import ScoreDenoiser, ncsn_c_noise
from kuosan.diffusion.sde import geometric_sigmas
from kuosan.losses.score_matching import (
    AnnealedDSMObjective,
    annealed_dsm_loss,
    denoising_score_matching_loss,
    explicit_score_matching_loss,
    fisher_divergence,
    random_projections,
    sliced_score_matching_loss,
)
from kuosan.networks import MLPDenoiser

F64 = torch.float64


def _gen(seed):
    return torch.Generator().manual_seed(seed)


class TanhScore(torch.nn.Module):
    """A smooth nonlinear score model s(x) = W2 tanh(W1 x + b) + c x, float64."""

    def __init__(self, d=3, h=8, seed=0):
        super().__init__()
        g = _gen(seed)
        self.w1 = torch.nn.Parameter(torch.randn(h, d, generator=g, dtype=F64) * 0.7)
        self.b = torch.nn.Parameter(torch.randn(h, generator=g, dtype=F64) * 0.3)
        self.w2 = torch.nn.Parameter(torch.randn(d, h, generator=g, dtype=F64) * 0.5)
        self.c = torch.nn.Parameter(torch.tensor(-0.8, dtype=F64))

    def forward(self, x):
        return torch.tanh(x @ self.w1.T + self.b) @ self.w2.T + self.c * x


def _jacobian_trace(f, x):
    jac = torch.autograd.functional.jacobian(f, x)  # (B, d, B, d); the per-sample blocks are on the diagonal
    idx = torch.arange(x.shape[0])
    return jac[idx, :, idx, :].diagonal(dim1=-2, dim2=-1).sum(-1)


def test_explicit_score_matching_is_trace_plus_half_norm():
    f = TanhScore()
    x = torch.randn(16, 3, generator=_gen(1), dtype=F64)
    loss = explicit_score_matching_loss(f, x)
    with torch.no_grad():
        want = _jacobian_trace(f, x) + 0.5 * f(x).pow(2).sum(1)
    assert loss.shape == (16,) and torch.allclose(loss, want, atol=1e-12)
    assert torch.allclose(explicit_score_matching_loss(f, x, reduction="mean"), want / 3)
    loss.mean().backward()  # differentiable in theta (create_graph)
    assert f.w1.grad is not None and torch.isfinite(f.w1.grad).all()


def test_hyvarinen_identity_score_matching_is_fisher_divergence_minus_a_constant():
    """Hyvarinen 2005, Thm. 1 (seed 003's integration by parts): for data p = N(m, S),
    E_p[tr(grad s) + ||s||^2 / 2] = E_p[||s - grad log p||^2 / 2] - E_p[||grad log p||^2] / 2,
    and E_p ||grad log p||^2 = tr(S^-1). Checked per sample on the same draws, for a nonlinear s."""
    m = torch.tensor([0.5, -1.0, 0.2], dtype=F64)
    a = torch.randn(3, 3, generator=_gen(2), dtype=F64)
    cov = a @ a.T + 0.5 * torch.eye(3, dtype=F64)
    x = m + torch.randn(40000, 3, generator=_gen(3), dtype=F64) @ torch.linalg.cholesky(cov).T
    true_score = -torch.linalg.solve(cov, (x - m).T).T
    f = TanhScore()
    with torch.no_grad():
        fisher = fisher_divergence(f(x), true_score)
    diff = explicit_score_matching_loss(f, x, create_graph=False).detach() - fisher
    const = -0.5 * torch.linalg.inv(cov).trace()
    assert abs(diff.mean() - const) < 4 * diff.std() / math.sqrt(len(diff)), (diff.mean(), const)


def _per_projection(f, x, v, vr):
    """SSM loss of every projection separately, (M, B): one call on x repeated M times."""
    m, b = v.shape[:2]
    out = sliced_score_matching_loss(
        f, x.repeat(m, 1), v=v.reshape(1, m * b, -1), create_graph=False, variance_reduction=vr
    )
    return out.detach().reshape(m, b)


@pytest.mark.parametrize("projection", ["rademacher", "gaussian"])
@pytest.mark.parametrize("variance_reduction", [False, True])
def test_sliced_score_matching_is_unbiased_for_score_matching(projection, variance_reduction):
    """Song et al. 2019, Eqs. 7-8: averaged over projections v with E[v v^T] = I, SSM and SSM-VR
    equal the exact-trace loss per sample (Hutchinson's estimator)."""
    f = TanhScore(seed=4)
    x = torch.randn(8, 3, generator=_gen(5), dtype=F64)
    exact = explicit_score_matching_loss(f, x, create_graph=False).detach()
    v = random_projections(x, 4000, projection, generator=_gen(6))
    assert v.shape == (4000, 8, 3)
    if projection == "rademacher":
        assert set(v.unique().tolist()) == {-1.0, 1.0}
    per_v = _per_projection(f, x, v, variance_reduction)
    sliced = sliced_score_matching_loss(f, x, v=v[:50], create_graph=False, variance_reduction=variance_reduction)
    assert sliced.shape == (8,) and torch.allclose(sliced.detach(), per_v[:50].mean(0), atol=1e-12)
    se = per_v.std(0) / math.sqrt(v.shape[0])
    assert torch.all((per_v.mean(0) - exact).abs() < 5 * se + 1e-12), (per_v.mean(0), exact)


def test_ssm_vr_and_rademacher_reduce_the_variance():
    """The variance over projections: SSM-VR < SSM (Song et al. 2019, Sec. 3.2), and Rademacher
    projections < Gaussian ones (Hutchinson)."""
    f = TanhScore(seed=7)
    x = torch.randn(4, 3, generator=_gen(8), dtype=F64)

    def var(kind, vr):
        return _per_projection(f, x, random_projections(x, 3000, kind, generator=_gen(9)), vr).var(0)

    assert torch.all(var("gaussian", True) < var("gaussian", False))
    assert torch.all(var("rademacher", True) < var("gaussian", True))
    assert torch.all(var("rademacher", False) < var("gaussian", False))


def test_linear_score_with_diagonal_jacobian_makes_rademacher_ssm_vr_exact():
    """If grad s is diagonal, v^T (grad s) v = tr(grad s) for every v in {-1, 1}^d: SSM-VR is exact."""
    diag = torch.tensor([-1.0, -2.0, 0.5], dtype=F64)
    f = lambda x: x * diag + 0.3  # noqa: E731
    x = torch.randn(5, 3, generator=_gen(10), dtype=F64)
    one = sliced_score_matching_loss(f, x, variance_reduction=True, generator=_gen(11), create_graph=False)
    assert torch.allclose(one, explicit_score_matching_loss(f, x, create_graph=False), atol=1e-12)


def test_denoising_score_matching_is_fisher_divergence_to_q_sigma_plus_a_constant():
    """Vincent 2011: E[DSM(s)] - E_{q_sigma}[||s - grad log q_sigma||^2 / 2] does not depend on s,
    and the exact score of q_sigma minimises DSM. Data N(m, S), q_sigma = N(m, S + sigma^2 I)."""
    m = torch.tensor([1.0, -0.5], dtype=F64)
    cov = torch.tensor([[0.5, 0.2], [0.2, 0.3]], dtype=F64)
    sigma, n = 0.4, 200000
    g = _gen(12)
    x0 = m + torch.randn(n, 2, generator=g, dtype=F64) @ torch.linalg.cholesky(cov).T
    eps = torch.randn(n, 2, generator=g, dtype=F64)
    q_cov = cov + sigma**2 * torch.eye(2, dtype=F64)
    true_score = lambda y: -torch.linalg.solve(q_cov, (y - m).T).T  # noqa: E731
    others = [lambda y: -y, lambda y: 0.5 * true_score(y) + torch.tensor([0.3, -0.1], dtype=F64)]
    dsm_true = denoising_score_matching_loss(true_score, x0, sigma, eps)
    for f in others:
        dsm = denoising_score_matching_loss(f, x0, sigma, eps)
        xt = x0 + sigma * eps
        fisher = fisher_divergence(f(xt), true_score(xt))
        gap = dsm - dsm_true - fisher  # E[gap] = 0 by Vincent's identity
        assert abs(gap.mean()) < 4 * gap.std() / math.sqrt(n), gap.mean()
        assert dsm.mean() > dsm_true.mean()


def test_annealed_dsm_is_sigma_squared_weighted_dsm():
    """NCSN Eq. 6 with lambda(sigma) = sigma^2: per sample sigma^2 l(theta; sigma) = ||sigma s + eps||^2 / 2."""
    f = lambda x, s: -x / (1 + s[:, None, None, None] ** 2)  # noqa: E731
    x0 = torch.randn(6, 1, 2, 2, generator=_gen(13), dtype=F64)
    eps = torch.randn(6, 1, 2, 2, generator=_gen(14), dtype=F64)
    sigma = geometric_sigmas(6, 0.01, 10.0)
    loss = annealed_dsm_loss(f, x0, sigma, eps)
    per_level = torch.stack(
        [
            denoising_score_matching_loss(
                lambda y, i=i: f(y, sigma[i : i + 1]), x0[i : i + 1], sigma[i], eps[i : i + 1]
            )[0]
            for i in range(6)
        ]
    )
    assert loss.shape == (6,) and torch.allclose(loss, sigma**2 * per_level, rtol=1e-10)
    assert torch.allclose(annealed_dsm_loss(f, x0, sigma, eps, anneal_power=0.0), per_level, rtol=1e-10)
    assert torch.allclose(annealed_dsm_loss(f, x0, sigma, eps, reduction="mean"), loss / 4)


def test_score_denoiser_adapter():
    """D = x + sigma^2 s with s = net(c_in x, c_noise) / sigma; c_noise = 100 ln sigma + 500 puts
    sigma in [e^-5, e^5] on the U-Net embedding's 0..1000 scale."""
    seen = {}

    class Probe(torch.nn.Module):
        def forward(self, x, t):
            seen["x"], seen["t"] = x, t
            return torch.full_like(x, -2.0)

    x = torch.randn(3, 2, dtype=F64)
    sigma = torch.tensor([0.01, 1.0, 50.0], dtype=F64)
    den = ScoreDenoiser(Probe())
    assert torch.allclose(den.score(x, sigma), -2.0 / sigma[:, None].expand(3, 2))
    assert torch.allclose(den(x, sigma), x + sigma[:, None] ** 2 * den.score(x, sigma))
    assert torch.allclose(seen["x"], x / (1 + sigma[:, None] ** 2).sqrt())
    assert torch.allclose(seen["t"], 100 * sigma.log() + 500)
    ends = ncsn_c_noise(torch.tensor([math.exp(-5), math.exp(5)], dtype=F64))
    assert torch.allclose(ends, torch.tensor([0.0, 1000.0], dtype=F64), atol=1e-9)
    ScoreDenoiser(Probe(), scale_input=False)(x, sigma)
    assert torch.equal(seen["x"], x)


def test_annealed_dsm_objective_trains_the_score_of_a_gaussian():
    """The Trainer's objective: draws levels from the geometric set (or log-uniform, continuous),
    is deterministic given the generator, and its minimiser is the exact score: a net whose output
    is sigma * score of q_sigma (here analytic) has lower loss than a zero net, by the Fisher term."""
    sigmas = geometric_sigmas(10, 0.1, 5.0)
    obj = AnnealedDSMObjective(sigmas)
    x0 = torch.randn(256, 2, generator=_gen(15))
    drawn = obj.draw(x0, _gen(16))
    assert set(drawn["sigma"].tolist()) <= set(sigmas.tolist()) and drawn["eps"].shape == x0.shape
    cont = AnnealedDSMObjective(sigmas, continuous=True).draw(x0, _gen(16))["sigma"]
    assert cont.min() >= 0.1 - 1e-12 and cont.max() <= 5.0 + 1e-12 and len(set(cont.tolist())) == 256

    class Exact(torch.nn.Module):  # data N(0, I): sigma * score of q_sigma at the network's input
        def forward(self, x_in, c_noise):
            sigma = ((c_noise.double() - 500) / 100).exp()[:, None]
            x = x_in * (1 + sigma**2).sqrt()
            return (sigma * -x / (1 + sigma**2)).float()

    class Zero(torch.nn.Module):
        def forward(self, x_in, c_noise):
            return torch.zeros_like(x_in)

    exact, zero = obj(Exact(), x0, _gen(17)), obj(Zero(), x0, _gen(17))
    assert exact.shape == (256,) and torch.equal(obj(Zero(), x0, _gen(17)), zero)
    assert exact.mean() < zero.mean()
    net = MLPDenoiser(dim=2, hidden=16, depth=1)
    obj(net, x0, _gen(18)).mean().backward()
    assert all(p.grad is not None for p in net.parameters() if p.requires_grad)
