"""Pictures of samples: image grids and 2-D scatter plots as PNG (Pillow only)."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw


def to_uint8(images: torch.Tensor) -> np.ndarray:
    """(N, C, H, W) in [-1, 1] -> (N, H, W, C) uint8."""
    x = ((images.detach().float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    return x.permute(0, 2, 3, 1).cpu().numpy()


def image_grid(images: torch.Tensor, *, nrow: int | None = None, pad: int = 1, scale: int = 1) -> Image.Image:
    """Tile (N, C, H, W) images in [-1, 1] into one picture, ``nrow`` per row, each enlarged
    ``scale`` times (nearest neighbour, so 8x8 digits stay crisp)."""
    n, c, h, w = images.shape
    nrow = nrow or math.ceil(math.sqrt(n))
    rows = math.ceil(n / nrow)
    arr = to_uint8(images)
    grid = np.full((rows * (h + pad) + pad, nrow * (w + pad) + pad, c), 255, dtype=np.uint8)
    for i in range(n):
        r, q = divmod(i, nrow)
        grid[pad + r * (h + pad) : pad + r * (h + pad) + h, pad + q * (w + pad) : pad + q * (w + pad) + w] = arr[i]
    img = Image.fromarray(grid[..., 0] if c == 1 else grid)
    return img.resize((img.width * scale, img.height * scale), Image.Resampling.NEAREST) if scale > 1 else img


def scatter_plot(
    points: torch.Tensor, *, size: int = 512, extent: float = 3.5, reference: torch.Tensor | None = None
) -> Image.Image:
    """Draw 2-D points (N, 2) in [-extent, extent]^2; optional reference points in grey beneath."""
    img = Image.new("RGB", (size, size), "white")
    draw = ImageDraw.Draw(img)

    def px(p):
        q = (p.detach().float().cpu().numpy() + extent) / (2 * extent) * (size - 1)
        return [(float(a), float(size - 1 - b)) for a, b in q]

    if reference is not None:
        for a, b in px(reference):
            draw.point((a, b), fill=(190, 190, 190))
    for a, b in px(points):
        draw.rectangle((a - 1, b - 1, a + 1, b + 1), fill=(20, 60, 200))
    return img


def save_samples_png(samples: torch.Tensor, path: str | Path, **kwargs) -> Path:
    """A grid for images (N, C, H, W), a scatter plot for points (N, 2)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if samples.ndim == 4:
        h = samples.shape[-1]
        img = image_grid(samples, scale=kwargs.pop("scale", max(1, 64 // h)), **kwargs)
    elif samples.ndim == 2 and samples.shape[1] == 2:
        img = scatter_plot(samples, **kwargs)
    else:
        raise ValueError(f"cannot draw samples of shape {tuple(samples.shape)}")
    img.save(path)
    return path


class ImageReadError(ValueError):
    """A missing or unreadable picture file."""


def read_image(path: str | Path, *, mask: bool = False) -> torch.Tensor:
    """A picture file (PNG, JPEG, ...) as a (1, 3, H, W) tensor in [-1, 1]; with ``mask=True`` as a
    (1, 1, H, W) mask in {0, 1} (white = 1: the region to repaint). ImageReadError (one line) for a
    missing or unreadable file."""
    from PIL import UnidentifiedImageError

    p = Path(path)
    if not p.is_file():
        raise ImageReadError(f"{'mask' if mask else 'image'} file not found: {p}")
    try:
        with Image.open(p) as img:
            arr = np.asarray(img.convert("L" if mask else "RGB"), dtype=np.float32)
    except (UnidentifiedImageError, OSError, ValueError) as e:
        raise ImageReadError(f"cannot read {p} as an image: {e}") from None
    if mask:
        return torch.from_numpy(arr > 127.5).float()[None, None]
    return torch.from_numpy(arr / 127.5 - 1).permute(2, 0, 1)[None]
