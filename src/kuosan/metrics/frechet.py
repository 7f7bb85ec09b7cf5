r"""The Frechet distance between two Gaussians, the formula behind FID (Heusel et al. 2017).

For :math:`\mathcal N(\mu_1, \Sigma_1)` and :math:`\mathcal N(\mu_2, \Sigma_2)` the squared 2-Wasserstein
(Frechet) distance is (Dowson & Landau 1982, Eq. 1; Heusel et al. 2017, Eq. 6):

.. math::
    d^2 = \lVert \mu_1 - \mu_2 \rVert_2^2 + \operatorname{tr}\Sigma_1 + \operatorname{tr}\Sigma_2
          - 2 \operatorname{tr}\bigl(\Sigma_1^{1/2}\, \Sigma_2\, \Sigma_1^{1/2}\bigr)^{1/2}.

FID is this number for Gaussians fitted (``gaussian_stats``) to network features of real and generated
images. Code names: ``mu1, sigma1, mu2, sigma2`` are :math:`\mu_1, \Sigma_1, \mu_2, \Sigma_2`.

How the trace term is computed. The usual code (pytorch-fid) takes ``scipy.linalg.sqrtm(S1 @ S2)``:
a general (Schur) square root of a non-symmetric matrix, which goes complex or loses accuracy when the
covariances are near-singular, and needs an ``eps * I`` fallback. Here

.. math::
    \operatorname{tr}\bigl(\Sigma_1^{1/2} \Sigma_2 \Sigma_1^{1/2}\bigr)^{1/2}
    = \lVert \Sigma_1^{1/2} \Sigma_2^{1/2} \rVert_* = \sum_i s_i\bigl(\Sigma_1^{1/2} \Sigma_2^{1/2}\bigr),

the nuclear norm (with :math:`A = \Sigma_1^{1/2} \Sigma_2^{1/2}`, :math:`A A^\top` is the matrix
under the root): each square root from a symmetric ``eigh`` in float64, then the singular values of
their product. Singular values are accurate to eps times the largest, so nothing is squared: the
eigenvalues of :math:`\Sigma_1^{1/2} \Sigma_2 \Sigma_1^{1/2}` span the squared range and lose the
small end (an earlier version cut them at D eps max and was biased upwards by 1e-5 at d = 512 for
eigenvalues down to 1e-10). The only cut is on each covariance's eigenvalues, at D eps max(w)
(numpy's ``matrix_rank`` tolerance), where rounding noise would otherwise leak sqrt(noise) into the
root; what it drops is below D^2 eps max(w) in total. Rank-deficient covariances (fewer samples than
features, dead features) need no regularisation.
"""

from __future__ import annotations

import numpy as np
import torch

ArrayLike = torch.Tensor | np.ndarray


def _as_float64(x: ArrayLike) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        x = x.detach().to(device="cpu", dtype=torch.float64).numpy()
    return np.asarray(x, dtype=np.float64)


def gaussian_stats(features: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    """Mean ``mu`` (D,) and unbiased covariance ``sigma`` (D, D) of ``features`` (N, D), in float64.

    ``features`` of shape (N,) are read as N one-dimensional features; (N, ...) is flattened to
    (N, D). The covariance divides by N - 1, so N >= 2 is required.
    """
    feats = _as_float64(features)
    if feats.ndim == 1:
        feats = feats[:, None]
    feats = feats.reshape(feats.shape[0], -1)
    if feats.shape[0] < 2:
        raise ValueError(f"gaussian_stats needs at least 2 samples, got {feats.shape[0]}")
    if not np.isfinite(feats).all():
        raise ValueError("gaussian_stats got non-finite features")
    mu = feats.mean(axis=0)
    centered = feats - mu
    sigma = centered.T @ centered / (feats.shape[0] - 1)
    return mu, sigma


def _sym(a: np.ndarray) -> np.ndarray:
    return 0.5 * (a + a.T)


def _clamp_eigenvalues(w: np.ndarray) -> np.ndarray:
    """Eigenvalues of a PSD matrix with rounding noise removed: those <= D * eps * max(w) become 0.

    The cut is numpy's ``matrix_rank`` tolerance. Below it an eigenvalue is indistinguishable from
    rounding error, and its square root (~1e-8 relative) would otherwise leak into the trace term, making
    the result depend on round-off (and slightly asymmetric) for rank-deficient covariances.
    """
    tol = w.shape[0] * np.finfo(np.float64).eps * max(float(w.max(initial=0.0)), 0.0)
    return np.where(w > tol, w, 0.0)


def _psd_sqrt(a: np.ndarray) -> np.ndarray:
    """Square root of a symmetric PSD matrix: V diag(sqrt(w_clamped)) V^T from ``eigh``."""
    w, v = np.linalg.eigh(_sym(a))
    return (v * np.sqrt(_clamp_eigenvalues(w))) @ v.T


def frechet_distance(mu1: ArrayLike, sigma1: ArrayLike, mu2: ArrayLike, sigma2: ArrayLike) -> float:
    r"""Squared Frechet distance between N(mu1, sigma1) and N(mu2, sigma2) (module doc formula).

    .. math::
        \lVert \mu_1 - \mu_2 \rVert^2 + \operatorname{tr}\Sigma_1 + \operatorname{tr}\Sigma_2
        - 2 \sum_i s_i\bigl(\Sigma_1^{1/2} \Sigma_2^{1/2}\bigr)

    with each :math:`\Sigma^{1/2}` from ``eigh`` (eigenvalues within round-off of 0, <= D * eps * the
    largest, count as 0) and :math:`s_i` the singular values. Computed in float64; inputs may be
    tensors or arrays, sigmas are symmetrized. The exact value is >= 0, so rounding below 0 is
    returned as 0.0.
    """
    m1, m2 = np.atleast_1d(_as_float64(mu1)), np.atleast_1d(_as_float64(mu2))
    s1, s2 = np.atleast_2d(_as_float64(sigma1)), np.atleast_2d(_as_float64(sigma2))
    d = m1.shape[0]
    if m1.shape != (d,) or m2.shape != (d,) or s1.shape != (d, d) or s2.shape != (d, d):
        raise ValueError(
            f"shape mismatch: mu1 {m1.shape}, sigma1 {s1.shape}, mu2 {m2.shape}, sigma2 {s2.shape}; "
            f"expected ({d},) means and ({d}, {d}) covariances"
        )
    if not all(np.isfinite(a).all() for a in (m1, m2, s1, s2)):
        raise ValueError("frechet_distance got non-finite statistics")
    s1, s2 = _sym(s1), _sym(s2)
    tr_covmean = np.linalg.svd(_psd_sqrt(s1) @ _psd_sqrt(s2), compute_uv=False).sum()
    diff = m1 - m2
    value = float(diff @ diff + np.trace(s1) + np.trace(s2) - 2.0 * tr_covmean)
    return max(value, 0.0)


def frechet_distance_from_features(a: ArrayLike, b: ArrayLike) -> float:
    """Frechet distance between Gaussians fitted to two feature sets (N_a, D) and (N_b, D)."""
    return frechet_distance(*gaussian_stats(a), *gaussian_stats(b))
