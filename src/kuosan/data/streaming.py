"""Image files decoded when a batch draws them: the streaming loader, for data sets larger than memory.

The in-memory path decodes every image once into one tensor and the trainer indexes it. An
:class:`ImageFiles` holds only the file list (and the small per-example conditioning beside it,
labels or caption indices, stays in the caller's tensors): each batch is decoded on the fly by the
workers of a ``torch.utils.data.DataLoader``, ahead of the step that needs it.

The batch stream, in the in-memory path's terms: the global batch of step ``s`` is drawn with
replacement, uniformly over the files, as there; but from a generator seeded by ``(seed, s)`` alone,
not from the trainer's running generator, so every step's batch is known without replaying the ones
before it. That is what lets the workers decode ahead, a resume at step ``s`` continue the same stream
exactly, and each process under torchrun decode only its own slice of the global batch. A random
crop (``crop="random"``) and a horizontal flip (``flip``) of the ``j``-th example of step ``s`` are
drawn from ``(seed, s, j)``: the same numbers on resume, with any number of workers or processes.

Decoding follows :mod:`kuosan.data.image_folder` (EXIF orientation, 16-bit grey, resize and crop); with
``size=None`` every image must have the first one's size, checked as each is read. Every file is
opened and verified once when the stream is made (:func:`~kuosan.data.image_folder.readable`), so a
broken file is a one-line error (or, with ``skip_bad``, left out and counted) before training starts.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset

from kuosan.data.errors import DataError
from kuosan.data.image_folder import check_decoding, decode_file, readable

logger = logging.getLogger(__name__)

LOADERS = ("auto", "memory", "stream")


def decoded_bytes(files: list[Path], *, size: int | None, channels: int) -> int:
    """What ``files`` take decoded as float32 (C, H, W) tensors: the size of the in-memory path's tensor
    (with ``size=None``, each image the first one's size, read from its header)."""
    if size is None:
        try:
            with Image.open(files[0]) as image:
                width, height = image.size
        except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as exc:
            raise DataError(f"cannot read image {files[0]}: {exc}") from exc
    else:
        width = height = size
    return len(files) * channels * width * height * 4


def step_seed(seed: int, step: int) -> np.random.Generator:
    """The generator of step ``step``'s batch indices; any step's, without replaying the others."""
    return np.random.default_rng([seed, step])


class ImageFiles:
    """The images of ``files`` (a data set's rows, in order) as a stream of batches (module doc).

    ``sample_shape`` is (channels, H, W); ``indices(step, batch_size)`` the global batch of a step;
    ``batches(start_step, batch_size, part)`` an endless iterator of this process's slice ``part`` of
    each global batch from ``start_step`` on, decoded by ``workers`` processes (0: in this one);
    ``read(positions)`` some rows without augmentation (centre crop, no flip), for pictures and for
    encoding latents.
    """

    def __init__(
        self,
        files: list[Path],
        *,
        size: int | None = None,
        channels: int = 3,
        crop: str = "center",
        flip: bool = False,
        seed: int = 0,
        workers: int = 2,
        verified: bool = False,
    ):
        self.mode = check_decoding(size, channels, crop)
        if not files:
            raise DataError("no images to stream")
        if isinstance(workers, bool) or not isinstance(workers, int) or workers < 0:
            raise DataError(f"workers must be an integer >= 0, got {workers!r}")
        if not verified:
            readable(files)
        self.files, self.size, self.channels, self.crop, self.flip = list(files), size, channels, crop, flip
        self.seed, self.workers = seed, workers
        if size is None:
            with Image.open(self.files[0]) as image:
                width, height = image.size
        else:
            width = height = size
        self.sample_shape = (channels, height, width)

    def __len__(self) -> int:
        return len(self.files)

    @property
    def shape(self) -> tuple[int, ...]:
        """(N, C, H, W), as the in-memory tensor's."""
        return (len(self.files), *self.sample_shape)

    def indices(self, step: int, batch_size: int) -> torch.Tensor:
        """The rows of step ``step``'s global batch (with replacement, uniform)."""
        return torch.from_numpy(step_seed(self.seed, step).integers(len(self.files), size=batch_size))

    def item(self, position: int, step: int | None = None, j: int = 0) -> torch.Tensor:
        """Row ``position`` as (C, H, W) float32 in [-1, 1]; as the ``j``-th example of step ``step``
        (its random crop and flip), or without augmentation when ``step`` is None."""
        file = self.files[position]
        augment = step is not None and (self.flip or self.crop == "random")
        rng = np.random.default_rng([self.seed, step, j, 1]) if augment else None
        crop = "center" if step is None and self.crop == "random" else self.crop
        pixels = decode_file(file, self.mode, self.size, crop, rng, self.flip and augment)
        if pixels.shape[:2] != self.sample_shape[1:]:
            raise DataError(
                f"images differ in size: {file} is {pixels.shape[1]}x{pixels.shape[0]}, {self.files[0]} is "
                f"{self.sample_shape[2]}x{self.sample_shape[1]} (pass size= to resize them to one size)"
            )
        return torch.from_numpy(pixels).permute(2, 0, 1).float().div_(127.5).sub_(1.0)

    def subset(self, positions) -> ImageFiles:
        """The stream of the rows ``positions`` (in that order), with the same options."""
        files = [self.files[int(p)] for p in positions]
        if not files:
            raise DataError("no images to stream")
        other = object.__new__(ImageFiles)
        other.__dict__.update(self.__dict__, files=files)
        return other

    def split(self, batch_size: int) -> Iterator[torch.Tensor]:
        """The rows in order, decoded ``batch_size`` at a time without augmentation (as
        ``torch.Tensor.split`` gives a tensor's): for encoding a data set once, in pieces."""
        for first in range(0, len(self.files), batch_size):
            yield self.read(range(first, min(first + batch_size, len(self.files))))

    def read(self, positions) -> torch.Tensor:
        """The rows ``positions`` (an iterable of ints) as (n, C, H, W), without augmentation."""
        rows = [self.item(int(p)) for p in positions]
        return torch.stack(rows) if rows else torch.empty((0, *self.sample_shape))

    def batches(self, start_step: int, batch_size: int, part: slice, *, pin_memory: bool = False) -> Iterator:
        """This process's slice ``part`` of the global batch of every step from ``start_step`` on."""
        loader = DataLoader(
            _Examples(self),
            batch_sampler=_Steps(self, start_step, batch_size, part),
            num_workers=self.workers,
            prefetch_factor=4 if self.workers else None,
            worker_init_fn=_one_thread if self.workers else None,
            pin_memory=pin_memory,
            # the workers' base seed from a generator of its own: torch's global one (dropout) is untouched
            generator=torch.Generator().manual_seed(self.seed),
        )
        return _one_line_errors(iter(loader))


class _Examples(Dataset):
    """The DataLoader's view: key (step, j, row) -> the row as the j-th example of the step."""

    def __init__(self, stream: ImageFiles):
        self.stream = stream

    def __len__(self) -> int:
        return len(self.stream)

    def __getitem__(self, key: tuple[int, int, int]) -> torch.Tensor:
        step, j, position = key
        return self.stream.item(position, step, j)


class _Steps:
    """The batch sampler: for each step from ``start`` on, the keys of this process's slice."""

    def __init__(self, stream: ImageFiles, start: int, batch_size: int, part: slice):
        self.stream, self.start, self.batch_size, self.part = stream, start, batch_size, part

    def __iter__(self):
        step = self.start
        while True:
            rows = self.stream.indices(step, self.batch_size).tolist()
            first = self.part.start or 0
            yield [(step, first + j, row) for j, row in enumerate(rows[self.part])]
            step += 1


def _one_thread(worker_id: int) -> None:
    """A decoding worker computes with one thread: the training process keeps the cores' threads."""
    torch.set_num_threads(1)


def _one_line_errors(batches: Iterator) -> Iterator[torch.Tensor]:
    """The DataLoader's batches; a DataError raised in a worker comes back as a DataError with its own
    one-line message (the DataLoader wraps it in the worker's traceback)."""
    while True:
        try:
            batch = next(batches)
        except DataError as exc:
            lines = [line for line in str(exc).splitlines() if line.strip()]
            last = lines[-1] if lines else ""
            prefix = "kuosan.data.errors.DataError: "
            raise DataError(last.removeprefix(prefix) if last.startswith(prefix) else str(exc)) from None
        yield batch


__all__ = ["ImageFiles", "LOADERS", "decoded_bytes", "step_seed"]
