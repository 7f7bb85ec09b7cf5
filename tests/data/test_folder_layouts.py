"""Image folders with captions (metadata.jsonl, metadata.csv, NAME.txt) or class sub-folders: the
layouts, their errors, and text- and class-conditional training on them end to end (exact resume)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from cli_helpers import fails_cleanly, kuosan
from kuosan.data.errors import DataError
from kuosan.data.folder_layouts import captioned_files, class_folders, load_captioned_folder, load_class_folders
from train_helpers import cli_resume_equals_uninterrupted

WORDS = ["a red circle", "a blue square", "a green circle on the left", "a red square on the right"]


def _png(path, value, size=12):
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = np.full((size, size, 3), value, dtype=np.uint8)
    pixels[size // 3 :, : size // 2] = 255 - value
    Image.fromarray(pixels, "RGB").save(path)


def _captioned(root, layout):
    names = [f"img{k}.png" for k in range(4)]
    for k, name in enumerate(names):
        _png(root / name, 40 * k)
    if layout == "jsonl":
        lines = [json.dumps({"file_name": n, "text": t}) for n, t in zip(names, WORDS)]
        (root / "metadata.jsonl").write_text("\n".join(lines) + "\n")
    elif layout == "csv":
        (root / "metadata.csv").write_text("file_name,text\n" + "".join(f'{n},"{t}"\n' for n, t in zip(names, WORDS)))
    else:
        for n, t in zip(names, WORDS):
            (root / n).with_suffix(".txt").write_text(t + "\n")
    return root


def _classes(root):
    for cls, value in (("cats", 30), ("dogs", 200)):
        for k in range(3):
            _png(root / cls / ("sub" if k == 2 else "") / f"{k}.png", value + k)
    return root


@pytest.mark.parametrize("layout", ["jsonl", "csv", "txt"])
def test_captioned_layouts_pair_each_image_with_its_caption(tmp_path, layout):
    root = _captioned(tmp_path / layout, layout)
    files, captions = captioned_files(root)
    assert [f.name for f in files] == [f"img{k}.png" for k in range(4)] and captions == WORDS
    images, _ = load_captioned_folder(root, size=8)
    assert images.shape == (4, 3, 8, 8) and images.min() >= -1 and images.max() <= 1


def test_class_folders_label_by_sorted_sub_folder(tmp_path):
    root = _classes(tmp_path / "pets")
    files, labels, names = class_folders(root)
    assert names == ["cats", "dogs"] and labels.tolist() == [0, 0, 0, 1, 1, 1]
    assert all(f.relative_to(root).parts[0] == names[k] for f, k in zip(files, labels.tolist()))
    images, labels2, _ = load_class_folders(root, channels=1)
    assert images.shape == (6, 1, 12, 12) and torch.equal(labels, labels2)


def test_folder_layout_errors_name_the_file(tmp_path):
    root = _captioned(tmp_path / "t", "txt")
    (root / "img2.txt").unlink()
    with pytest.raises(DataError, match="img2.png has no caption"):
        captioned_files(root)
    bad = _captioned(tmp_path / "j", "jsonl")
    (bad / "metadata.jsonl").write_text(
        '{"file_name": "img0.png", "text": "a"}\n{"file_name": "gone.png", "text": "b"}\n'
    )
    with pytest.raises(DataError, match="gone.png"):
        captioned_files(bad)
    (bad / "metadata.jsonl").write_text('{"file_name": "img0.png"}\n')
    with pytest.raises(DataError, match="metadata.jsonl:1"):
        captioned_files(bad)
    csv_root = _captioned(tmp_path / "c", "csv")
    (csv_root / "metadata.csv").write_text("name,caption\nimg0.png,a\n")
    with pytest.raises(DataError, match="file_name and text"):
        captioned_files(csv_root)
    (csv_root / "metadata.csv").write_text("file_name,text\nimg0.png\n")
    with pytest.raises(DataError, match="metadata.csv:2"):
        captioned_files(csv_root)
    (csv_root / "metadata.csv").write_text("file_name,text\n../outside.png,a\n")
    with pytest.raises(DataError, match="outside the folder"):
        captioned_files(csv_root)
    (csv_root / "metadata.csv").write_bytes("file_name,text\nimg0.png,caf\xe9\n".encode("latin-1"))
    with pytest.raises(DataError, match="not UTF-8"):
        captioned_files(csv_root)
    (bad / "metadata.jsonl").write_text('{"file_name": "img0.png", "text": null}\n')
    with pytest.raises(DataError, match="must be strings"):
        captioned_files(bad)
    pets = _classes(tmp_path / "pets")
    (pets / "birds").mkdir()
    with pytest.raises(DataError, match="birds holds no images"):
        class_folders(pets)
    (pets / "birds").rmdir()
    _png(pets / "loose.png", 9)
    with pytest.raises(DataError, match="loose.png is not in a class sub-folder"):
        class_folders(pets)


def test_byte_order_marks_and_hidden_folders(tmp_path):
    """Excel's and Notepad's UTF-8 byte-order mark is dropped; .ipynb_checkpoints is no class."""
    root = _captioned(tmp_path / "c", "csv")
    text = (root / "metadata.csv").read_text()
    (root / "metadata.csv").write_bytes(b"\xef\xbb\xbf" + text.encode())
    assert captioned_files(root)[1] == WORDS
    (root / "metadata.csv").unlink()
    for k, t in enumerate(WORDS):
        (root / f"img{k}.txt").write_bytes(b"\xef\xbb\xbf" + t.encode())
    assert captioned_files(root)[1] == WORDS
    pets = _classes(tmp_path / "pets")
    _png(pets / ".ipynb_checkpoints" / "x.png", 1)
    assert class_folders(pets)[2] == ["cats", "dogs"]


TINY = [
    "model.params.base_channels=16",
    "model.params.channel_mult=[1,2]",
    "model.params.attention_levels=[1]",
    "model.params.num_res_blocks=1",
    "model.params.num_heads=2",
    "train.batch_size=4",
    "train.warmup_steps=1",
    "train.checkpoint_every=1000",
    "sample.steps=2",
    "data.size=8",
]


@pytest.mark.parametrize("layout", ["jsonl", "csv", "txt"])
def test_text_to_image_trains_on_a_captioned_folder_in_each_layout(tmp_path, layout):
    pytest.importorskip("transformers")
    from kuosan.interop.tiny import tiny_bert

    bert = tiny_bert(tmp_path / "bert")
    root = _captioned(tmp_path / "data", layout)
    folder = [f"data.name=folder:{root}", "data.channels=3", f"text.encoder=path:{bert}", "text.max_length=8"]
    run = cli_resume_equals_uninterrupted(tmp_path, "--preset", "shapes-pixel", *TINY, *folder)
    r = kuosan("txt2img", run, "a red circle", "-n", 2, "--steps", 2, "--out", tmp_path / "x.npy")
    assert json.loads(r.stdout)["shape"] == [2, 3, 8, 8]


def test_class_conditional_trains_on_class_folders(tmp_path):
    root = _classes(tmp_path / "pets")
    folder = [f"data.name=folder:{root}", "label.classes=2", "data.channels=3", "model.params.in_channels=3"]
    run = cli_resume_equals_uninterrupted(tmp_path, "--preset", "digits-class", *TINY, *folder)
    kuosan("sample", run, "-n", 4, "--class", 1, "--out", tmp_path / "dogs.npy")
    assert np.load(tmp_path / "dogs.npy").shape == (4, 3, 8, 8)
    kuosan("sample", run, "-n", 4, "--class", "dogs", "--out", tmp_path / "dogs2.npy")  # by name, recorded in the run
    assert np.array_equal(np.load(tmp_path / "dogs.npy"), np.load(tmp_path / "dogs2.npy"))
    fails_cleanly(kuosan("sample", run, "--class", "birds", "--out", tmp_path / "x.npy", check=False), "cats, dogs")
    (root / "dogs").rename(root / "wolves")  # a resume on relabelled data is refused, not silently retrained
    resumed = kuosan("train", "--resume", "--steps", 6, "--out", run, "--no-progress", check=False)
    fails_cleanly(resumed, "wolves", "trained on")
    folder = [f"data.name=folder:{root}", "data.channels=3", "model.params.in_channels=3"]
    wrong = kuosan("train", "--preset", "digits-class", "--steps", 1, "--out", tmp_path / "w", "--no-progress",
                   *TINY, *folder, check=False)  # fmt: skip
    fails_cleanly(wrong, "label.classes=10", "2 classes")
