"""Evaluation metrics: the Frechet distance (FID's formula) and a digits classifier to judge samples.

``frechet``: ``gaussian_stats``, ``frechet_distance``, ``frechet_distance_from_features``.
``digits_classifier``: ``DigitClassifier``, ``load_digit_classifier``, ``digit_quality``.
``fid``: ``fid``, ``DigitsFeatureExtractor``, ``reference_stats`` (cached .npz statistics);
``inception``: ``InceptionFeatureExtractor`` (the FID Inception-v3 from a weights file);
``kid``: ``kid``; ``precision_recall``: ``precision_recall``; ``inception_score``:
``inception_score_from_probs``; ``memorization``: ``memorization_report``;
``evaluate``: ``evaluate_samples`` (every metric of a bundled data set, ``kuosan eval``).
"""
from kuosan.metrics.digits_classifier import DigitClassifier, digit_quality, load_digit_classifier
from kuosan.metrics.evaluate import evaluate_samples
from kuosan.metrics.fid import DigitsFeatureExtractor, fid, reference_stats
from kuosan.metrics.frechet import frechet_distance, frechet_distance_from_features, gaussian_stats
from kuosan.metrics.inception import InceptionFeatureExtractor
from kuosan.metrics.inception_score import inception_score_from_probs
from kuosan.metrics.kid import kid
from kuosan.metrics.memorization import memorization_report
from kuosan.metrics.precision_recall import precision_recall

__all__ = [
    "DigitClassifier",
    "DigitsFeatureExtractor",
    "InceptionFeatureExtractor",
    "digit_quality",
    "evaluate_samples",
    "fid",
    "frechet_distance",
    "frechet_distance_from_features",
    "gaussian_stats",
    "inception_score_from_probs",
    "kid",
    "load_digit_classifier",
    "memorization_report",
    "precision_recall",
    "reference_stats",
]
