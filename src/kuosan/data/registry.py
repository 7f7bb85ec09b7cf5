"""The data sets, each described once: what ``data.name`` may say, the shape of a sample, the splits,
the width of the data's grid (for discrete likelihoods), whether it has captions, and the judge that
evaluates samples of it (``kuosan.judges``). Adding a data set is one entry here and its loader.

``data.name`` is ``KIND`` or ``KIND:ARGUMENT`` (``toy2d:moons``, ``folder:/path/to/images``).
:func:`load_split` draws a split with the options of the config's data section and training seed.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from kuosan.data.digits import DIGITS_BIN_WIDTH, DIGITS_SPLITS, load_digits, load_digits_with_labels
from kuosan.data.errors import DataError
from kuosan.data.folder_layouts import captioned_files, class_folders
from kuosan.data.image_folder import decode_images, find_images, readable
from kuosan.data.shapes import SHAPES_EVAL_SEEDS, make_shapes
from kuosan.data.streaming import ImageFiles, decoded_bytes
from kuosan.data.toy2d import TOY2D_NAMES, sample_toy2d

logger = logging.getLogger(__name__)

TOY2D_TEST_SIZE = 10_000  # a fresh draw of this many points is toy2d's "test" split


@dataclass(frozen=True)
class Options:
    """What a loader may use: the config's ``data.n``, ``data.size``, ``data.channels``, the run's
    training seed, and for image files how to read them: ``data.crop``, ``data.flip``,
    ``data.skip_bad``, and ``loader`` ("memory": one decoded tensor; "stream": an
    :class:`~kuosan.data.streaming.ImageFiles` decoded as batches draw it, by ``workers`` processes;
    "auto": a stream when the decoded tensor would pass ``memory_mb`` MiB or the reading is random)."""

    n: int | None = None
    size: int | None = None
    channels: int = 3
    seed: int = 0
    crop: str = "center"
    flip: bool = False
    skip_bad: bool = False
    loader: str = "memory"
    memory_mb: float = 4096.0
    workers: int = 2


@dataclass(frozen=True)
class DatasetSpec:
    """One data set. ``load(argument, split, options)`` -> (N, *sample shape) float32; ``splits``: the
    splits it has ("train" trains); ``bin_width``: the grid of its values in [-1, 1] (None:
    continuous); ``images``: samples are (C, H, W); ``captions``: it carries captions (text conditioning);
    ``judge``: the evaluation suite of ``kuosan.judges`` for its samples (None: none);
    ``load_captioned(argument, split, options)`` -> (images, captions) for a data set with captions;
    ``load_labelled(argument, split, options)`` -> (images, labels (N,) int64, class names) for one
    with class labels."""

    kind: str
    description: str
    load: Callable[[str, str, Options], torch.Tensor]
    splits: tuple[str, ...]
    bin_width: float | None
    images: bool = True
    load_captioned: Callable[[str, str, Options], tuple[torch.Tensor, list[str]]] | None = None
    load_labelled: Callable[[str, str, Options], tuple[torch.Tensor, torch.Tensor, list[str]]] | None = None
    judge: str | None = None
    argument: str | None = None  # what follows "KIND:" in data.name, described (None: takes none)


def _digits(argument: str, split: str, options: Options) -> torch.Tensor:
    return load_digits(split)


def _digits_labelled(argument: str, split: str, options: Options):
    images, labels = load_digits_with_labels(split)
    return images, labels, [str(k) for k in range(10)]


def _toy2d(argument: str, split: str, options: Options) -> torch.Tensor:
    """The training draw from the run's seed; "test" a fresh draw the model never saw."""
    if split == "test":
        return sample_toy2d(argument, TOY2D_TEST_SIZE, generator=torch.Generator().manual_seed(options.seed + 1))
    if options.n is None:
        raise DataError(f"dataset 'toy2d:{argument}' needs the number of samples data.n")
    return sample_toy2d(argument, options.n, generator=torch.Generator().manual_seed(options.seed))


def _streams(files: list[Path], options: Options) -> bool:
    """Whether ``files`` are read as a stream (``Options`` says when)."""
    random = options.flip or options.crop == "random"
    if options.loader == "memory":
        if random:
            raise DataError("data.flip and data.crop=random draw anew at each reading: they need data.loader=stream")
        return False
    if options.loader == "stream" or random:
        return True
    need = decoded_bytes(files, size=options.size, channels=options.channels)
    if need > options.memory_mb * 2**20:
        logger.info(
            "streaming %d images: decoded they take %.0f MiB, over data.memory_mb=%g",
            len(files),
            need / 2**20,
            options.memory_mb,
        )
        return True
    return False


