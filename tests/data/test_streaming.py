"""The streaming loader (data/streaming.py): it decodes what the in-memory path decodes, its batches are
a function of (seed, step) alone (so workers, process slices and resumes agree), random crops and
flips are windows and mirrors of the image, broken files are named or left out and counted, and a
data set over the memory budget trains through the CLI decoding only what the batches draw."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch
from PIL import Image

import kuosan.data.image_folder as image_folder
import kuosan.data.streaming as streaming
from cli_helpers import fails_cleanly, kuosan
from kuosan.data.errors import DataError
from kuosan.data.image_folder import decode_images, find_images
from kuosan.data.registry import Options, load_labelled_split, load_split
from kuosan.data.streaming import ImageFiles
from train_helpers import checkpoint_tensors, cli_resume_equals_uninterrupted


def _folder(root, n=10, sizes=((12, 9), (9, 12), (10, 10)), mode="RGB"):
    """``n`` PNGs of noise, of the given (width, height) sizes in turn."""
    rng = np.random.default_rng(0)
    root.mkdir(parents=True, exist_ok=True)
    for k in range(n):
        w, h = sizes[k % len(sizes)]
        shape = (h, w, 3) if mode == "RGB" else (h, w)
        Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8), mode).save(root / f"{k:03d}.png")
    return root


def test_a_stream_reads_what_the_in_memory_path_decodes(tmp_path):
    files = find_images(_folder(tmp_path / "d"))
    stream = ImageFiles(files, size=8, channels=3, workers=0)
    memory = decode_images(files, size=8, channels=3)
    assert stream.shape == tuple(memory.shape) == (10, 3, 8, 8)
    assert torch.equal(stream.read(range(10)), memory)
    assert torch.equal(torch.cat(list(stream.split(4))), memory)
    assert torch.equal(stream.item(3, step=5, j=2), memory[3])  # no augmentation asked: as read


def test_batches_are_a_function_of_seed_and_step(tmp_path):
    files = find_images(_folder(tmp_path / "d", n=12))
    a = ImageFiles(files, size=8, seed=3, workers=0)
    b = ImageFiles(files, size=8, seed=3, workers=2)
    assert torch.equal(a.indices(7, 6), b.indices(7, 6)) and not torch.equal(a.indices(7, 6), a.indices(8, 6))
    assert not torch.equal(a.indices(7, 6), ImageFiles(files, size=8, seed=4, workers=0).indices(7, 6))
    whole = a.batches(0, 6, slice(0, 6))
    first_four = [next(whole) for _ in range(4)]
    for step, batch in enumerate(first_four):
        assert torch.equal(batch, a.read(a.indices(step, 6)))
    later = b.batches(2, 6, slice(0, 6))  # a resume at step 2, decoded by two workers
    assert torch.equal(next(later), first_four[2]) and torch.equal(next(later), first_four[3])
    halves = [a.batches(1, 6, slice(0, 3)), a.batches(1, 6, slice(3, 6))]  # two processes' slices
    assert torch.equal(torch.cat([next(h) for h in halves]), first_four[1])


def test_random_crops_and_flips_are_windows_and_mirrors_drawn_per_example(tmp_path):
    root = tmp_path / "wide"
    root.mkdir()
    columns = np.tile(np.arange(16, dtype=np.uint8) * 16, (8, 1))  # 8 high, 16 wide: column c holds 16c
    Image.fromarray(columns, "L").save(root / "a.png")
    stream = ImageFiles(find_images(root), size=8, channels=1, crop="random", flip=True, seed=0, workers=0)
    full = torch.from_numpy(columns).float() / 127.5 - 1
    offsets, flips = set(), 0
    for step in range(100):
        x = stream.item(0, step, j=step % 3)[0]
        assert torch.equal(x, stream.item(0, step, j=step % 3)[0])  # the same draw, every time it is read
        flipped = bool(x[0, 0] > x[0, -1])
        window = x.flip(-1) if flipped else x
        offset = int(round((window[0, 0].item() + 1) * 127.5 / 16))
        assert torch.equal(window, full[:, offset : offset + 8]), step
        offsets.add(offset)
        flips += flipped
    assert offsets == set(range(9)) and 30 < flips < 70
    centre = stream.read([0])[0, 0]
    assert torch.equal(centre, full[:, 4:12])  # pictures and encodings: the centre crop, not mirrored


def test_broken_files_are_named_or_left_out_and_counted(tmp_path, caplog):
    root = tmp_path / "pets"
    _folder(root / "cats", n=3)
    _folder(root / "dogs", n=3)
    (root / "cats" / "001.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    options = Options(size=8, loader="stream", workers=0)
    with pytest.raises(DataError, match="001.png.*data.skip_bad"):
        load_labelled_split(f"folder:{root}", "train", options)
    with pytest.raises(DataError, match="cats/001.png"):
        load_labelled_split(f"folder:{root}", "train", Options(size=8))  # in memory: at decoding, named
    with caplog.at_level(logging.WARNING):
        for loader in ("stream", "memory"):
            images, labels, names = load_labelled_split(
                f"folder:{root}", "train", Options(size=8, loader=loader, skip_bad=True, workers=0)
            )
            assert len(images) == 5 and labels.tolist() == [0, 0, 1, 1, 1] and names == ["cats", "dogs"]
    assert "left out 1 of 6 files that do not decode" in caplog.text


def test_an_error_in_a_worker_comes_back_as_one_line(tmp_path):
    stream = ImageFiles(find_images(_folder(tmp_path / "d", n=4)), size=None, workers=2)  # sizes differ
    with pytest.raises(DataError) as error:
        for _ in stream.batches(0, 4, slice(0, 4)):
            pass
    assert "images differ in size" in str(error.value) and "\n" not in str(error.value)


def test_the_memory_budget_chooses_the_loader(tmp_path):
    root = _folder(tmp_path / "d", n=6, sizes=((8, 8),), mode="L")
    small = load_split(f"folder:{root}", "train", Options(channels=1, loader="auto", memory_mb=0.001))
    large = load_split(f"folder:{root}", "train", Options(channels=1, loader="auto", memory_mb=1))
    assert isinstance(small, ImageFiles) and torch.is_tensor(large)
    with pytest.raises(DataError, match="data.loader=stream"):
        load_split(f"folder:{root}", "train", Options(channels=1, size=8, flip=True, loader="memory"))


TINY = [
    "model.params.base_channels=16",
    "model.params.num_res_blocks=1",
    "model.params.num_heads=2",
    "model.params.groups=8",
    "train.batch_size=4",
    "train.warmup_steps=1",
    "train.checkpoint_every=1000",
    "sample.steps=2",
    "data.size=8",
    "data.channels=1",
]


def test_over_the_budget_training_decodes_only_what_the_batches_draw(tmp_path, monkeypatch):
    root = _folder(tmp_path / "d", n=40, sizes=((10, 8), (8, 9)), mode="L")
    decoded = []

    def counting(file, *args, **kwargs):
        decoded.append(file)
        return decode_file(file, *args, **kwargs)

    decode_file = image_folder.decode_file
    monkeypatch.setattr(streaming, "decode_file", counting)
    monkeypatch.setattr(image_folder, "decode_file", counting)
    train = ["train", "--preset", "digits", "--steps", 3, "--no-progress", *TINY, f"data.name=folder:{root}"]
    kuosan(*train, "data.workers=0", "data.memory_mb=0.005", "--out", tmp_path / "s")  # 40 x 1x8x8 float32: 0.01 MiB
    assert len(decoded) == 3 * 4  # three batches of four: never the whole folder
    decoded.clear()
    kuosan(*train, "--out", tmp_path / "m")
    assert len(decoded) == 40  # within the budget: decoded once, in memory


def test_streamed_training_with_crops_and_flips_resumes_bitwise(tmp_path):
    root = _folder(tmp_path / "d", n=12, sizes=((12, 8), (8, 11)), mode="L")
    folder = [f"data.name=folder:{root}", "data.crop=random", "data.flip=true"]
    cli_resume_equals_uninterrupted(tmp_path, "--preset", "digits", *TINY, *folder)


def test_streamed_class_folders_train_class_conditional_and_resume_bitwise(tmp_path):
    root = tmp_path / "pets"
    _folder(root / "cats", n=4, mode="L")
    _folder(root / "dogs", n=4, mode="L")
    folder = [f"data.name=folder:{root}", "label.classes=2", "data.loader=stream"]
    run = cli_resume_equals_uninterrupted(tmp_path, "--preset", "digits-class", *TINY, *folder)
    kuosan("sample", run, "-n", 2, "--class", "dogs", "--out", tmp_path / "dogs.npy")
    assert np.load(tmp_path / "dogs.npy").shape == (2, 1, 8, 8)


def test_reading_options_fail_cleanly(tmp_path):
    root = _folder(tmp_path / "d", n=2, sizes=((8, 8),), mode="L")
    train = ["train", "--preset", "digits", "--steps", 1, "--out", tmp_path / "r", "--no-progress", *TINY]
    folder = f"data.name=folder:{root}"
    for overrides, words in (
        ([folder, "data.loader=disk"], ["data.loader", "auto, memory, stream"]),
        (["data.flip=true"], ["data.flip", "folder:PATH"]),
        ([folder, "data.flip=true", "data.loader=memory"], ["data.loader=stream"]),
        ([folder, "data.crop=diagonal"], ["data.crop", "center, none, random"]),
        ([folder, "data.workers=-1"], ["data.workers"]),
        ([folder, f"data.cache={tmp_path / 'c'}"], ["data.cache", "latent.autoencoder"]),
    ):
        fails_cleanly(kuosan(*train, *overrides, check=False), *words)
    assert not (tmp_path / "r").exists()


def test_a_first_stage_autoencoder_trains_on_a_streamed_folder(tmp_path):
    """The autoencoder of a latent run on one's own pictures: a VAE trained on a streamed folder, its
    pictures (reconstructions of the first images, read from the stream) drawn."""
    root = _folder(tmp_path / "d", n=8, sizes=((20, 16),))
    run = tmp_path / "vae"
    kuosan("train", "--preset", "shapes-vae", "--steps", 2, "--out", run, "--no-progress",
           f"data.name=folder:{root}", "data.size=16", "data.channels=3", "data.loader=stream", "data.flip=true",
           "model.params.block_out_channels=[8,8]", "model.params.groups=4", "train.batch_size=4",
           "train.warmup_steps=1")  # fmt: skip
    pictures = sorted((run / "samples").glob("*.png"))
    assert pictures and Image.open(pictures[-1]).size[0] > 16
    assert checkpoint_tensors(run)["state"]  # a checkpoint holds the optimizer and RNG states
