"""Captioned shapes: a synthetic text-to-image data set the project generates, deterministic by seed.

Each image is RGB 32x32 (float32 in [-1, 1], shape (N, 3, 32, 32)) and shows one shape on a
background, described by four attributes (``ATTRIBUTES``, each an ordered tuple of words):

- ``shape``: circle, square, triangle;
- ``colour``: seven saturated, clearly distinct colours (red, green, blue, yellow, magenta, cyan, white);
- ``size``: small (radius about 4 pixels) or large (about 7 pixels);
- ``position``: the centre of one of the four quadrants (top left, ...) or the image centre.

Within a class the shape jitters a little (centre by up to ``POSITION_JITTER`` of the image width,
radius by up to ``SIZE_JITTER`` relative, squares and triangles rotate by up to ``MAX_ROTATION_DEG``)
and the colour jitters (the "on" channels share a level in [0.85, 1], the "off" ones a level in
[0, 0.12], each channel moves +-0.03 more), so every class is a small cloud, never confusable with a
neighbour. Backgrounds are dark-to-mid grey linear gradients (grey level 0.04 to 0.38, each channel
tinted by at most +-0.04) plus a greyscale low-frequency texture and mild pixel noise, clamped to
[0, 0.45]: never close to any shape colour (whose brightest channel is at least 0.82).

Rendering. Coverage of the shape is computed on a grid ``SUPERSAMPLE`` times finer than the image and
average-pooled (antialiased edges); the image is ``background * (1 - alpha) + colour * alpha``.
Vectorised over the batch in torch (chunks of ``RENDER_CHUNK`` images).

Captions. Natural language from ``CAPTION_TEMPLATES`` with synonyms ("big"/"large", "in the middle"/
"at the center", ...). Shape and colour are always named; some templates omit size and/or position,
recorded in ``ShapesBatch.named``. ``parse_caption`` reads the attributes back from a caption.

Randomness. Everything is drawn from one ``torch.Generator`` seeded by the caller: ``make_shapes(n,
seed)`` is the same bytes for the same arguments. ``SHAPES_EVAL_SEEDS`` are the fixed evaluation sets;
training draws from ``shapes_stream`` with other seeds.
"""

from __future__ import annotations

import math
import operator
import re
from collections.abc import Iterator
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from kuosan.data.errors import DataError

IMAGE_SIZE = 32
SUPERSAMPLE = 4
RENDER_CHUNK = 1024
WINDOW = 20  # pixels rendered around each shape's centre (the largest shape spans < 18)

ATTRIBUTES: dict[str, tuple[str, ...]] = {
    "shape": ("circle", "square", "triangle"),
    "colour": ("red", "green", "blue", "yellow", "magenta", "cyan", "white"),
    "size": ("small", "large"),
    "position": ("top left", "top right", "bottom left", "bottom right", "center"),
}

# Which RGB channels (in [0, 1]) are "on" for each colour of ATTRIBUTES["colour"].
COLOUR_RGB = torch.tensor(
    [
        [1, 0, 0],
        [0, 1, 0],
        [0, 0, 1],
        [1, 1, 0],
        [1, 0, 1],
        [0, 1, 1],
        [1, 1, 1],
    ],
    dtype=torch.float32,
)
COLOUR_ON_RANGE = (0.85, 1.0)  # a shared level for the "on" channels of an image ...
COLOUR_OFF_RANGE = (0.0, 0.12)  # ... and one for its "off" channels
COLOUR_CHANNEL_JITTER = 0.03  # plus this much per channel (keeps white neutral, yellow yellow)

# Radius (fraction of the image width) of each size, and the shape centre of each position (x, y), y down.
SIZE_RADIUS = (0.12, 0.21)
POSITION_CENTER = ((0.26, 0.26), (0.74, 0.26), (0.26, 0.74), (0.74, 0.74), (0.5, 0.5))
SIZE_JITTER = 0.08
POSITION_JITTER = 0.025
MAX_ROTATION_DEG = 10.0

SHAPES_EVAL_SEEDS: dict[str, int] = {"val": 1_000_001, "test": 1_000_002}

