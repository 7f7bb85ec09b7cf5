"""The UCI handwritten digits (scikit-learn's copy): 1797 greyscale 8x8 images of the digits 0-9.

The data ship inside scikit-learn (no download) and are small enough to hold as one float32 tensor.

Pixel values. The originals are integer counts 0..16 (each pixel counts "on" pixels of a 4x4 block of a
32x32 bitmap), so the data have exactly 17 grey levels. They are mapped to [-1, 1] by ``x / 8 - 1``:
the levels are ``-1, -7/8, ..., 7/8, 1``, evenly spaced with bin width ``2 / 16 = 1/8``. A
discretized likelihood (bits/dim) for this data must therefore use 17 levels and bin width 1/8
(``DIGITS_NUM_LEVELS``, ``DIGITS_BIN_WIDTH``), not the 256 levels / width 2/255 of 8-bit images.

Splits. ``"train"`` and ``"test"`` are a fixed split stratified by label
(``sklearn.model_selection.train_test_split(..., stratify=labels, random_state=split_seed)``): the
same arguments always give the same split, and each class keeps its share in both parts. Rows keep
the dataset's original order. ``"all"`` is the whole set in the original order.
"""

from __future__ import annotations

import numpy as np
import torch

from kuosan.data.errors import DataError

DIGITS_SPLITS = ("train", "test", "all")
DIGITS_NUM_LEVELS = 17
DIGITS_BIN_WIDTH = 2.0 / 16


def load_digits_with_labels(
    split: str = "train", *, test_fraction: float = 0.2, split_seed: int = 0
) -> tuple[torch.Tensor, torch.Tensor]:
    """Digits images and labels: ``(images (N, 1, 8, 8) float32 in [-1, 1], labels (N,) int64)``.

    ``split`` is ``"train"``, ``"test"`` or ``"all"``; ``test_fraction`` is the share of the 1797
    images in the test split (rounded up by scikit-learn: 0.2 gives 360 test, 1437 train).
    """
    if split not in DIGITS_SPLITS:
        raise DataError(f"unknown digits split {split!r}; expected one of {', '.join(DIGITS_SPLITS)}")
    if not 0.0 < test_fraction < 1.0:
        raise DataError(f"digits test_fraction must be in (0, 1), got {test_fraction!r}")
    # Imported here: scikit-learn takes about a second to import and only this loader needs it.
    from sklearn.datasets import load_digits as sklearn_load_digits
    from sklearn.model_selection import train_test_split

    bunch = sklearn_load_digits()
    pixels = np.asarray(bunch.images)  # (1797, 8, 8), float64 integer values 0..16
    labels = np.asarray(bunch.target)
    if split != "all":
        train_idx, test_idx = train_test_split(
            np.arange(len(labels)), test_size=test_fraction, stratify=labels, random_state=split_seed
        )
        rows = np.sort(train_idx if split == "train" else test_idx)
        pixels, labels = pixels[rows], labels[rows]
    images = torch.from_numpy(pixels.astype(np.float32)).unsqueeze(1) / 8.0 - 1.0  # exact in float32
    return images.contiguous(), torch.from_numpy(labels.astype(np.int64))


def load_digits(split: str = "train", *, test_fraction: float = 0.2, split_seed: int = 0) -> torch.Tensor:
    """Digits images, shape (N, 1, 8, 8), float32 in [-1, 1] with 17 grey levels (see module doc)."""
    images, _ = load_digits_with_labels(split, test_fraction=test_fraction, split_seed=split_seed)
    return images
