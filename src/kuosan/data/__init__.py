"""Datasets, each held in memory as one float32 tensor (the trainer indexes batches from it); image
files too large for that are streamed, decoded as batches draw them (``streaming.py``).

One file per source: ``digits`` (sklearn's 8x8 digits), ``toy2d`` (2-D toy distributions),
``image_folder`` (a folder of image files), ``shapes`` (captioned synthetic shapes). ``load_dataset``
picks one by name:

- ``"digits"``: ``load_digits(**kwargs)`` (kwargs: ``split``, ``test_fraction``, ``split_seed``);
- ``"toy2d:<name>"``: ``sample_toy2d(name, n, generator=...)`` (kwargs: ``n`` (required), ``generator``);
- ``"folder:<path>"``: ``load_image_folder(path, **kwargs)`` (kwargs: ``size``, ``channels``, ``crop``);
- ``"shapes"``: ``make_shapes(n, seed).images``, images only (kwargs: ``n`` and ``seed``, both required).
"""

from __future__ import annotations

from typing import Any

import torch

from kuosan.data.digits import (
    DIGITS_BIN_WIDTH,
    DIGITS_NUM_LEVELS,
    DIGITS_SPLITS,
    load_digits,
    load_digits_with_labels,
)
from kuosan.data.errors import DataError
from kuosan.data.image_folder import IMAGE_EXTENSIONS, find_images, load_image_folder
from kuosan.data.shapes import make_shapes
from kuosan.data.toy2d import TOY2D_NAMES, sample_toy2d

DATASET_NAMES = ("digits", *(f"toy2d:{name}" for name in TOY2D_NAMES), "folder:<path>", "shapes")

__all__ = [
    "DATASET_NAMES",
    "DIGITS_BIN_WIDTH",
    "DIGITS_NUM_LEVELS",
    "DIGITS_SPLITS",
    "DataError",
    "IMAGE_EXTENSIONS",
    "TOY2D_NAMES",
    "find_images",
    "load_dataset",
    "load_digits",
    "load_digits_with_labels",
    "load_image_folder",
    "make_shapes",
    "sample_toy2d",
]


def load_dataset(name: str, **kwargs: Any) -> torch.Tensor:
    """The dataset called ``name`` (one of ``DATASET_NAMES``) as one tensor; ``kwargs`` go to its loader."""
    source, _, argument = name.partition(":")
    if name == "digits":
        return load_digits(**kwargs)
    if source == "toy2d" and argument in TOY2D_NAMES:
        if "n" not in kwargs:
            raise DataError(f"dataset {name!r} needs the number of samples n=")
        return sample_toy2d(argument, **kwargs)
    if source == "folder" and argument:
        return load_image_folder(argument, **kwargs)
    if name == "shapes":
        unknown = set(kwargs) - {"n", "seed"}
        if "n" not in kwargs or "seed" not in kwargs or unknown:
            given = ", ".join(sorted(kwargs)) or "none"
            raise DataError(f"dataset 'shapes' takes exactly n= and seed=, got {given}")
        return make_shapes(kwargs["n"], kwargs["seed"]).images
    raise DataError(f"unknown dataset {name!r}; known: {', '.join(DATASET_NAMES)}")
