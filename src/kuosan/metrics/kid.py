r"""Kernel Inception Distance (Binkowski et al. 2018): the unbiased estimate of the squared maximum mean
discrepancy between two feature sets under the cubic polynomial kernel, averaged over random subsets,
as torch-fidelity computes it (``metric_kid.py``: 100 subsets of 1000, degree 3, gamma = 1/D, coef0 = 1).

Kernel: :math:`k(x, y) = (\gamma\, x^\top y + c_0)^d`. For subsets X, Y of m samples each the unbiased
estimator (Gretton et al. 2012, Lemma 6) is

.. math::
    \widehat{\mathrm{MMD}}^2_u = \frac{1}{m(m-1)} \sum_{i \ne j} \bigl(k(x_i, x_j) + k(y_i, y_j)\bigr)
                                  - \frac{2}{m^2} \sum_{i, j} k(x_i, y_j).

It can be negative (it is unbiased, not a distance); KID is its mean over subsets, and the spread
over subsets is reported as the standard deviation (``np.std``, as torch-fidelity). All in float64.
"""

from __future__ import annotations

import numpy as np

from kuosan.metrics.frechet import _as_float64


def polynomial_kernel(
    x: np.ndarray, y: np.ndarray, *, degree: int = 3, gamma: float | None = None, coef0: float = 1.0
) -> np.ndarray:
    """k(x_i, y_j) = (gamma x_i . y_j + coef0)^degree, gamma = 1 / D by default; (N, D), (M, D) -> (N, M)."""
    gamma = 1.0 / x.shape[1] if gamma is None else gamma
    return (x @ y.T * gamma + coef0) ** degree


def mmd2_unbiased(k_xx: np.ndarray, k_xy: np.ndarray, k_yy: np.ndarray) -> float:
    """The unbiased MMD^2 (module doc) from the three m x m kernel matrices."""
    m = k_xx.shape[0]
    if k_xx.shape != (m, m) or k_yy.shape != (m, m) or k_xy.shape != (m, m) or m < 2:
        raise ValueError("mmd2_unbiased needs square kernel matrices of one size m >= 2")
    within = (k_xx.sum() - np.trace(k_xx) + k_yy.sum() - np.trace(k_yy)) / (m * (m - 1))
    return float(within - 2.0 * k_xy.sum() / (m * m))


def _within(k: np.ndarray) -> float:
    """Sum of a kernel matrix without its diagonal: sum_{i != j} k_ij."""
    return float(k.sum() - np.trace(k))


def kid(
    features_real,
    features_fake,
    *,
    subsets: int = 100,
    subset_size: int = 1000,
    degree: int = 3,
    gamma: float | None = None,
    coef0: float = 1.0,
    seed: int = 2020,
) -> dict:
    """KID between two feature sets (N, D), (M, D): {"kid": mean, "kid_std": std over subsets,
    "subset_size": m, "subsets": n}.

    Each subset draws m = min(subset_size, N, M) rows of each set without replacement from
    ``np.random.RandomState(seed)`` (torch-fidelity's order of draws: real, then fake). torch-fidelity
    refuses sets smaller than ``subset_size``; here m shrinks to fit and is reported.
    """
    x, y = _as_float64(features_real), _as_float64(features_fake)
    if x.ndim != 2 or y.ndim != 2 or x.shape[1] != y.shape[1]:
        raise ValueError(f"kid needs feature sets (N, D) and (M, D), got {x.shape} and {y.shape}")
    m = min(subset_size, len(x), len(y))
    if m < 2:
        raise ValueError("kid needs at least 2 samples in each set")
    rng = np.random.RandomState(seed)
    values = np.empty(subsets)
    kw = {"degree": degree, "gamma": gamma, "coef0": coef0}
    # a set no larger than m enters every subset whole (permuted): its within-set sum is computed once
    full = {
        id(x): _within(polynomial_kernel(x, x, **kw)) if len(x) == m else None,
        id(y): _within(polynomial_kernel(y, y, **kw)) if len(y) == m else None,
    }
    for i in range(subsets):
        ia, ib = rng.choice(len(x), m, replace=False), rng.choice(len(y), m, replace=False)
        a, b = x[ia], y[ib]
        sa = full[id(x)] if full[id(x)] is not None else _within(polynomial_kernel(a, a, **kw))
        sb = full[id(y)] if full[id(y)] is not None else _within(polynomial_kernel(b, b, **kw))
        values[i] = (sa + sb) / (m * (m - 1)) - 2.0 * polynomial_kernel(a, b, **kw).sum() / (m * m)
    return {"kid": float(values.mean()), "kid_std": float(values.std()), "subset_size": int(m), "subsets": int(subsets)}


__all__ = ["kid", "mmd2_unbiased", "polynomial_kernel"]
