"""kuosan's own judges: small networks trained on its bundled data sets, whose weights ship with the
package, and the evaluation suites built on them (``kuosan eval``). The metrics they feed
(``kuosan.metrics``) know no data set.

``digits``: ``DigitClassifier``, ``load_digit_classifier``, ``digit_quality``, ``DigitsFeatureExtractor``
(its features for FD/KID/precision-recall), ``digits_inception_score``;
``shapes``: ``load_shapes_classifier``, ``prompt_accuracy`` (do images show what captioned-shapes prompts
ask for); ``shapes_clip``: ``load_shapes_clip`` (a small CLIP of the captioned shapes);
``evaluate``: ``evaluate_samples`` (every metric for samples of a bundled data set);
``shipped``: the weights-file format (safetensors, constructor arguments in its metadata).
"""

from kuosan.judges.digits import (
    DigitClassifier,
    DigitsFeatureExtractor,
    digit_quality,
    digits_inception_score,
    load_digit_classifier,
)
from kuosan.judges.evaluate import DATASETS, SAMPLE_SHAPES, evaluate_samples
from kuosan.judges.shapes import load_shapes_classifier, prompt_accuracy
from kuosan.judges.shapes_clip import load_shapes_clip

__all__ = [
    "DATASETS",
    "DigitClassifier",
    "DigitsFeatureExtractor",
    "SAMPLE_SHAPES",
    "digit_quality",
    "digits_inception_score",
    "evaluate_samples",
    "load_digit_classifier",
    "load_shapes_classifier",
    "load_shapes_clip",
    "prompt_accuracy",
]
