"""Sample-quality metrics that know no data set: each takes images or features and returns numbers.

``frechet``: ``gaussian_stats``, ``frechet_distance``, ``frechet_distance_from_features``;
``fid``: ``fid``, ``reference_stats`` (cached .npz statistics) over any feature extractor;
``inception``: ``InceptionFeatureExtractor`` (the FID Inception-v3 from a weights file);
``kid``: ``kid``; ``precision_recall``: ``precision_recall``; ``inception_score``:
``inception_score_from_probs``; ``memorization``: ``memorization_report``; ``reconstruction``: PSNR and
reconstruction pictures; ``clip_score``: ``clip_score``, ``info_nce_loss``, ``load_clip`` (a
transformers CLIP from a local directory).

The judges of kuosan's own data sets (the digits and shapes classifiers, the shapes CLIP, with their
weights) and the evaluation suites built on them are in ``kuosan.judges``.
"""

from kuosan.metrics.clip_score import clip_score, info_nce_loss, load_clip
from kuosan.metrics.fid import fid, reference_stats
from kuosan.metrics.frechet import frechet_distance, frechet_distance_from_features, gaussian_stats
from kuosan.metrics.inception import InceptionFeatureExtractor
from kuosan.metrics.inception_score import inception_score_from_probs
from kuosan.metrics.kid import kid
from kuosan.metrics.memorization import memorization_report
from kuosan.metrics.precision_recall import precision_recall

__all__ = [
    "InceptionFeatureExtractor",
    "clip_score",
    "fid",
    "frechet_distance",
    "frechet_distance_from_features",
    "gaussian_stats",
    "info_nce_loss",
    "inception_score_from_probs",
    "kid",
    "load_clip",
    "memorization_report",
    "precision_recall",
    "reference_stats",
]
