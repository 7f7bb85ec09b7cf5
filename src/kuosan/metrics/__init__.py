"""Evaluation metrics: the Frechet distance (FID's formula) and a digits classifier to judge samples.

``frechet``: ``gaussian_stats``, ``frechet_distance``, ``frechet_distance_from_features``.
``digits_classifier``: ``DigitClassifier``, ``load_digit_classifier``, ``digit_quality``.
"""
from kuosan.metrics.digits_classifier import DigitClassifier, digit_quality, load_digit_classifier
from kuosan.metrics.frechet import frechet_distance, frechet_distance_from_features, gaussian_stats

__all__ = [
    "DigitClassifier",
    "digit_quality",
    "frechet_distance",
    "frechet_distance_from_features",
    "gaussian_stats",
    "load_digit_classifier",
]
