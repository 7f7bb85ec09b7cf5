"""Every sample-quality metric of any images against any reference, in the Inception-v3 feature
space FID defines (what ``kuosan eval SAMPLES --ref REF`` prints):

- ``fid``: the Frechet distance of Gaussians fitted to the pool3 features (:mod:`kuosan.metrics.fid`);
- ``kid``, ``kid_std``: the unbiased polynomial-kernel MMD^2 over random subsets (torch-fidelity's
  protocol, :mod:`kuosan.metrics.kid`);
- ``precision``, ``recall``, ``f_score``: k-NN manifolds (Kynkaanniemi et al. 2019, k = 3);
- ``is``, ``is_std``: the Inception Score of the samples from the network's 1008 logits (10 splits,
  torch-fidelity's choice of all 1008 classes), and ``is_ref`` of the reference.

A reference given as statistics only ((mu, sigma), e.g. a .npz written by pytorch-fid or by
``cache``) yields the FID alone. ``cache`` (an .npz) keeps the reference's mu, sigma and features,
keyed by the extractor's name and the images' content hash: a cache for other images or another
network is recomputed, never reused.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from kuosan.metrics.fid import data_fingerprint, load_stats, save_stats
from kuosan.metrics.frechet import frechet_distance, gaussian_stats
from kuosan.metrics.inception_score import inception_score_from_probs
from kuosan.metrics.kid import kid
from kuosan.metrics.precision_recall import precision_recall


def reference_features(extractor, images: torch.Tensor, *, cache=None, progress: bool = False):
    """(mu, sigma, features, logits) of reference images, from ``cache`` when it holds this extractor's
    features of these images (logits are not cached: None then), else computed and cached."""
    fingerprint = data_fingerprint(images)
    if cache is not None and Path(cache).is_file():
        mu, sigma, meta = load_stats(cache)
        if meta.get("extractor") == extractor.name and meta.get("data_sha256") == fingerprint:
            with np.load(Path(cache), allow_pickle=False) as f:
                if "features" in f.files:
                    return mu, sigma, f["features"].astype(np.float64), None
    feats, logits = extractor.features_and_logits(images, progress=progress)
    feats = feats.numpy()
    mu, sigma = gaussian_stats(feats)
    if cache is not None:
        save_stats(
            cache,
            mu,
            sigma,
            arrays={"features": feats.astype(np.float32)},
            extractor=extractor.name,
            data_sha256=fingerprint,
            n=int(len(images)),
        )
    return mu, sigma, feats, logits


def image_report(
    samples: torch.Tensor,
    reference,
    extractor,
    *,
    cache=None,
    kid_subsets: int = 100,
    kid_subset_size: int = 1000,
    seed: int = 0,
    progress: bool = False,
) -> dict:
    """The module doc's metrics of ``samples`` (N, C, H, W) in [-1, 1] against ``reference`` (images, or
    a (mu, sigma) tuple), in ``extractor``'s features (an :class:`InceptionFeatureExtractor`)."""
    if len(samples) < 2:
        raise ValueError(f"need at least 2 samples, got {len(samples)}")
    feats, logits = extractor.features_and_logits(samples, progress=progress)
    feats = feats.numpy()
    mu_g, sigma_g = gaussian_stats(feats)
    report = {"n": int(len(samples)), "extractor": extractor.name}
    probs = logits.softmax(1)
    splits = min(10, len(samples))
    report.update(inception_score_from_probs(probs, splits=splits))
    if isinstance(reference, tuple):
        mu_r, sigma_r = reference
        report["fid"] = frechet_distance(mu_g, sigma_g, mu_r, sigma_r)
        report["reference"] = "statistics (FID only)"
        return report
    if len(reference) < 2:
        raise ValueError(f"need at least 2 reference images, got {len(reference)}")
    mu_r, sigma_r, feats_r, logits_r = reference_features(extractor, reference, cache=cache, progress=progress)
    report["n_ref"] = int(len(reference))
    report["fid"] = frechet_distance(mu_g, sigma_g, mu_r, sigma_r)
    k = kid(feats_r, feats, subsets=kid_subsets, subset_size=kid_subset_size, seed=seed)
    report.update(kid=k["kid"], kid_std=k["kid_std"], kid_subset_size=k["subset_size"])
    if min(len(feats), len(feats_r)) > 3:  # the k = 3 nearest neighbours need 4 points
        report.update(precision_recall(feats_r, feats))
    if logits_r is not None:
        report["is_ref"] = inception_score_from_probs(logits_r.softmax(1), splits=min(10, len(reference)))["is"]
    return report


__all__ = ["image_report", "reference_features"]
