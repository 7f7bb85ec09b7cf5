r"""Inception Score (Salimans et al. 2016), computed from any classifier's class probabilities; kuosan
computes it for digits with its own digits classifier (``kuosan.judges.digits``), as an
"Inception-Score-style" figure (Inception-v3 knows no 8x8 digits).

.. math::
    \mathrm{IS} = \exp\Bigl(\mathbb E_x\, \mathrm{KL}\bigl(p(y \mid x) \,\|\, p(y)\bigr)\Bigr),
    \qquad p(y) = \mathbb E_x\, p(y \mid x),

on each of ``splits`` equal parts of the samples; the mean and standard deviation over parts are
reported (the original protocol, 10 splits; torch-fidelity's ``metric_isc.py``). It lies in
[1, number of classes]: 1 when every sample gets the same prediction, the number of classes when
predictions are confident and classes are used equally.
"""

from __future__ import annotations

import numpy as np

from kuosan.metrics.frechet import _as_float64


def inception_score_from_probs(probs, *, splits: int = 10, seed: int | None = None) -> dict:
    """{"is": mean, "is_std": std} over ``splits`` parts of probs (N, K) (rows sum to 1). Rows are
    shuffled first with ``np.random.RandomState(seed)`` when ``seed`` is given (torch-fidelity shuffles;
    the original code does not). Computed in float64; 0 log 0 = 0."""
    p = _as_float64(probs)
    if p.ndim != 2 or len(p) < splits or splits < 1:
        raise ValueError(f"need probabilities (N >= splits, K) and splits >= 1, got {p.shape}, splits={splits}")
    if seed is not None:
        p = p[np.random.RandomState(seed).permutation(len(p))]
    scores = []
    for part in np.array_split(p, splits):
        marginal = part.mean(0, keepdims=True)
        with np.errstate(divide="ignore", invalid="ignore"):
            kl = np.where(part > 0, part * (np.log(part) - np.log(marginal)), 0.0).sum(1)
        scores.append(np.exp(kl.mean()))
    scores = np.asarray(scores)
    return {"is": float(scores.mean()), "is_std": float(scores.std())}


__all__ = ["inception_score_from_probs"]
