r"""FID with pluggable feature extractors and cached reference statistics (Heusel et al. 2017).

    FID = || mu_r - mu_g ||^2 + tr S_r + tr S_g - 2 tr (S_r^{1/2} S_g S_r^{1/2})^{1/2}

for Gaussians fitted to features of real (r) and generated (g) images: ``frechet.frechet_distance``
(float64, symmetric eigendecompositions, rank-deficient covariances handled). A feature extractor is
any callable ``images (N, C, H, W) in [-1, 1] -> features (N, D)`` with a ``name`` naming its feature
space: :class:`~kuosan.metrics.inception.InceptionFeatureExtractor` (the standard FID network, from a
weights file) or a data set's own judge (:class:`kuosan.judges.digits.DigitsFeatureExtractor`, the
digits classifier).

Cached statistics are ``.npz`` files of float64 arrays (``mu``, ``sigma``) plus string/int metadata
(``extractor``, ``n``, ``data_sha256``), written with ``np.savez`` and read with
``np.load(allow_pickle=False)``: nothing is unpickled. A cache whose extractor name or data
fingerprint differs from the request is recomputed, never silently reused.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Protocol

import numpy as np
import torch

from kuosan.metrics.frechet import frechet_distance, gaussian_stats


class FeatureExtractor(Protocol):
    name: str

    def __call__(self, images: torch.Tensor) -> torch.Tensor: ...


def state_fingerprint(model: torch.nn.Module) -> str:
    """First 12 hex digits of the SHA-256 of a module's weights (names its feature space)."""
    h = hashlib.sha256()
    for key, value in sorted(model.state_dict().items()):
        h.update(key.encode())
        h.update(value.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:12]


def data_fingerprint(images: torch.Tensor) -> str:
    """SHA-256 (first 16 hex digits) of the images' float32 bytes and shape: identifies a reference set."""
    x = images.detach().cpu().float().contiguous().numpy()
    h = hashlib.sha256(str(tuple(x.shape)).encode())
    h.update(x.tobytes())
    return h.hexdigest()[:16]


def save_stats(
    path: str | Path, mu: np.ndarray, sigma: np.ndarray, *, arrays: dict[str, np.ndarray] | None = None, **metadata
) -> Path:
    """Write Gaussian statistics (float64), any further ``arrays`` (e.g. the features themselves) and
    scalar metadata (str/int/float) to ``path`` (.npz), atomically (temporary file, then rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    arrays = {"mu": np.asarray(mu, dtype=np.float64), "sigma": np.asarray(sigma, dtype=np.float64), **(arrays or {})}
    for key, value in metadata.items():
        if not isinstance(value, (str, int, float)):
            raise TypeError(f"metadata {key!r} must be str, int or float, got {type(value).__name__}")
        arrays[key] = np.asarray(value)
    fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".npz")
    os.close(fd)
    try:
        np.savez(tmp, **arrays)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path


def load_stats(path: str | Path) -> tuple[np.ndarray, np.ndarray, dict]:
    """(mu, sigma, metadata) from a statistics file, read with ``allow_pickle=False``."""
    with np.load(Path(path), allow_pickle=False) as f:
        mu, sigma = f["mu"].astype(np.float64), f["sigma"].astype(np.float64)
        meta = {k: f[k].item() for k in f.files if k not in ("mu", "sigma") and f[k].ndim == 0}  # scalars only
    if mu.ndim != 1 or sigma.shape != (mu.shape[0],) * 2:
        raise ValueError(f"{path}: mu {mu.shape} and sigma {sigma.shape} do not form Gaussian statistics")
    return mu, sigma, meta


def extract_features(extractor: Callable, images: torch.Tensor, *, batch_size: int = 1000) -> np.ndarray:
    """Features (N, D) float64 of images (N, ...) in [-1, 1], in batches."""
    feats = [extractor(chunk) for chunk in torch.as_tensor(images).split(batch_size)]
    return torch.cat(feats).detach().cpu().to(torch.float64).numpy()


def reference_stats(
    extractor: FeatureExtractor, images: torch.Tensor, *, cache: str | Path | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """(mu, sigma) of the reference images' features; read from ``cache`` when it holds statistics of
    the same extractor and the same images, else computed (and written to ``cache`` if given)."""
    fingerprint = data_fingerprint(images)
    if cache is not None and Path(cache).is_file():
        mu, sigma, meta = load_stats(cache)
        if meta.get("extractor") == extractor.name and meta.get("data_sha256") == fingerprint:
            return mu, sigma
    mu, sigma = gaussian_stats(extract_features(extractor, images))
    if cache is not None:
        save_stats(cache, mu, sigma, extractor=extractor.name, data_sha256=fingerprint, n=int(len(images)))
    return mu, sigma


def fid(
    samples: torch.Tensor,
    reference: torch.Tensor | tuple[np.ndarray, np.ndarray],
    extractor: FeatureExtractor,
    *,
    cache: str | Path | None = None,
) -> float:
    """FID between ``samples`` and ``reference`` (images, or precomputed (mu, sigma)) in the feature
    space of ``extractor``; ``cache`` stores the reference statistics (see :func:`reference_stats`)."""
    if isinstance(reference, tuple):
        mu_r, sigma_r = reference
    else:
        mu_r, sigma_r = reference_stats(extractor, reference, cache=cache)
    mu_g, sigma_g = gaussian_stats(extract_features(extractor, samples))
    return frechet_distance(mu_g, sigma_g, mu_r, sigma_r)


__all__ = [
    "FeatureExtractor",
    "data_fingerprint",
    "extract_features",
    "fid",
    "load_stats",
    "reference_stats",
    "save_stats",
]
