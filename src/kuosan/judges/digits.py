"""A small CNN that classifies the 8x8 digits, and the digit-sample quality report built on it.

The classifier plays the role Inception-v3 plays for FID on ImageNet-like images (Heusel et al. 2017):
its 128-d penultimate activations are the feature space of a Frechet distance, and its predictions
give an Inception-Score-like view (how confident, how evenly spread over the 10 classes). Its weights
ship in ``weights/digits_classifier.safetensors`` (trained by ``scripts/train_digit_classifier.py``);
the constructor arguments travel in the file's safetensors metadata, so the file rebuilds the network.

Network (x: (B, 1, 8, 8) in [-1, 1]):

    conv3x3 1->32, GELU, conv3x3 32->64, GELU, maxpool 2 (4x4), avgpool 2 (2x2), flatten (256)
    -> linear 256->128, GELU  = features(x), (B, 128)
    -> dropout, linear 128->10 = forward(x), logits
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from kuosan.judges.shipped import load_shipped
from kuosan.metrics.fid import state_fingerprint
from kuosan.metrics.frechet import frechet_distance, gaussian_stats
from kuosan.metrics.inception_score import inception_score_from_probs

WEIGHTS_PATH = Path(__file__).parent / "weights" / "digits_classifier.safetensors"
CONFIDENCE_THRESHOLD = 0.9
NUM_DIGIT_CLASSES = 10


class DigitClassifier(nn.Module):
    """CNN for (B, 1, 8, 8) digits in [-1, 1]: ``forward`` gives logits (B, num_classes),
    ``features`` the penultimate activations (B, feature_dim)."""

    def __init__(
        self,
        *,
        channels: tuple[int, int] = (32, 64),
        feature_dim: int = 128,
        num_classes: int = NUM_DIGIT_CLASSES,
        dropout: float = 0.2,
    ):
        super().__init__()
        c1, c2 = channels
        self.config = {"channels": [c1, c2], "feature_dim": feature_dim, "num_classes": num_classes, "dropout": dropout}
        self.trunk = nn.Sequential(
            nn.Conv2d(1, c1, 3, padding=1),
            nn.GELU(),
            nn.Conv2d(c1, c2, 3, padding=1),
            nn.GELU(),
            nn.MaxPool2d(2),
            nn.AvgPool2d(2),
            nn.Flatten(),
            nn.Linear(4 * c2, feature_dim),
            nn.GELU(),
        )
        self.head = nn.Sequential(nn.Dropout(dropout), nn.Linear(feature_dim, num_classes))

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 1, 8, 8) -> (B, feature_dim) penultimate activations (the Frechet feature space)."""
        if x.shape[1:] != (1, 8, 8):
            raise ValueError(f"DigitClassifier expects (B, 1, 8, 8) images, got {tuple(x.shape)}")
        return self.trunk(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 1, 8, 8) -> (B, num_classes) logits."""
        return self.head(self.features(x))


def load_digit_classifier(path: str | Path | None = None) -> DigitClassifier:
    """The trained classifier in eval mode, from ``path`` (default: the shipped weights)."""
    return load_shipped(
        Path(path) if path is not None else WEIGHTS_PATH,
        lambda config, _: DigitClassifier(**config),
        what="digit classifier",
        script="scripts/train_digit_classifier.py",
    )


@torch.no_grad()
def _classify(model: DigitClassifier, images: torch.Tensor, batch_size: int = 512):
    feats, probs = [], []
    for chunk in images.split(batch_size):
        h = model.features(chunk.clamp(-1.0, 1.0).float())
        feats.append(h)
        probs.append(model.head(h).softmax(dim=1))
    return torch.cat(feats), torch.cat(probs)


def digit_quality(
    samples: torch.Tensor, reference: torch.Tensor | None = None, *, classifier: DigitClassifier | None = None
) -> dict:
    """Quality report of digit samples (N, 1, 8, 8) in [-1, 1] (values outside are clamped).

    Returns a dict with

    - ``"fd"``: Frechet distance (``frechet_distance``) between classifier features of ``samples``
      and of ``reference`` (default: the digits test split, 360 images);
    - ``"fd_floor"``: the same distance between the train and the test split, what a perfect model
      would approach given a finite reference set;
    - ``"confident"``: share of samples whose max softmax probability exceeds 0.9;
    - ``"class_hist"``: the 10 shares of predicted classes; ``"class_entropy"``: its entropy in nats
      (ln 10 = 2.303 for uniform);
    - ``"n"``: the number of samples.

    ``classifier`` reuses a loaded ``DigitClassifier`` (default: ``load_digit_classifier()``).
    """
    from kuosan.data import load_digits  # the reference and floor data

    if samples.ndim != 4 or samples.shape[1:] != (1, 8, 8) or samples.shape[0] < 2:
        raise ValueError(f"digit_quality expects samples of shape (N >= 2, 1, 8, 8), got {tuple(samples.shape)}")
    model = classifier if classifier is not None else load_digit_classifier()
    model.eval()
    samples = samples.detach().cpu()
    test = load_digits("test")
    if reference is None:
        reference = test
    feats, probs = _classify(model, samples)
    ref_feats, _ = _classify(model, reference.detach().cpu())
    train_feats, _ = _classify(model, load_digits("train"))
    test_feats = ref_feats if reference is test else _classify(model, test)[0]

    hist = torch.bincount(probs.argmax(dim=1), minlength=NUM_DIGIT_CLASSES).double() / len(samples)
    nonzero = hist[hist > 0]
    return {
        "fd": frechet_distance(*gaussian_stats(feats), *gaussian_stats(ref_feats)),
        "fd_floor": frechet_distance(*gaussian_stats(train_feats), *gaussian_stats(test_feats)),
        "confident": float((probs.max(dim=1).values > CONFIDENCE_THRESHOLD).double().mean()),
        "class_hist": hist.tolist(),
        "class_entropy": float(-(nonzero * nonzero.log()).sum()),
        "n": int(len(samples)),
    }


class DigitsFeatureExtractor:
    """The 128-d penultimate features of the shipped digits classifier (``digits_classifier.py``) for
    (N, 1, 8, 8) digits in [-1, 1] (clamped)."""

    def __init__(self, classifier=None, *, batch_size: int = 512):
        self.model = classifier if classifier is not None else load_digit_classifier()
        self.model.eval()
        self.batch_size = batch_size
        self.name = f"digits-classifier:{state_fingerprint(self.model)}"

    @torch.no_grad()
    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        chunks = images.detach().cpu().split(self.batch_size)
        return torch.cat([self.model.features(c.clamp(-1, 1).float()) for c in chunks])


@torch.no_grad()
def digits_inception_score(samples: torch.Tensor, *, classifier=None, splits: int = 10, batch_size: int = 512) -> dict:
    """The Inception-Score-style figure of digit samples (N, 1, 8, 8) in [-1, 1] (clamped) under the
    shipped digits classifier (default ``load_digit_classifier()``); at most 10."""
    model = classifier if classifier is not None else load_digit_classifier()
    model.eval()
    chunks = samples.detach().cpu().split(batch_size)
    probs = torch.cat([model(chunk.clamp(-1, 1).float()).softmax(1) for chunk in chunks])
    return inception_score_from_probs(probs, splits=min(splits, len(probs)))


__all__ = [
    "DigitClassifier",
    "DigitsFeatureExtractor",
    "WEIGHTS_PATH",
    "digit_quality",
    "digits_inception_score",
    "load_digit_classifier",
]
