"""Image folders with labels or captions, in the layouts users already have.

- Class folders (torchvision's ``ImageFolder``): ``root/CLASS/**/*.png``; the classes are the
  sub-folders' names in sorted order, label k the k-th; images directly in ``root`` belong to none
  and are an error.
- Captions, Hugging Face ``imagefolder`` style: ``root/metadata.jsonl`` (one JSON object per line with
  ``file_name`` and ``text``) or ``root/metadata.csv`` (columns ``file_name`` and ``text``), file
  names relative to ``root``; or kohya style: ``NAME.txt`` beside each ``NAME.png`` holding its
  caption. A metadata file wins over .txt files; every image needs a caption and every caption an
  image.

Images are decoded by :func:`kuosan.data.image_folder.decode_images` (resize, centre crop, channels).
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import torch

from kuosan.data.errors import DataError
from kuosan.data.image_folder import IMAGE_EXTENSIONS, decode_images, find_images


def class_folders(root: str | Path) -> tuple[list[Path], torch.Tensor, list[str]]:
    """(files, labels (N,) int64, class names) of a folder of class sub-folders (module doc)."""
    root = Path(root)
    files = find_images(root)  # the folder exists and holds images
    loose = [f for f in files if f.parent == root]
    if loose:
        raise DataError(f"{loose[0]} is not in a class sub-folder of {root} (class folders: root/CLASS/*.png)")
    names = sorted({f.relative_to(root).parts[0] for f in files})
    index = {name: k for k, name in enumerate(names)}
    labels = torch.tensor([index[f.relative_to(root).parts[0]] for f in files], dtype=torch.long)
    return files, labels, names


def _metadata(root: Path) -> list[tuple[str, str]] | None:
    """(file name, caption) rows of root/metadata.jsonl or .csv, or None when there is neither."""
    jsonl, table = root / "metadata.jsonl", root / "metadata.csv"
    rows = []
    if jsonl.is_file():
        for number, line in enumerate(jsonl.read_text(encoding="utf-8").splitlines(), 1):
            if not line.strip():
                continue
            try:
                entry = json.loads(line)
                rows.append((str(entry["file_name"]), str(entry["text"])))
            except (json.JSONDecodeError, KeyError, TypeError):
                raise DataError(f"{jsonl}:{number}: need a JSON object with file_name and text") from None
        return rows
    if table.is_file():
        with open(table, newline="", encoding="utf-8") as f:
            reader = csv.DictReader(f)
            if not reader.fieldnames or not {"file_name", "text"} <= set(reader.fieldnames):
                raise DataError(f"{table} needs the columns file_name and text, has {reader.fieldnames}")
            rows = [(row["file_name"], row["text"]) for row in reader]
        return rows
    return None


def captioned_files(root: str | Path) -> tuple[list[Path], list[str]]:
    """(files, captions) of a captioned folder (module doc), in the metadata's order or sorted."""
    root = Path(root)
    files = find_images(root)
    rows = _metadata(root)
    if rows is not None:
        out = []
        for name, _ in rows:
            path = root / name
            if not path.is_file() or path.suffix.lower() not in IMAGE_EXTENSIONS:
                raise DataError(f"the metadata of {root} names {name}, which is not an image file there")
            out.append(path)
        if not out:
            raise DataError(f"the metadata of {root} lists no images")
        return out, [text for _, text in rows]
    captions = []
    for f in files:
        txt = f.with_suffix(".txt")
        if not txt.is_file():
            raise DataError(
                f"{f} has no caption: give {txt.name} beside it, or a metadata.jsonl / metadata.csv in {root}"
            )
        captions.append(txt.read_text(encoding="utf-8").strip())
    return files, captions


def load_class_folders(root, *, size=None, channels=3, crop="center"):
    """(images (N, C, H, W) in [-1, 1], labels, class names) of class folders."""
    files, labels, names = class_folders(root)
    return decode_images(files, size=size, channels=channels, crop=crop), labels, names


def load_captioned_folder(root, *, size=None, channels=3, crop="center"):
    """(images (N, C, H, W) in [-1, 1], captions) of a captioned folder."""
    files, captions = captioned_files(root)
    return decode_images(files, size=size, channels=channels, crop=crop), captions


__all__ = ["captioned_files", "class_folders", "load_captioned_folder", "load_class_folders"]
