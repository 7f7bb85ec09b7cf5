"""Analytic Denoisers: exact E[x_0 | x] for Gaussian and Gaussian-mixture data, used as test oracles.

If x_0 ~ sum_k w_k N(m_k, S_k) and x = x_0 + sigma eps, then x ~ sum_k w_k N(m_k, S_k + sigma^2 I) and

    E[x_0 | x] = sum_k r_k(x) (m_k + S_k (S_k + sigma^2 I)^{-1} (x - m_k)),
    r_k(x) = w_k N(x; m_k, S_k + sigma^2 I) / sum_j w_j N(x; m_j, S_j + sigma^2 I).

Each S_k is kept as its eigendecomposition U diag(lam) U^T, so every sigma costs two matrix products.
Data of any shape (B, ...) are flattened to (B, d). Computation is in float64.
"""

from __future__ import annotations

import math

import torch
from torch import nn

F64 = torch.float64


class GaussianMixtureDenoiser(nn.Module):
    """Exact denoiser, score, density and sampler of a Gaussian mixture.

    weights: (K,), means: (K, d), covs: (K, d, d) symmetric PSD (or (K, d) diagonals);
    ``shape`` is the per-sample data shape (default (d,)).
    """

    def __init__(self, weights, means, covs, shape: tuple[int, ...] | None = None):
        super().__init__()
        w = torch.as_tensor(weights, dtype=F64)
        m = torch.as_tensor(means, dtype=F64)
        c = torch.as_tensor(covs, dtype=F64)
        if c.ndim == 2:
            c = torch.diag_embed(c)
        if not (w.ndim == 1 and m.shape[0] == w.shape[0] == c.shape[0] and c.shape[1:] == (m.shape[1],) * 2):
            raise ValueError("weights (K,), means (K, d) and covs (K, d, d) must agree")
        lam, U = torch.linalg.eigh(c)
        self.register_buffer("log_w", (w / w.sum()).log())
        self.register_buffer("means", m)
        self.register_buffer("lam", lam.clamp(min=0))
        self.register_buffer("U", U)
        self.shape = tuple(shape) if shape is not None else (m.shape[1],)

    @property
    def dim(self) -> int:
        return self.means.shape[1]

    def _parts(self, x: torch.Tensor, sigma):
        """Per component: coordinates of x - m_k in the eigenbasis and the noised eigenvalues."""
        xf = x.reshape(x.shape[0], -1).to(F64)
        sigma = torch.as_tensor(sigma, dtype=F64, device=x.device).reshape(-1)
        sigma = sigma.expand(xf.shape[0]) if sigma.numel() == 1 else sigma
        z = torch.einsum("kdj,bkd->bkj", self.U, xf[:, None, :] - self.means[None])  # (B, K, d)
        lam_s = self.lam[None] + sigma[:, None, None] ** 2  # (B, K, d)
        return xf, z, lam_s

    def _log_resp_and_logp(self, z, lam_s):
        log_n = -0.5 * ((z**2 / lam_s).sum(-1) + lam_s.log().sum(-1) + self.dim * math.log(2 * math.pi))
        joint = self.log_w[None] + log_n
        logp = torch.logsumexp(joint, dim=1)
        return joint - logp[:, None], logp

    def forward(self, x: torch.Tensor, sigma, **cond) -> torch.Tensor:
        xf, z, lam_s = self._parts(x, sigma)
        log_r, _ = self._log_resp_and_logp(z, lam_s)
        # m_k + S_k (S_k + s^2 I)^{-1} (x - m_k) = m_k + U diag(lam / (lam + s^2)) U^T (x - m_k)
        shrink = torch.einsum("kdj,bkj->bkd", self.U, z * self.lam[None] / lam_s)
        x0 = (log_r.exp()[..., None] * (self.means[None] + shrink)).sum(1)
        return x0.reshape(x.shape).to(x.dtype)

    def log_prob(self, x: torch.Tensor, sigma=0.0) -> torch.Tensor:
        """log p_sigma(x) of the noised mixture (nats, per sample). sigma = 0 needs full-rank S_k."""
        _, z, lam_s = self._parts(x, sigma)
        return self._log_resp_and_logp(z, lam_s)[1]

    def score(self, x: torch.Tensor, sigma) -> torch.Tensor:
        """grad_x log p_sigma(x) = (D(x, sigma) - x) / sigma^2 (Tweedie)."""
        s = torch.as_tensor(sigma, dtype=x.dtype, device=x.device).reshape(-1)
        s = s.reshape(-1, *([1] * (x.ndim - 1)))
        return (self(x, sigma) - x) / s**2

    def sample(self, n: int, *, generator: torch.Generator | None = None) -> torch.Tensor:
        """n exact draws of x_0, shape (n, *shape), float64."""
        k = torch.multinomial(self.log_w.exp(), n, replacement=True, generator=generator)
        z = torch.randn(n, self.dim, dtype=F64, generator=generator)
        x = self.means[k] + torch.einsum("bdj,bj->bd", self.U[k], z * self.lam[k].sqrt())
        return x.reshape(n, *self.shape)

    @property
    def mean(self) -> torch.Tensor:
        return (self.log_w.exp()[:, None] * self.means).sum(0)

    @property
    def covariance(self) -> torch.Tensor:
        w = self.log_w.exp()
        covs = self.U @ torch.diag_embed(self.lam) @ self.U.transpose(1, 2)
        mu = self.mean
        dm = self.means - mu
        return (w[:, None, None] * (covs + dm[:, :, None] * dm[:, None, :])).sum(0)


def gaussian_denoiser(mean, cov, shape=None) -> GaussianMixtureDenoiser:
    """Exact denoiser of one Gaussian N(mean, cov): E[x_0 | x] = m + S (S + sigma^2 I)^{-1} (x - m)."""
    mean = torch.as_tensor(mean, dtype=F64)
    cov = torch.as_tensor(cov, dtype=F64)
    return GaussianMixtureDenoiser(torch.ones(1), mean[None], cov[None], shape=shape)
