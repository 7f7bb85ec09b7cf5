"""Image folders with labels or captions, in the layouts users already have.

- Class folders (torchvision's ``ImageFolder``): ``root/CLASS/**/*.png``; the classes are the
  sub-folders' names in sorted order, label k the k-th; images directly in ``root`` belong to none
  and are an error.
- Captions, Hugging Face ``imagefolder`` style: ``root/metadata.jsonl`` (one JSON object per line with
  ``file_name`` and ``text``) or ``root/metadata.csv`` (columns ``file_name`` and ``text``), file
  names relative to ``root``; or kohya style: ``NAME.txt`` beside each ``NAME.png`` holding its
  caption. A metadata file wins over .txt files; every image needs a caption and every caption an
  image (with a metadata file, the images it lists are the data set).

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
    names = sorted(d.name for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))
    for name in names:
        if not any(f.relative_to(root).parts[0] == name for f in files):
            raise DataError(f"the class folder {root / name} holds no images")
    index = {name: k for k, name in enumerate(names)}
    labels = torch.tensor([index[f.relative_to(root).parts[0]] for f in files], dtype=torch.long)
    return files, labels, names


def _text(path: Path) -> str:
    """A UTF-8 text file (a byte-order mark, as Excel and Notepad write, is dropped); DataError naming it."""
    try:
        return path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as e:
        raise DataError(f"{path} is not UTF-8 text ({e.reason} at byte {e.start})") from None


def _metadata(root: Path) -> list[tuple[str, str]] | None:
    """(file name, caption) rows of root/metadata.jsonl or .csv, or None when there is neither."""
    jsonl, table = root / "metadata.jsonl", root / "metadata.csv"
    rows = []
    if jsonl.is_file():
        for number, line in enumerate(_text(jsonl).splitlines(), 1):
            if not line.strip():
                continue
            try:
                entry = json.loads(line)
                name, text = entry["file_name"], entry["text"]
            except (json.JSONDecodeError, KeyError, TypeError):
                raise DataError(f"{jsonl}:{number}: need a JSON object with file_name and text") from None
            if not isinstance(name, str) or not isinstance(text, str):
                raise DataError(f"{jsonl}:{number}: file_name and text must be strings")
            rows.append((name, text))
        return rows
    if table.is_file():
        reader = csv.DictReader(_text(table).splitlines())
        if not reader.fieldnames or not {"file_name", "text"} <= set(reader.fieldnames):
            raise DataError(f"{table} needs the columns file_name and text, has {reader.fieldnames}")
        for number, row in enumerate(reader, 2):
            if row["file_name"] is None or row["text"] is None:
                raise DataError(f"{table}:{number}: the row lacks file_name or text")
            rows.append((row["file_name"], row["text"]))
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
            if not path.resolve().is_relative_to(root.resolve()):
                raise DataError(f"the metadata of {root} names {name}, outside the folder")
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
        captions.append(_text(txt).strip())
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