def _images(files: list[Path], options: Options) -> tuple[torch.Tensor | ImageFiles, list[int]]:
    """The ``files`` decoded or as a stream (``Options``), and the positions of those kept (all, unless
    ``skip_bad`` left out some that do not decode)."""
    stream = _streams(files, options)
    kept = readable(files, skip_bad=options.skip_bad) if stream or options.skip_bad else list(range(len(files)))
    files = [files[k] for k in kept]
    decoding = {"size": options.size, "channels": options.channels, "crop": options.crop}
    if stream:
        return ImageFiles(
            files, **decoding, flip=options.flip, seed=options.seed, workers=options.workers, verified=True
        ), kept
    return decode_images(files, **decoding), kept


def _folder(argument: str, split: str, options: Options):
    return _images(find_images(argument), options)[0]


def _folder_captioned(argument: str, split: str, options: Options):
    files, captions = captioned_files(argument)
    images, kept = _images(files, options)
    return images, [captions[k] for k in kept]


def _folder_labelled(argument: str, split: str, options: Options):
    files, labels, names = class_folders(argument)
    images, kept = _images(files, options)
    return images, labels[kept], names


def _shapes_captioned(argument: str, split: str, options: Options) -> tuple[torch.Tensor, list[str]]:
    """Training images from the run's seed; "val" and "test" the fixed evaluation sets."""
    if options.n is None:
        raise DataError("dataset 'shapes' needs the number of images data.n")
    batch = make_shapes(options.n, options.seed if split == "train" else SHAPES_EVAL_SEEDS[split])
    return batch.images, batch.captions


def _shapes(argument: str, split: str, options: Options) -> torch.Tensor:
    return _shapes_captioned(argument, split, options)[0]


DATASETS: dict[str, DatasetSpec] = {
    spec.kind: spec
    for spec in (
        DatasetSpec(
            "digits",
            "scikit-learn's 8x8 digits, 17 grey levels",
            _digits,
            DIGITS_SPLITS,
            DIGITS_BIN_WIDTH,
            judge="digits",
            load_labelled=_digits_labelled,
        ),
        DatasetSpec(
            "toy2d",
            "2-D toy distributions",
            _toy2d,
            ("train", "test"),
            None,
            images=False,
            argument="|".join(TOY2D_NAMES),
        ),
        DatasetSpec(
            "folder",
            "a folder of 8-bit image files (with captions or class sub-folders: data/folder_layouts.py)",
            _folder,
            ("train", "all"),
            2.0 / 255,
            argument="<path>",
            load_captioned=_folder_captioned,
            load_labelled=_folder_labelled,
        ),
        DatasetSpec(
            "shapes",
            "captioned synthetic shapes, 32x32x3",
            _shapes,
            ("train", *SHAPES_EVAL_SEEDS),
            None,
            load_captioned=_shapes_captioned,
        ),
    )
}


def dataset_names() -> list[str]:
    """Every accepted form of ``data.name``."""
    return [f"{s.kind}:{s.argument}" if s.argument else s.kind for s in DATASETS.values()]


def dataset_spec(name: str) -> tuple[DatasetSpec, str]:
    """(spec, argument) of ``data.name``; DataError (one line, the known names) for an unknown one."""
    kind, _, argument = name.partition(":")
    spec = DATASETS.get(kind)
    if spec is None or bool(spec.argument) != bool(argument) or (kind == "toy2d" and argument not in TOY2D_NAMES):
        raise DataError(f"unknown dataset {name!r}; known: {', '.join(dataset_names())}")
    return spec, argument


def _checked(name: str, split: str) -> tuple[DatasetSpec, str]:
    spec, argument = dataset_spec(name)
    if split not in spec.splits:
        raise DataError(f"{spec.kind} has no split {split!r}; it has {', '.join(spec.splits)}")
    return spec, argument


def load_split(name: str, split: str = "train", options: Options = Options()) -> torch.Tensor:
    """The ``split`` of data set ``name`` (DataError naming the splits it has)."""
    spec, argument = _checked(name, split)
    return spec.load(argument, split, options)


def _load_with(kind: str, what: str, name: str, split: str, options: Options):
    """The ``split`` of data set ``name`` through its ``kind`` loader (load_captioned, load_labelled);
    DataError naming the data sets that have one."""
    spec, argument = _checked(name, split)
    loader = getattr(spec, kind)
    if loader is None:
        having = ", ".join(k for k, s in DATASETS.items() if getattr(s, kind))
        raise DataError(f"data.name={name!r} has no {what}; data sets with {what}: {having}")
    return loader(argument, split, options)


def load_captioned_split(name: str, split: str = "train", options: Options = Options()):
    """(images, captions) of the ``split`` of a data set with captions; DataError for one without."""
    return _load_with("load_captioned", "captions", name, split, options)


def load_labelled_split(name: str, split: str = "train", options: Options = Options()):
    """(images, labels, class names) of the ``split`` of a data set with class labels; DataError for one without."""
    return _load_with("load_labelled", "class labels", name, split, options)


__all__ = [
    "DATASETS",
    "DatasetSpec",
    "Options",
    "dataset_names",
    "dataset_spec",
    "load_captioned_split",
    "load_labelled_split",
    "load_split",
]
