"""Evaluation metrics: the Frechet distance (FID's formula) and a digits classifier to judge samples.

``frechet``: ``gaussian_stats``, ``frechet_distance``, ``frechet_distance_from_features``.
``digits_classifier``: ``DigitClassifier``, ``load_digit_classifier``, ``digit_quality``.
``fid``: ``fid``, ``DigitsFeatureExtractor``, ``reference_stats`` (cached .npz statistics);
``inception``: ``InceptionFeatureExtractor`` (the FID Inception-v3 from a weights file);
``kid``: ``kid``; ``precision_recall``: ``precision_recall``; ``inception_score``:
``inception_score_from_probs``; ``memorization``: ``memorization_report``;
``evaluate``: ``evaluate_samples`` (every metric of a bundled data set, ``kuosan eval``);
``shapes_classifier``: ``load_shapes_classifier``, ``prompt_accuracy`` (do images show what captioned-shapes
prompts ask for); ``clip_score``: ``clip_score``, ``info_nce_loss``, ``load_clip`` (a transformers CLIP
from a local directory); ``shapes_clip``: ``load_shapes_clip`` (a small CLIP of the captioned shapes).
"""

from kuosan.metrics.clip_score import clip_score, info_nce_loss, load_clip
from kuosan.metrics.digits_classifier import DigitClassifier, digit_quality, load_digit_classifier
from kuosan.metrics.evaluate import evaluate_samples
from kuosan.metrics.fid import DigitsFeatureExtractor, fid, reference_stats
from kuosan.metrics.frechet import frechet_distance, frechet_distance_from_features, gaussian_stats
from kuosan.metrics.inception import InceptionFeatureExtractor
from kuosan.metrics.inception_score import inception_score_from_probs
from kuosan.metrics.kid import kid
from kuosan.metrics.memorization import memorization_report
from kuosan.metrics.precision_recall import precision_recall
from kuosan.metrics.shapes_classifier import load_shapes_classifier, prompt_accuracy
from kuosan.metrics.shapes_clip import load_shapes_clip

__all__ = [
    "DigitClassifier",
    "DigitsFeatureExtractor",
    "InceptionFeatureExtractor",
    "clip_score",
    "digit_quality",
    "evaluate_samples",
    "fid",
    "frechet_distance",
    "frechet_distance_from_features",
    "gaussian_stats",
    "info_nce_loss",
    "inception_score_from_probs",
    "kid",
    "load_clip",
    "load_digit_classifier",
    "load_shapes_classifier",
    "load_shapes_clip",
    "memorization_report",
    "precision_recall",
    "prompt_accuracy",
    "reference_stats",
]
