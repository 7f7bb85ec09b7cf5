import torch
from torch.distributions import Categorical, MixtureSameFamily, MultivariateNormal

from kuosan.diffusion import gaussian_denoiser, score_from_denoiser

F64 = torch.float64


def test_gaussian_denoiser_closed_form():
    g = torch.Generator().manual_seed(0)
    A = torch.randn(4, 4, generator=g, dtype=F64)
    S = A @ A.T + 0.1 * torch.eye(4, dtype=F64)
    m = torch.randn(4, generator=g, dtype=F64)
    den = gaussian_denoiser(m, S)
    x = torch.randn(7, 4, generator=g, dtype=F64)
    for sigma in [0.01, 0.7, 30.0]:
        ref = m + (S @ torch.linalg.solve(S + sigma**2 * torch.eye(4, dtype=F64), (x - m).T)).T
        assert torch.allclose(den(x, sigma), ref, atol=1e-10)


def test_mixture_log_prob_matches_torch(mixture2d):
    K = mixture2d.means.shape[0]
    covs = mixture2d.U @ torch.diag_embed(mixture2d.lam) @ mixture2d.U.transpose(1, 2)
    x = torch.randn(50, 2, dtype=F64)
    for sigma in [0.0, 0.5, 3.0]:
        ref = MixtureSameFamily(
            Categorical(logits=mixture2d.log_w),
            MultivariateNormal(mixture2d.means, covs + sigma**2 * torch.eye(2, dtype=F64)),
        )
        assert torch.allclose(mixture2d.log_prob(x, sigma), ref.log_prob(x), atol=1e-10), (sigma, K)


def test_mixture_denoiser_obeys_tweedie(mixture2d):
    """E[x0 | x] = x + sigma^2 grad log p_sigma(x): the denoiser against autograd of the density."""
    x = torch.randn(30, 2, dtype=F64, requires_grad=True)
    for sigma in [0.05, 0.8, 5.0]:
        (grad,) = torch.autograd.grad(mixture2d.log_prob(x, sigma).sum(), x)
        assert torch.allclose(mixture2d(x.detach(), sigma), x.detach() + sigma**2 * grad, atol=1e-9)
        assert torch.allclose(score_from_denoiser(mixture2d, x.detach(), sigma), grad, atol=1e-8)


def test_mixture_samples_have_the_mixture_moments(mixture2d):
    x = mixture2d.sample(20000, generator=torch.Generator().manual_seed(0))
    assert torch.allclose(x.mean(0), mixture2d.mean, atol=0.05)
    assert torch.allclose(torch.cov(x.T), mixture2d.covariance, atol=0.08)


def test_image_shaped_oracle():
    """Rank-agnostic: a mixture over 1x2x2 'images' denoises (B, 1, 2, 2) tensors."""
    from kuosan.diffusion import GaussianMixtureDenoiser

    den = GaussianMixtureDenoiser(
        torch.tensor([0.5, 0.5]), torch.randn(2, 4, dtype=F64), torch.ones(2, 4), shape=(1, 2, 2)
    )
    x = torch.randn(3, 1, 2, 2, dtype=F64)
    flat = GaussianMixtureDenoiser(den.log_w.exp(), den.means, torch.ones(2, 4))
    assert torch.allclose(den(x, 0.3).reshape(3, 4), flat(x.reshape(3, 4), 0.3))
    assert den.sample(5).shape == (5, 1, 2, 2)
