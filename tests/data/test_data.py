"""Tests for kuosan.data: digits, 2-D toy distributions, image folders, the dataset dispatcher."""

from __future__ import annotations

import math
import zlib

import numpy as np
import pytest
import torch
from PIL import Image

from kuosan.data import (
    DIGITS_BIN_WIDTH,
    DIGITS_NUM_LEVELS,
    TOY2D_NAMES,
    DataError,
    load_dataset,
    load_digits,
    load_digits_with_labels,
    load_image_folder,
    sample_toy2d,
)
from kuosan.data.toy2d import CHECKERBOARD_SQUARE, EIGHT_GAUSSIANS_RADIUS, EIGHT_GAUSSIANS_STD


def _seeded(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# ----------------------------------------------------------------------------------------- digits


@pytest.mark.parametrize("split", ["train", "test", "all"])
def test_digits_shape_range_and_17_levels(split):
    x = load_digits(split)
    assert x.dtype == torch.float32 and x.shape[1:] == (1, 8, 8)
    assert x.min().item() == -1.0 and x.max().item() == 1.0
    levels = torch.unique(x)
    assert len(levels) == DIGITS_NUM_LEVELS == 17
    assert torch.allclose(levels.diff(), torch.full((16,), DIGITS_BIN_WIDTH))


def test_digits_splits_partition_the_dataset_and_are_fixed():
    all_x, all_y = load_digits_with_labels("all")
    train_x, train_y = load_digits_with_labels("train")
    test_x, test_y = load_digits_with_labels("test")
    assert len(all_x) == 1797 and len(train_x) + len(test_x) == 1797
    assert len(test_x) == 360  # ceil(0.2 * 1797)
    assert train_y.dtype == torch.int64 and test_y.dtype == torch.int64
    # Every image of "all" sits in exactly one split (matched by pixels and label).
    key = lambda x, y: {(tuple(img.flatten().tolist()), int(lbl)) for img, lbl in zip(x, y)}  # noqa: E731
    train_keys, test_keys, all_keys = key(train_x, train_y), key(test_x, test_y), key(all_x, all_y)
    assert not train_keys & test_keys
    assert train_keys | test_keys == all_keys
    # Same arguments, same split; another seed, another split.
    assert torch.equal(load_digits("test"), test_x)
    assert not torch.equal(load_digits("test", split_seed=1), test_x)


def test_digits_split_is_stratified():
    _, all_y = load_digits_with_labels("all")
    _, test_y = load_digits_with_labels("test", test_fraction=0.25)
    all_counts = torch.bincount(all_y, minlength=10).double()
    test_counts = torch.bincount(test_y, minlength=10).double()
    assert (test_counts > 0).all()
    assert torch.allclose(test_counts / all_counts, torch.full((10,), 0.25, dtype=torch.float64), atol=0.01)


def test_digits_bad_arguments():
    with pytest.raises(DataError, match="split"):
        load_digits("validation")
    with pytest.raises(DataError, match="test_fraction"):
        load_digits("train", test_fraction=1.5)


# ------------------------------------------------------------------------------------------ toy2d


@pytest.mark.parametrize("name", TOY2D_NAMES)
def test_toy2d_shape_determinism_and_standardisation(name):
    x = sample_toy2d(name, 20000, generator=_seeded(0))
    assert x.shape == (20000, 2) and x.dtype == torch.float32 and torch.isfinite(x).all()
    assert torch.equal(x, sample_toy2d(name, 20000, generator=_seeded(0)))
    assert not torch.equal(x, sample_toy2d(name, 20000, generator=_seeded(1)))
    # Mean 0 and E|x|^2 = 2 (unit variance per coordinate on average), up to sampling error.
    assert x.mean(0).abs().max() < 0.05
    assert abs(x.pow(2).sum(1).mean().item() / 2 - 1.0) < 0.05
    assert sample_toy2d(name, 0).shape == (0, 2)


def test_toy2d_errors():
    with pytest.raises(DataError, match="unknown toy2d dataset 'spiral'.*moons"):
        sample_toy2d("spiral", 10)
    with pytest.raises(DataError, match="non-negative"):
        sample_toy2d("moons", -1)


def test_eight_gaussians_has_eight_clusters_on_its_circle():
    x = sample_toy2d("8gaussians", 8000, generator=_seeded(2))
    angles = torch.arange(8) * (2 * math.pi / 8)
    centres = EIGHT_GAUSSIANS_RADIUS * torch.stack([angles.cos(), angles.sin()], dim=1)
    dist, nearest = torch.cdist(x, centres).min(dim=1)
    counts = torch.bincount(nearest, minlength=8)
    assert (counts > 800).all() and (counts < 1200).all()  # ~1000 each
    # Distances to the nearest centre follow a Rayleigh law: mean std * sqrt(pi/2).
    assert abs(dist.mean().item() / (EIGHT_GAUSSIANS_STD * math.sqrt(math.pi / 2)) - 1) < 0.05
    assert abs(x.norm(dim=1).mean().item() - EIGHT_GAUSSIANS_RADIUS) < 0.05
    assert abs(EIGHT_GAUSSIANS_RADIUS - 1.393) < 1e-3


def test_checkerboard_points_fall_in_alternating_squares():
    x = sample_toy2d("checkerboard", 8000, generator=_seeded(3))
    assert x.abs().max() <= 2 * CHECKERBOARD_SQUARE
    cell = torch.floor(x / CHECKERBOARD_SQUARE).long()  # (i, j), each in -2..1
    assert ((cell[:, 0] + cell[:, 1]) % 2 == 0).all()
    occupied = torch.unique(cell, dim=0)
    assert len(occupied) == 8  # all 8 black squares of the 4x4 board are used


def test_moons_has_two_arcs_with_half_the_points_each():
    x = sample_toy2d("moons", 4000, generator=_seeded(4))
    # Undo the documented standardisation, then measure the distance to each noiseless arc.
    var = (0.75 + 0.5 - 4 / math.pi**2 + (2 / math.pi - 0.25) ** 2) / 2 + 0.1**2
    raw = x * math.sqrt(var) + torch.tensor([0.5, 0.25])
    t = torch.linspace(0, math.pi, 2000)
    upper = torch.stack([t.cos(), t.sin()], dim=1)
    lower = torch.stack([1 - t.cos(), 0.5 - t.sin()], dim=1)
    dist = torch.stack([torch.cdist(raw, upper).min(1).values, torch.cdist(raw, lower).min(1).values], 1)
    nearest_dist, arc = dist.min(dim=1)
    assert abs(arc.float().mean().item() - 0.5) < 0.05
    assert nearest_dist.median() < 0.1  # noise std 0.1: points hug their arc
    # The two components are separated: few points are about as close to both arcs.
    assert ((dist[:, 0] - dist[:, 1]).abs() < 0.1).float().mean() < 0.02


def test_swissroll_is_a_spiral():
    x = sample_toy2d("swissroll", 4000, generator=_seeded(5))
    # Undo the documented standardisation: the radius then equals the angle t up to noise 0.5.
    var = (9.75 * math.pi**2 - 4 - (2 / (3 * math.pi)) ** 2) / 2 + 0.25
    raw = x * math.sqrt(var) + torch.tensor([2.0, 2 / (3 * math.pi)])
    radius = raw.norm(dim=1)
    assert radius.min() > 1.5 * math.pi - 2.5 and radius.max() < 4.5 * math.pi + 2.5
    # Unwrap the polar angle with the radius: t = angle + 2 pi k is the branch closest to the radius.
    angle = torch.atan2(raw[:, 1], raw[:, 0])
    k = torch.round((radius - angle) / (2 * math.pi))
    assert (angle + 2 * math.pi * k - radius).abs().median() < 0.5


# ----------------------------------------------------------------------------------- image folder


def _write(path, size, mode, fmt="PNG", value=None):
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(zlib.crc32(path.name.encode()))  # stable across runs
    shape = (size[1], size[0]) if mode == "L" else (size[1], size[0], 3)
    pixels = rng.integers(0, 256, shape, dtype=np.uint8) if value is None else np.full(shape, value, np.uint8)
    Image.fromarray(pixels, mode).save(path, fmt)
    return pixels


def test_image_folder_same_size_no_resize(tmp_path):
    a = _write(tmp_path / "a.png", (6, 4), "L")
    _write(tmp_path / "sub" / "b.PNG", (6, 4), "RGB")
    _write(tmp_path / "sub" / "deeper" / "c.bmp", (6, 4), "RGB")
    (tmp_path / "notes.txt").write_text("not an image")
    x = load_image_folder(tmp_path, channels=1)
    assert x.shape == (3, 1, 4, 6) and x.dtype == torch.float32
    assert x.min() >= -1 and x.max() <= 1
    # Sorted order, exact mapping x / 127.5 - 1 for a lossless greyscale file.
    assert torch.equal(x[0, 0], torch.from_numpy(a).float() / 127.5 - 1)
    rgb = load_image_folder(tmp_path, channels=3)
    assert rgb.shape == (3, 3, 4, 6)
    assert torch.equal(rgb[0, 0], rgb[0, 2])  # a greyscale image becomes three equal channels


def test_image_folder_extreme_values_map_to_minus_one_and_one(tmp_path):
    _write(tmp_path / "black.png", (3, 3), "L", value=0)
    _write(tmp_path / "white.png", (3, 3), "L", value=255)
    x = load_image_folder(tmp_path, channels=1)
    assert torch.equal(x[0], -torch.ones(1, 3, 3)) and torch.equal(x[1], torch.ones(1, 3, 3))


def test_image_folder_resize_and_crop(tmp_path):
    _write(tmp_path / "wide.jpg", (40, 20), "RGB", fmt="JPEG")
    _write(tmp_path / "tall.JPEG", (10, 30), "L", fmt="JPEG")
    _write(tmp_path / "square.webp", (16, 16), "RGB", fmt="WEBP")
    for crop in ("center", "none"):
        x = load_image_folder(tmp_path, size=8, channels=3, crop=crop)
        assert x.shape == (3, 3, 8, 8) and x.min() >= -1 and x.max() <= 1
    with pytest.raises(DataError, match="crop"):
        load_image_folder(tmp_path, size=8, crop="random")


def test_image_folder_center_crop_keeps_the_middle(tmp_path):
    # 30x10 image: left third black, middle white, right third black. Shorter side 10 -> size 10
    # needs no resize, and the centre crop is exactly the white middle square.
    pixels = np.zeros((10, 30), np.uint8)
    pixels[:, 10:20] = 255
    Image.fromarray(pixels, "L").save(tmp_path / "stripes.png")
    x = load_image_folder(tmp_path, size=10, channels=1)
    assert torch.equal(x, torch.ones(1, 1, 10, 10))
    squashed = load_image_folder(tmp_path, size=10, channels=1, crop="none")
    assert squashed[0, 0, :, 0].max() < 0 and squashed[0, 0, :, 5].min() > 0.9  # black, white, black


def test_image_folder_errors_name_the_problem(tmp_path):
    missing = tmp_path / "nowhere"
    with pytest.raises(DataError, match="nowhere.*does not exist"):
        load_image_folder(missing)
    (tmp_path / "file.png").write_bytes(b"")
    with pytest.raises(DataError, match="not a directory"):
        load_image_folder(tmp_path / "file.png")
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "readme.txt").write_text("hi")
    with pytest.raises(DataError, match=r"no images \(\.png/\.jpg.*\) in .*empty"):
        load_image_folder(empty)
    corrupt = tmp_path / "corrupt"
    _write(corrupt / "good.png", (4, 4), "L")
    (corrupt / "zz_bad.png").write_bytes(b"this is not a png at all")
    with pytest.raises(DataError, match="cannot read image .*zz_bad.png"):
        load_image_folder(corrupt)
    mixed = tmp_path / "mixed"
    _write(mixed / "a.png", (4, 4), "L")
    _write(mixed / "b.png", (5, 4), "L")
    with pytest.raises(DataError, match="differ in size.*b.png is 5x4"):
        load_image_folder(mixed)
    assert load_image_folder(mixed, size=4).shape == (2, 3, 4, 4)  # size= resolves it
    with pytest.raises(DataError, match="channels"):
        load_image_folder(mixed, channels=4)


# ------------------------------------------------------------------------------------- dispatcher


def test_load_dataset_dispatches_by_name(tmp_path):
    assert torch.equal(load_dataset("digits", split="test"), load_digits("test"))
    x = load_dataset("toy2d:8gaussians", n=50, generator=_seeded(0))
    assert torch.equal(x, sample_toy2d("8gaussians", 50, generator=_seeded(0)))
    _write(tmp_path / "img" / "a.png", (5, 5), "RGB")
    assert load_dataset(f"folder:{tmp_path / 'img'}", size=4).shape == (1, 3, 4, 4)
    for bad in ("mnist", "toy2d:spiral", "folder:"):
        with pytest.raises(DataError, match="unknown dataset.*known: digits, toy2d:moons"):
            load_dataset(bad)
    with pytest.raises(DataError, match="needs the number of samples"):
        load_dataset("toy2d:moons")
