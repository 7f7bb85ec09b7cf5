"""A folder of image files (PNG, JPEG, BMP, WEBP) loaded into one float32 tensor in [-1, 1].

Files are found recursively, matched by extension case-insensitively, and read in sorted path order,
so the same folder always gives the same tensor. Each image is decoded with Pillow, turned upright by
its EXIF orientation tag, converted to ``"L"`` (1 channel) or ``"RGB"`` (3 channels; an alpha channel
is dropped), optionally resized, and mapped from 0..255 to [-1, 1] by ``x / 127.5 - 1``.

Resizing (``size`` given), in the torchvision ``Resize(size)`` + ``CenterCrop(size)`` convention:

- ``crop="center"``: scale so the shorter side is ``size`` (bicubic), then cut the central
  ``size x size`` square (the aspect ratio is kept, the borders of the longer side are lost);
- ``crop="none"``: resize straight to ``size x size`` (bicubic; the aspect ratio is not kept);
- ``crop="random"``: as ``"center"``, but the square is cut at a random offset along the longer side
  (torchvision's ``RandomResizedCrop`` is another thing: this is diffusers' ``--random_crop``, a
  ``Resize(size)`` + ``RandomCrop(size)``). A random crop, like a horizontal flip, is drawn anew each
  time an image is read, so it needs the streaming loader (``data/streaming.py``).

With ``size=None`` no image is resampled, and all images must already have one size.

A file that does not decode is an error naming it; :func:`readable` finds such files beforehand (the
option to skip them: ``data.skip_bad``).
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps

from kuosan.data.errors import DataError

logger = logging.getLogger(__name__)

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".webp")
CROP_MODES = ("center", "none", "random")


def find_images(path: str | Path) -> list[Path]:
    """All image files under ``path`` (recursive, extensions of ``IMAGE_EXTENSIONS`` in any case), sorted;
    hidden files and folders (a name starting with ".", such as .ipynb_checkpoints) are skipped."""
    root = Path(path)
    if not root.exists():
        raise DataError(f"image folder {root} does not exist")
    if not root.is_dir():
        raise DataError(f"image folder {root} is not a directory")
    files = sorted(
        p
        for p in root.rglob("*")
        if p.suffix.lower() in IMAGE_EXTENSIONS
        and p.is_file()
        and not any(part.startswith(".") for part in p.relative_to(root).parts)
    )
    if not files:
        raise DataError(f"no images ({'/'.join(IMAGE_EXTENSIONS)}) in {root}")
    return files


def _resize(image: Image.Image, size: int, crop: str, rng: np.random.Generator | None = None) -> Image.Image:
    width, height = image.size
    if crop == "none":
        return image if (width, height) == (size, size) else image.resize((size, size), Image.Resampling.BICUBIC)
    scale = size / min(width, height)
    new_size = (max(size, round(width * scale)), max(size, round(height * scale)))
    if new_size != (width, height):
        image = image.resize(new_size, Image.Resampling.BICUBIC)
    spare = (new_size[0] - size, new_size[1] - size)  # one of the two is 0
    if crop == "random":
        if rng is None:
            raise ValueError("a random crop needs a random generator")
        left, top = (int(rng.integers(0, s + 1)) for s in spare)
    else:
        left, top = spare[0] // 2, spare[1] // 2
    return image.crop((left, top, left + size, top + size))


def _to_8bit(image: Image.Image) -> Image.Image:
    """16-bit greyscale (Pillow's "I;16*" modes, and "I" holding values above 255) scaled by its real
    range, 0..65535 -> 0..255 (Pillow's own conversion to "L" clips it, so almost every pixel would be
    white); 32-bit float greyscale ("F") taken as 0..1 if it fits there, else 0..255."""
    if image.mode.startswith("I;16") or image.mode == "I":
        values = np.asarray(image, dtype=np.float64)
        if image.mode == "I" and values.max(initial=0) <= 255:
            return Image.fromarray(values.astype(np.uint8), "L")
        return Image.fromarray(np.round(values / 257.0).clip(0, 255).astype(np.uint8), "L")
    if image.mode == "F":
        values = np.asarray(image, dtype=np.float64)
        scale = 255.0 if values.max(initial=0) <= 1.0 else 1.0
        return Image.fromarray(np.round(values * scale).clip(0, 255).astype(np.uint8), "L")
    return image


def decode_file(
    file: Path, mode: str, size: int | None, crop: str, rng: np.random.Generator | None = None, flip: bool = False
) -> np.ndarray:
    """Decode one file to a uint8 array (H, W, C); any decoding failure becomes a ``DataError``.
    ``rng`` draws the offset of a random crop and, with ``flip``, whether to mirror left-right."""
    try:
        with Image.open(file) as image:
            image = ImageOps.exif_transpose(image)
            image = _to_8bit(image).convert(mode)
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as exc:
        raise DataError(f"cannot read image {file}: {exc}") from exc
    if size is not None:
        image = _resize(image, size, crop, rng)
    if flip and rng is not None and rng.random() < 0.5:
        image = image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    pixels = np.array(image, dtype=np.uint8)  # a writable copy, as torch.from_numpy wants
    return pixels[:, :, None] if pixels.ndim == 2 else pixels


def readable(files: list[Path], *, skip_bad: bool = False) -> list[int]:
    """The positions of the ``files`` that Pillow opens and verifies (the header, and for PNG every
    chunk's checksum, without decoding the pixels). A file that fails is a ``DataError`` naming it;
    with ``skip_bad`` it is left out, and the count is logged."""
    kept, bad = [], []
    for position, file in enumerate(files):
        try:
            with Image.open(file) as image:
                image.verify()
        except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as exc:
            if not skip_bad:
                raise DataError(f"cannot read image {file}: {exc} (data.skip_bad=true leaves such files out)") from exc
            bad.append(file)
            continue
        kept.append(position)
    if bad:
        logger.warning("left out %d of %d files that do not decode (the first: %s)", len(bad), len(files), bad[0])
    if not kept:
        raise DataError(f"none of the {len(files)} image files decodes (the first: {files[0]})")
    return kept


def load_image_folder(
    path: str | Path, *, size: int | None = None, channels: int = 3, crop: str = "center"
) -> torch.Tensor:
    """Every image under ``path`` as one tensor (N, channels, H, W), float32 in [-1, 1].

    ``channels`` is 1 (greyscale, Pillow's ``"L"``) or 3 (RGB). With ``size`` the result is
    (N, C, size, size), see the module docstring for ``crop``; with ``size=None`` all images must
    share one size. Raises ``DataError`` naming the folder or file if the folder is missing or has no
    images, a file cannot be decoded, or (``size=None``) two images differ in size.
    """
    images = decode_images(find_images(path), size=size, channels=channels, crop=crop)
    logger.info("loaded %d images of %dx%dx%d from %s", len(images), channels, images.shape[2], images.shape[3], path)
    return images


def check_decoding(size: int | None, channels: int, crop: str) -> str:
    """The Pillow mode of ``channels``; DataError for options that do not go together."""
    if channels not in (1, 3):
        raise DataError(f"channels must be 1 or 3, got {channels!r}")
    if crop not in CROP_MODES:
        raise DataError(f"crop must be one of {', '.join(CROP_MODES)}, got {crop!r}")
    if size is not None and (isinstance(size, bool) or not isinstance(size, int) or size < 1):
        raise DataError(f"size must be a positive integer or None, got {size!r}")
    if crop == "random" and size is None:
        raise DataError("a random crop needs the size to crop to (data.size)")
    return "L" if channels == 1 else "RGB"


def decode_images(
    files: list[Path], *, size: int | None = None, channels: int = 3, crop: str = "center"
) -> torch.Tensor:
    """The image ``files``, in their order, as one tensor (N, channels, H, W) in [-1, 1]
    (:func:`load_image_folder` says how)."""
    mode = check_decoding(size, channels, crop)
    if crop == "random":
        raise DataError("a random crop is drawn each time an image is read: it needs the streaming loader")
    if not files:
        raise DataError("no images to decode")
    images: torch.Tensor | None = None
    for index, file in enumerate(files):
        pixels = decode_file(file, mode, size, crop)
        if images is None:
            images = torch.empty(len(files), channels, pixels.shape[0], pixels.shape[1])
        elif pixels.shape[:2] != images.shape[2:]:
            raise DataError(
                f"images differ in size: {file} is {pixels.shape[1]}x{pixels.shape[0]}, {files[0]} is "
                f"{images.shape[3]}x{images.shape[2]} (pass size= to resize them to one size)"
            )
        images[index] = torch.from_numpy(pixels).permute(2, 0, 1)
    assert images is not None  # files is not empty
    return images.div_(127.5).sub_(1.0)
