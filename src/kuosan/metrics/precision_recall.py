r"""Improved precision and recall (Kynkaanniemi et al. 2019) from k-nearest-neighbour manifolds.

Each feature set Phi approximates its manifold by the union of balls around its points, the radius of
each the distance to its k-th nearest neighbour within the set (k = 3):

.. math::
    f(\phi, \Phi) = 1 \iff \exists\, \phi' \in \Phi:\ \lVert \phi - \phi' \rVert_2 \le
                    \lVert \phi' - \mathrm{NN}_k(\phi', \Phi) \rVert_2,

    \mathrm{precision} = \frac{1}{|\Phi_g|} \sum_{\phi_g \in \Phi_g} f(\phi_g, \Phi_r), \qquad
    \mathrm{recall} = \frac{1}{|\Phi_r|} \sum_{\phi_r \in \Phi_r} f(\phi_r, \Phi_g)

(Kynkaanniemi et al. 2019, Eqs. 1-2). Precision: the share of generated samples inside the real
manifold (quality); recall: the share of real samples inside the generated manifold (coverage).
Same definition and k as torch-fidelity's ``metric_prc.py``; distances in float64, in row blocks.
"""

from __future__ import annotations

import numpy as np
import torch

from kuosan.metrics.frechet import _as_float64


def _cdist(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Euclidean distances (float64), exact form sqrt(sum (a - b)^2) via torch.cdist's direct mode."""
    return torch.cdist(a, b, compute_mode="donot_use_mm_for_euclid_dist")


def knn_radii(features, k: int = 3, *, block: int = 2048) -> np.ndarray:
    """Distance of each row of ``features`` (N, D) to its k-th nearest other row (the point itself,
    at distance 0, is not counted). (N,) float64."""
    f = torch.from_numpy(_as_float64(features))
    if not 1 <= k < len(f):
        raise ValueError(f"k must be between 1 and N - 1 = {len(f) - 1}, got {k}")
    radii = [_cdist(chunk, f).kthvalue(k + 1, dim=1).values for chunk in f.split(block)]
    return torch.cat(radii).numpy()


def manifold_coverage(query, support, radii: np.ndarray, *, block: int = 2048) -> np.ndarray:
    """f(q, support) of the module doc for each query row: True where some support point's ball
    (its radius from ``radii``) contains it. (Q,) bool."""
    q, s = torch.from_numpy(_as_float64(query)), torch.from_numpy(_as_float64(support))
    r = torch.from_numpy(np.asarray(radii, dtype=np.float64))
    inside = [(_cdist(chunk, s) <= r[None, :]).any(dim=1) for chunk in q.split(block)]
    return torch.cat(inside).numpy()


def precision_recall(features_real, features_fake, *, k: int = 3) -> dict:
    """{"precision", "recall", "f_score"} of generated features against real ones (N, D), (M, D)
    (module doc). f_score = 2 P R / (P + R), 0 when both are 0."""
    real, fake = _as_float64(features_real), _as_float64(features_fake)
    if real.ndim != 2 or fake.ndim != 2 or real.shape[1] != fake.shape[1]:
        raise ValueError(f"precision_recall needs feature sets (N, D) and (M, D), got {real.shape}, {fake.shape}")
    precision = float(manifold_coverage(fake, real, knn_radii(real, k)).mean())
    recall = float(manifold_coverage(real, fake, knn_radii(fake, k)).mean())
    f_score = 2 * precision * recall / (precision + recall) if precision + recall > 0 else 0.0
    return {"precision": precision, "recall": recall, "f_score": f_score}


__all__ = ["knn_radii", "manifold_coverage", "precision_recall"]
