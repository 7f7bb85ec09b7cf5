"""Write a PNG grid of captioned-shapes samples and print their captions as a numbered Markdown list.

    python scripts/shapes_samples.py [--n 64] [--seed 7] [--out docs/shapes_samples.png]

Images are tiled row by row (8 per row), enlarged 4x; caption k belongs to the k-th image.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from kuosan.data.shapes import make_shapes
from kuosan.imaging import image_grid


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=64)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--out", type=Path, default=Path("docs/shapes_samples.png"))
    args = parser.parse_args()
    batch = make_shapes(args.n, args.seed)
    image_grid(batch.images, nrow=8, pad=2, scale=4).save(args.out)
    for k, caption in enumerate(batch.captions):
        row, col = divmod(k, 8)
        print(f"{k + 1}. (row {row + 1}, column {col + 1}) {caption}")


if __name__ == "__main__":
    main()
