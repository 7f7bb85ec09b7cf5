"""Every sample-quality metric of a bundled data set in one report (what ``kuosan eval`` prints).

For digits, with the shipped classifier as feature network and the held-out test split (360 images)
as reference:

- ``fd``, ``fd_floor``, ``confident``, ``class_hist``, ``class_entropy``: :func:`digit_quality`;
- ``kid``, ``kid_std`` (unbiased polynomial-kernel MMD^2, :func:`~kuosan.metrics.kid.kid`) and
  ``kid_floor`` (train split vs test split);
- ``precision``, ``recall``, ``f_score`` (k = 3 manifolds,
  :func:`~kuosan.metrics.precision_recall.precision_recall`) and their train-vs-test floors;
- ``is``, ``is_std``: the Inception-Score-style figure on the classifier, and ``is_test`` of the
  test split itself;
- ``memorization``: nearest-neighbour distances to the train split in pixel space, calibrated by
  the test split (:func:`~kuosan.metrics.memorization.memorization_report`);
- with ``inception_weights``: ``fid_inception`` (standard FID network, ``resize`` policy, reference
  statistics cached in ``stats_cache``).

"Floors" are what the real data score against each other: a perfect model approaches them.
"""

from __future__ import annotations

from pathlib import Path

import torch

from kuosan.data.registry import DATASETS as REGISTRY
from kuosan.judges.digits import DigitsFeatureExtractor, digit_quality, load_digit_classifier
from kuosan.metrics.fid import extract_features, fid
from kuosan.metrics.inception_score import inception_score_from_probs
from kuosan.metrics.kid import kid
from kuosan.metrics.memorization import memorization_report
from kuosan.metrics.precision_recall import precision_recall

# each judge's suite and the per-sample shape it takes; the data sets it serves name it
# (data/registry.py, DatasetSpec.judge)
SUITE_SAMPLE_SHAPES = {"digits": (1, 8, 8)}


@torch.no_grad()
def evaluate_digits(
    samples: torch.Tensor,
    *,
    inception_weights: str | Path | None = None,
    resize: str = "tf1-bilinear",
    stats_cache: str | Path | None = None,
    kid_subsets: int = 100,
    seed: int = 0,
    device: torch.device | str = "cpu",
) -> dict:
    """The digits report of the module doc for samples (N >= 10, 1, 8, 8) in [-1, 1]; the Inception
    network runs on ``device`` (the 8x8 classifier on the CPU, where it is fastest)."""
    from kuosan.data import load_digits

    if samples.ndim != 4 or samples.shape[1:] != (1, 8, 8) or samples.shape[0] < 10:
        raise ValueError(f"digit samples must have shape (N >= 10, 1, 8, 8), got {tuple(samples.shape)}")
    samples = samples.detach().cpu().float().clamp(-1, 1)
    train, test = load_digits("train"), load_digits("test")
    classifier = load_digit_classifier()
    ext = DigitsFeatureExtractor(classifier)
    f_s, f_tr, f_te = (extract_features(ext, x) for x in (samples, train, test))

    report = digit_quality(samples, classifier=classifier)
    k = kid(f_te, f_s, subsets=kid_subsets, seed=seed)
    report.update(
        kid=k["kid"],
        kid_std=k["kid_std"],
        kid_subset_size=k["subset_size"],
        kid_floor=kid(f_te, f_tr, subsets=kid_subsets, seed=seed)["kid"],
    )
    pr = precision_recall(f_te, f_s)
    floor = precision_recall(f_te, f_tr)
    report.update(pr, precision_floor=floor["precision"], recall_floor=floor["recall"])
    probs = classifier.head(torch.from_numpy(f_s).float()).softmax(1)
    probs_test = classifier.head(torch.from_numpy(f_te).float()).softmax(1)
    inc = inception_score_from_probs(probs, splits=min(10, len(probs)))
    report.update(inc, is_test=inception_score_from_probs(probs_test, splits=10)["is"])
    report["memorization"] = memorization_report(samples, train, test)
    if inception_weights is not None:
        from kuosan.metrics.inception import InceptionFeatureExtractor

        inception = InceptionFeatureExtractor(inception_weights, resize=resize, device=device)
        report["fid_inception"] = fid(samples, test, inception, cache=stats_cache)
        report["fid_inception_resize"] = resize
    return report


SUITES = {"digits": evaluate_digits}
# the data sets with an evaluation suite, and the shape of their samples
DATASETS = tuple(name for name, spec in REGISTRY.items() if spec.judge in SUITES)
SAMPLE_SHAPES = {name: SUITE_SAMPLE_SHAPES[REGISTRY[name].judge] for name in DATASETS}


def evaluate_samples(samples: torch.Tensor, dataset: str = "digits", **kwargs) -> dict:
    """Report of every metric for samples of a bundled data set (``DATASETS``), by its judge's suite."""
    if dataset not in DATASETS:
        raise ValueError(f"no evaluation suite for dataset {dataset!r}; available: {', '.join(DATASETS)}")
    return SUITES[REGISTRY[dataset].judge](samples, **kwargs)


__all__ = ["DATASETS", "SAMPLE_SHAPES", "SUITES", "evaluate_digits", "evaluate_samples"]
