"""A small CNN that reads the four attributes of a captioned-shapes image, and prompt accuracy.

Text-to-image models trained on ``kuosan.data.shapes`` are judged by whether their images show what
the prompt asks for: the classifier predicts shape, colour, size and position of a (B, 3, 32, 32)
image in [-1, 1], and ``prompt_accuracy`` compares the predictions with the attributes the prompts
name. Its weights ship in ``weights/shapes_classifier.safetensors`` (trained by
``scripts/train_shapes_classifier.py`` on the training stream, with mild noise, blur and colour
jitter so slightly imperfect generated images are still read right); the constructor arguments
travel in the file's safetensors metadata, so the file rebuilds the network.

Network (x: (B, 3, 32, 32) in [-1, 1]; c1, c2, c3 = channels):

    conv3x3 3->c1, GELU, maxpool 2 (16x16), conv3x3 c1->c2, GELU, maxpool 2 (8x8),
    conv3x3 c2->c3, GELU, maxpool 2 (4x4), flatten (16 c3) -> linear -> feature_dim, GELU = features(x)
    -> one linear head per attribute: forward(x) = {key: logits (B, len(ATTRIBUTES[key]))}
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from kuosan.data.shapes import ATTRIBUTES
from kuosan.judges.shipped import load_shipped

WEIGHTS_PATH = Path(__file__).parent / "weights" / "shapes_classifier.safetensors"


class ShapesClassifier(nn.Module):
    """CNN for (B, 3, 32, 32) shapes images in [-1, 1]: ``forward`` gives a dict of logits, one
    (B, len(ATTRIBUTES[key])) tensor per attribute; ``features`` the shared (B, feature_dim) trunk."""

    def __init__(self, *, channels: tuple[int, int, int] = (16, 32, 64), feature_dim: int = 64):
        super().__init__()
        c1, c2, c3 = channels
        self.config = {"channels": [c1, c2, c3], "feature_dim": feature_dim}
        self.trunk = nn.Sequential(
            nn.Conv2d(3, c1, 3, padding=1),
            nn.GELU(),
            nn.MaxPool2d(2),
            nn.Conv2d(c1, c2, 3, padding=1),
            nn.GELU(),
            nn.MaxPool2d(2),
            nn.Conv2d(c2, c3, 3, padding=1),
            nn.GELU(),
            nn.MaxPool2d(2),
            nn.Flatten(),
            nn.Linear(16 * c3, feature_dim),
            nn.GELU(),
        )
        self.heads = nn.ModuleDict({key: nn.Linear(feature_dim, len(values)) for key, values in ATTRIBUTES.items()})

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, 32, 32) -> (B, feature_dim)."""
        if x.ndim != 4 or x.shape[1:] != (3, 32, 32):
            raise ValueError(f"ShapesClassifier expects (B, 3, 32, 32) images, got {tuple(x.shape)}")
        return self.trunk(x)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """(B, 3, 32, 32) -> {attribute: (B, num_values) logits}."""
        h = self.features(x)
        return {key: head(h) for key, head in self.heads.items()}


def load_shapes_classifier(path: str | Path | None = None) -> ShapesClassifier:
    """The trained classifier in eval mode, from ``path`` (default: the shipped weights)."""
    return load_shipped(
        Path(path) if path is not None else WEIGHTS_PATH,
        lambda config, _: ShapesClassifier(**config),
        what="shapes classifier",
        script="scripts/train_shapes_classifier.py",
    )


@torch.no_grad()
def predict_attributes(
    images: torch.Tensor, *, classifier: ShapesClassifier | None = None, batch_size: int = 512
) -> dict[str, torch.Tensor]:
    """Predicted attribute indices {key: (N,) int64} of images (N, 3, 32, 32) in [-1, 1] (clamped)."""
    model = classifier if classifier is not None else load_shapes_classifier()
    model.eval()
    out: dict[str, list[torch.Tensor]] = {key: [] for key in ATTRIBUTES}
    for chunk in images.detach().cpu().float().clamp(-1.0, 1.0).split(batch_size):
        for key, logits in model(chunk).items():
            out[key].append(logits.argmax(1))
    return {key: torch.cat(v) for key, v in out.items()}


def prompt_accuracy(
    images: torch.Tensor,
    attributes: dict[str, torch.Tensor],
    named: dict[str, torch.Tensor] | None = None,
    *,
    classifier: ShapesClassifier | None = None,
) -> dict[str, float]:
    """How often images show what their prompts ask for, as read by the shapes classifier.

    ``attributes[key]`` (N,) are the prompted indices into ``ATTRIBUTES[key]``; ``named[key]`` (N,)
    bool says whether the prompt names that attribute (default: all named). Returns
    ``{key: accuracy over the images whose prompt names key}`` (NaN if none does), ``"all_named"``:
    the share of images where the classifier agrees with every attribute the prompt names, and
    ``"n"``: the number of images.
    """
    n = len(images)
    if images.ndim != 4 or images.shape[1:] != (3, 32, 32) or n == 0:
        raise ValueError(f"prompt_accuracy expects images of shape (N >= 1, 3, 32, 32), got {tuple(images.shape)}")
    if set(attributes) != set(ATTRIBUTES):
        raise ValueError(f"prompt_accuracy needs attributes for {', '.join(ATTRIBUTES)}, got {', '.join(attributes)}")
    if named is None:
        named = {key: torch.ones(n, dtype=torch.bool) for key in ATTRIBUTES}
    for key in ATTRIBUTES:
        if attributes[key].shape != (n,) or named[key].shape != (n,):
            raise ValueError(f"attributes[{key!r}] and named[{key!r}] must have shape ({n},)")
    predicted = predict_attributes(images, classifier=classifier)
    report: dict[str, float] = {}
    all_ok = torch.ones(n, dtype=torch.bool)
    for key in ATTRIBUTES:
        mask = named[key].cpu().bool()
        correct = predicted[key] == attributes[key].cpu().long()
        report[key] = float(correct[mask].float().mean()) if mask.any() else float("nan")
        all_ok &= correct | ~mask
    report["all_named"] = float(all_ok.float().mean())
    report["n"] = n
    return report


__all__ = ["ShapesClassifier", "WEIGHTS_PATH", "load_shapes_classifier", "predict_attributes", "prompt_accuracy"]
