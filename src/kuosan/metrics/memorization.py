r"""Memorisation check: how close generated samples lie to the training set, calibrated by a held-out
split of the same data (images the model never saw, drawn from the same distribution).

For each point q, d_1(q) and d_2(q) are its Euclidean distances to the nearest and second-nearest
training image (in pixel space by default, or in any feature space). A model that generalises puts
its samples about as far from the training set as fresh data are; a model that copies puts them
closer. Reported:

- ``nn_dist_median`` / ``heldout_nn_dist_median``: median d_1 of the samples / of the held-out
  images; ``nn_dist_ratio`` their ratio (about 1 or more: no sign of copying; << 1: copying);
- ``below_heldout_p05``: share of samples with d_1 below the 5th percentile of the held-out d_1
  (about 0.05 for a model that does not copy);
- ``copy_fraction``: share of samples with d_1 / d_2 < 1/3, the memorisation criterion of Yoon et al.
  2023 ("a sample is memorised when it is three times closer to one training image than to any
  other"), and ``heldout_copy_fraction``, the same share for held-out images (the data's own rate of
  near-duplicates).
"""

from __future__ import annotations

import numpy as np
import torch

from kuosan.metrics.frechet import _as_float64

COPY_RATIO = 1.0 / 3.0


def nearest_two(query, reference, *, block: int = 2048) -> tuple[np.ndarray, np.ndarray]:
    """(d_1, d_2): distances (float64) of each query row to its nearest and second-nearest reference row
    (rows flattened: (N, ...) -> (N, D))."""
    q = torch.from_numpy(_as_float64(query).reshape(len(query), -1))
    r = torch.from_numpy(_as_float64(reference).reshape(len(reference), -1))
    if len(r) < 2:
        raise ValueError("nearest_two needs at least 2 reference rows")
    d = [
        torch.cdist(c, r, compute_mode="donot_use_mm_for_euclid_dist").topk(2, dim=1, largest=False).values
        for c in q.split(block)
    ]
    d = torch.cat(d).numpy()
    return d[:, 0], d[:, 1]


def memorization_report(samples, train, heldout) -> dict:
    """The memorisation figures of the module doc for ``samples`` against ``train``, calibrated by
    ``heldout`` (all (N, ...) arrays or tensors on one scale: pixels or features)."""
    d1, d2 = nearest_two(samples, train)
    h1, h2 = nearest_two(heldout, train)
    copied = (d1 < COPY_RATIO * d2) | (d1 == 0)  # an exact copy counts even if the image is duplicated
    h_copied = (h1 < COPY_RATIO * h2) | (h1 == 0)
    med, h_med = float(np.median(d1)), float(np.median(h1))
    return {
        "nn_dist_median": med,
        "heldout_nn_dist_median": h_med,
        "nn_dist_ratio": med / h_med if h_med > 0 else float("inf"),
        "below_heldout_p05": float((d1 < np.percentile(h1, 5)).mean()),
        "copy_fraction": float(copied.mean()),
        "heldout_copy_fraction": float(h_copied.mean()),
        "n": int(len(d1)),
    }


__all__ = ["memorization_report", "nearest_two"]