# Words a caption may use for each attribute value (the first is the canonical one).
SIZE_WORDS = {"small": ("small", "little", "tiny"), "large": ("large", "big")}
POSITION_PHRASES = {
    "in": {
        "corner": ("in the {p} corner", "in the {p}", "at the {p}"),
        "center": ("in the middle", "in the center", "at the center"),
    },
    "short": {"corner": ("{p}",), "center": ("center", "middle")},
}
# Template fields: {size} {colour} {shape} {pos_in} ("in the top left corner") {pos_short} ("top left").
CAPTION_TEMPLATES: tuple[str, ...] = (
    "a {size} {colour} {shape} {pos_in}",
    "{colour} {shape}, {pos_short}",
    "there is a {size} {colour} {shape} {pos_in}",
    "a {colour} {shape}",
    "a {size} {colour} {shape}",
    "a {colour} {shape} {pos_in}",
    "{size} {colour} {shape}",
    "an image of a {size} {colour} {shape} {pos_in}",
    "a picture with a {colour} {shape} {pos_in}",
    "{pos_in} there is a {size} {colour} {shape}",
    "{colour} {shape}",
    "a {colour} {shape} that is {size}",
    "one {size} {colour} {shape} placed {pos_in}",
    "a {shape}, {colour}, {size}, {pos_short}",
    "a {size} {shape} coloured {colour}, {pos_short}",
    "the {colour} {shape} sits {pos_in}",
)


@dataclass
class ShapesBatch:
    """N captioned shape images.

    ``images`` (N, 3, 32, 32) float32 in [-1, 1]; ``captions`` N strings; ``attributes[key]`` (N,) int64
    indices into ``ATTRIBUTES[key]``; ``named[key]`` (N,) bool: does the caption name this attribute.
    """

    images: torch.Tensor
    captions: list[str]
    attributes: dict[str, torch.Tensor]
    named: dict[str, torch.Tensor]

    def __len__(self) -> int:
        return len(self.captions)

    def __getitem__(self, index: slice | torch.Tensor | list[int]) -> ShapesBatch:
        """The sub-batch at ``index`` (a slice, an index list/tensor or a boolean mask)."""
        if isinstance(index, slice):
            captions = self.captions[index]
        else:
            index = torch.as_tensor(index)
            if index.dtype == torch.bool:
                index = index.nonzero().flatten()
            captions = [self.captions[i] for i in index.tolist()]
        return ShapesBatch(
            images=self.images[index],
            captions=captions,
            attributes={k: v[index] for k, v in self.attributes.items()},
            named={k: v[index] for k, v in self.named.items()},
        )


# ----------------------------------------------------------------------------------------- captions


def _position_phrase(position: str, kind: str, variant: int) -> str:
    group = "center" if position == "center" else "corner"
    phrases = POSITION_PHRASES[kind][group]
    return phrases[variant % len(phrases)].format(p=position)


def make_caption(shape: str, colour: str, size: str | None = None, position: str | None = None) -> str:
    """The canonical caption naming the given attribute words (``None``: not named), e.g.
    ``make_caption("circle", "red", "small", "top left") == "a small red circle in the top left corner"``."""
    for key, word in (("shape", shape), ("colour", colour), ("size", size), ("position", position)):
        if word is not None and word not in ATTRIBUTES[key]:
            raise ValueError(f"unknown {key} {word!r}; expected one of {', '.join(ATTRIBUTES[key])}")
    words = ["a"] + ([size] if size else []) + [colour, shape]
    if position:
        words.append(_position_phrase(position, "in", 0))
    return " ".join(words)


def _template_names(template: str) -> tuple[bool, bool]:
    """(names size, names position) for a caption template."""
    return "{size}" in template, "{pos_in}" in template or "{pos_short}" in template


def _render_caption(template: str, values: dict[str, str], variants: list[int]) -> str:
    size_words = SIZE_WORDS[values["size"]]
    return template.format(
        size=size_words[variants[0] % len(size_words)],
        colour=values["colour"],
        shape=values["shape"],
        pos_in=_position_phrase(values["position"], "in", variants[1]),
        pos_short=_position_phrase(values["position"], "short", variants[1]),
    )


_WORD_TO_VALUE = {
    "size": {w: v for v, ws in SIZE_WORDS.items() for w in ws},
    "position": {
        "top left": "top left",
        "top right": "top right",
        "bottom left": "bottom left",
        "bottom right": "bottom right",
        "center": "center",
        "middle": "center",
    },
}


def parse_caption(caption: str) -> dict[str, int | None]:
    """Attribute indices a caption names (``None`` where it names none), read from its words.

    Raises ``ValueError`` if the caption names two different values of one attribute.
    """
    words = re.findall(r"[a-z]+", caption.lower())
    text = " ".join(words)
    found: dict[str, int | None] = {}
    for key, values in ATTRIBUTES.items():
        if key in _WORD_TO_VALUE:
            table = _WORD_TO_VALUE[key]
            hits = {table[w] for w in table if re.search(rf"\b{w}\b", text)}
        else:
            hits = {v for v in values if v in words}
        if len(hits) > 1:
            raise ValueError(f"caption {caption!r} names several {key}s: {sorted(hits)}")
        found[key] = ATTRIBUTES[key].index(hits.pop()) if hits else None
    return found


# ---------------------------------------------------------------------------------------- rendering


def _uniform(n: int, low: float, high: float, generator: torch.Generator, *shape: int) -> torch.Tensor:
    return low + (high - low) * torch.rand(n, *shape, generator=generator)


def _backgrounds(n: int, generator: torch.Generator) -> torch.Tensor:
    """(n, 3, S, S) in [0, 1]: tinted grey linear gradients + greyscale texture + pixel noise."""
    s = IMAGE_SIZE
    lum = _uniform(n, 0.04, 0.38, generator, 2)  # luminance at both gradient ends
    tint = _uniform(n, -0.04, 0.04, generator, 2, 3)  # faint chroma per end
    ends = lum[:, :, None] + tint  # (n, 2, 3)
    angle = _uniform(n, 0.0, 2 * math.pi, generator)
    coords = (torch.arange(s, dtype=torch.float32) + 0.5) / s - 0.5
    yy, xx = torch.meshgrid(coords, coords, indexing="ij")
    t = (xx * angle.cos()[:, None, None] + yy * angle.sin()[:, None, None]) / math.sqrt(0.5) + 0.5
    t = t.clamp(0, 1)[:, None]  # (n, 1, S, S)
    bg = ends[:, 0, :, None, None] * (1 - t) + ends[:, 1, :, None, None] * t
    texture_amp = _uniform(n, 0.0, 0.06, generator, 1, 1, 1)
    coarse = torch.randn(n, 1, 4, 4, generator=generator)
    texture = F.interpolate(coarse, size=(s, s), mode="bicubic", align_corners=False)
    noise_amp = _uniform(n, 0.0, 0.025, generator, 1, 1, 1)
    noise = torch.randn(n, 1, s, s, generator=generator)
    return (bg + texture_amp * texture + noise_amp * noise).clamp(0.0, 0.45)


def _inside(kind: int, u: torch.Tensor, v: torch.Tensor, r: torch.Tensor) -> torch.Tensor:
    """Indicator of shape ``kind`` in its own frame (u, v), y down, radius r (broadcast):
    circle u^2 + v^2 <= r^2; square max(|u|, |v|) <= 0.85 r; triangle (apex up, bounding box
    centred) with half-height h = 0.9 r and half-base w = 1.04 r: v <= h and |u| <= w (v + h) / (2 h)."""
    if kind == 0:
        return u * u + v * v <= r * r
    if kind == 1:
        return torch.maximum(u.abs(), v.abs()) <= 0.85 * r
    h, w = 0.9 * r, 1.04 * r
    return (v <= h) & (u.abs() <= w * (v + h) / (2 * h))


def _coverage(shape: torch.Tensor, center: torch.Tensor, radius: torch.Tensor, angle: torch.Tensor) -> torch.Tensor:
    """(n, 1, S, S) antialiased coverage: the shape's indicator (``_inside``) on a SUPERSAMPLE-times
    finer grid, average-pooled. Coordinates are fractions of the image width, y pointing down; the
    shape is rotated by ``angle`` about ``center``. Only a ``WINDOW``-pixel square around the centre
    is rendered (every shape fits in it), one shape kind at a time."""
    n, s, k = len(shape), IMAGE_SIZE, SUPERSAMPLE
    origin = ((center * s).round().long() - WINDOW // 2).clamp(0, s - WINDOW)  # (n, 2) pixels
    fine = (torch.arange(WINDOW * k, dtype=torch.float32) + 0.5) / (s * k)
    local = (origin.float() / s)[:, :, None] + fine - center[:, :, None]  # (n, 2, W*k)
    alpha_window = torch.empty(n, 1, WINDOW, WINDOW)
    for kind in range(len(ATTRIBUTES["shape"])):
        idx = (shape == kind).nonzero().flatten()
        if len(idx) == 0:
            continue
        px, py = local[idx, 0, None, :], local[idx, 1, :, None]
        cos, sin = angle[idx].cos()[:, None, None], angle[idx].sin()[:, None, None]
        u, v = cos * px + sin * py, -sin * px + cos * py
        inside = _inside(kind, u, v, radius[idx][:, None, None])
        alpha_window[idx] = F.avg_pool2d(inside[:, None].float(), k)
    alpha = torch.zeros(n, 1, s, s)
    rows = (origin[:, 1, None] + torch.arange(WINDOW))[:, :, None]
    cols = (origin[:, 0, None] + torch.arange(WINDOW))[:, None, :]
    alpha[torch.arange(n)[:, None, None], 0, rows, cols] = alpha_window[:, 0]
    return alpha


def _draw(n: int, generator: torch.Generator) -> ShapesBatch:
    """Draw attributes, jitter, backgrounds and captions for n images from ``generator``."""
    attributes = {key: torch.randint(len(values), (n,), generator=generator) for key, values in ATTRIBUTES.items()}
    template_idx = torch.randint(len(CAPTION_TEMPLATES), (n,), generator=generator)
    variants = torch.randint(1 << 16, (n, 2), generator=generator)
    radius = torch.tensor(SIZE_RADIUS)[attributes["size"]] * _uniform(n, 1 - SIZE_JITTER, 1 + SIZE_JITTER, generator)
    center = torch.tensor(POSITION_CENTER)[attributes["position"]] + _uniform(
        n, -POSITION_JITTER, POSITION_JITTER, generator, 2
    )
    angle = torch.where(
        attributes["shape"] == 0, 0.0, _uniform(n, -1.0, 1.0, generator) * math.radians(MAX_ROTATION_DEG)
    )
    on = COLOUR_RGB[attributes["colour"]]
    level = torch.where(
        on > 0, _uniform(n, *COLOUR_ON_RANGE, generator, 1), _uniform(n, *COLOUR_OFF_RANGE, generator, 1)
    )
    jitter = _uniform(n, -COLOUR_CHANNEL_JITTER, COLOUR_CHANNEL_JITTER, generator, 3)
    colour = (level + jitter).clamp(0.0, 1.0)
    images = torch.empty(n, 3, IMAGE_SIZE, IMAGE_SIZE)
    for start in range(0, n, RENDER_CHUNK):
        sl = slice(start, start + RENDER_CHUNK)
        m = len(range(n)[sl])
        alpha = _coverage(attributes["shape"][sl], center[sl], radius[sl], angle[sl])
        bg = _backgrounds(m, generator)
        images[sl] = (bg * (1 - alpha) + colour[sl, :, None, None] * alpha) * 2 - 1

    captions, names_size, names_position = [], [], []
    columns = {key: [ATTRIBUTES[key][j] for j in attributes[key].tolist()] for key in ATTRIBUTES}
    for i, (t, variant) in enumerate(zip(template_idx.tolist(), variants.tolist())):
        template = CAPTION_TEMPLATES[t]
        captions.append(_render_caption(template, {key: columns[key][i] for key in ATTRIBUTES}, variant))
        size_named, position_named = _template_names(template)
        names_size.append(size_named)
        names_position.append(position_named)
    named = {
        "shape": torch.ones(n, dtype=torch.bool),
        "colour": torch.ones(n, dtype=torch.bool),
        "size": torch.tensor(names_size, dtype=torch.bool),
        "position": torch.tensor(names_position, dtype=torch.bool),
    }
    return ShapesBatch(images=images.clamp(-1.0, 1.0), captions=captions, attributes=attributes, named=named)


def _as_int(value, what: str, minimum: int | None = None) -> int:
    """``value`` as a Python int (numpy integers too), else a one-line DataError naming ``what``."""
    try:
        if isinstance(value, bool):
            raise TypeError
        number = operator.index(value)
    except TypeError:
        raise DataError(f"shapes data set needs an integer {what}, got {value!r}") from None
    if minimum is not None and number < minimum:
        raise DataError(f"shapes data set needs a positive {what}, got {value!r}")
    return number


def make_shapes(n: int, seed: int) -> ShapesBatch:
    """``n`` captioned shape images, the same bytes for the same ``(n, seed)``."""
    n, seed = _as_int(n, "number of images n", 1), _as_int(seed, "seed")
    return _draw(n, torch.Generator().manual_seed(seed))


def shapes_stream(batch_size: int, seed: int) -> Iterator[ShapesBatch]:
    """An endless, deterministic stream of fresh batches of ``batch_size`` images from ``seed``."""
    batch_size, seed = _as_int(batch_size, "batch_size", 1), _as_int(seed, "seed")
    generator = torch.Generator().manual_seed(seed)
    while True:
        yield _draw(batch_size, generator)


__all__ = [
    "ATTRIBUTES",
    "CAPTION_TEMPLATES",
    "SHAPES_EVAL_SEEDS",
    "ShapesBatch",
    "make_caption",
    "make_shapes",
    "parse_caption",
    "shapes_stream",
]
