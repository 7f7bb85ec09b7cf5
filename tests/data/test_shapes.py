"""Tests for the captioned shapes data set (kuosan.data.shapes) and its attribute classifier."""

from __future__ import annotations

import itertools
import math

import pytest
import torch

from kuosan.data import DATASET_NAMES, DataError, load_dataset
from kuosan.data.shapes import (
    ATTRIBUTES,
    CAPTION_TEMPLATES,
    POSITION_CENTER,
    SHAPES_EVAL_SEEDS,
    ShapesBatch,
    make_caption,
    make_shapes,
    parse_caption,
    shapes_stream,
)


@pytest.fixture(scope="module")
def batch() -> ShapesBatch:
    return make_shapes(600, seed=123)


# ------------------------------------------------------------------------------------------- data


def test_shapes_dtype_and_range(batch):
    assert batch.images.shape == (600, 3, 32, 32) and batch.images.dtype == torch.float32
    assert batch.images.min() >= -1.0 and batch.images.max() <= 1.0
    assert len(batch) == len(batch.captions) == 600
    for key, values in ATTRIBUTES.items():
        a = batch.attributes[key]
        assert a.dtype == torch.int64 and a.shape == (600,)
        assert a.min() >= 0 and a.max() < len(values)
        assert len(torch.unique(a)) == len(values)  # every value occurs in 600 draws
        assert batch.named[key].dtype == torch.bool and batch.named[key].shape == (600,)


def test_shapes_deterministic_by_seed():
    a, b, c = make_shapes(40, seed=5), make_shapes(40, seed=5), make_shapes(40, seed=6)
    assert torch.equal(a.images, b.images) and a.captions == b.captions
    assert all(torch.equal(a.attributes[k], b.attributes[k]) for k in ATTRIBUTES)
    assert not torch.equal(a.images, c.images)
    s1 = list(itertools.islice(shapes_stream(8, seed=1), 3))
    s2 = list(itertools.islice(shapes_stream(8, seed=1), 3))
    assert all(torch.equal(x.images, y.images) and x.captions == y.captions for x, y in zip(s1, s2))
    assert not torch.equal(s1[0].images, s1[1].images)  # the stream moves on
    assert len(set(SHAPES_EVAL_SEEDS.values())) == len(SHAPES_EVAL_SEEDS) >= 2


def test_captions_name_exactly_the_recorded_attributes(batch):
    for i, caption in enumerate(batch.captions):
        parsed = parse_caption(caption)
        for key in ATTRIBUTES:
            expected = int(batch.attributes[key][i]) if batch.named[key][i] else None
            assert parsed[key] == expected, (caption, key)
    assert batch.named["shape"].all() and batch.named["colour"].all()
    for key in ("size", "position"):  # some captions omit them, most name them
        assert 0.3 < batch.named[key].float().mean() < 0.95
    assert len(CAPTION_TEMPLATES) >= 10
    assert len(set(batch.captions)) > 300  # varied wording


def test_make_caption_and_parse_round_trip():
    assert make_caption("circle", "red", "small", "top left") == "a small red circle in the top left corner"
    assert make_caption("square", "blue", "large", "center") == "a large blue square in the middle"
    assert parse_caption("there is a green triangle at the bottom right") == {
        "shape": 2,
        "colour": 1,
        "size": None,
        "position": 3,
    }
    assert parse_caption("a big blue square in the middle")["size"] == ATTRIBUTES["size"].index("large")
    with pytest.raises(ValueError, match="colour"):
        parse_caption("a red green circle")
    with pytest.raises(ValueError, match="purple"):
        make_caption("circle", "purple")


def _centroid_and_area(batch: ShapesBatch) -> tuple[torch.Tensor, torch.Tensor]:
    """Shape mask from saturation (shapes are saturated or bright, backgrounds grey and dark)."""
    x = (batch.images + 1) / 2
    mask = ((x.amax(1) - x.amin(1) > 0.5) | (x.amin(1) > 0.7)).float()  # (N, 32, 32)
    coords = torch.arange(32, dtype=torch.float32) + 0.5
    area = mask.sum((1, 2))
    cx = (mask.sum(1) * coords).sum(1) / area / 32
    cy = (mask.sum(2) * coords).sum(1) / area / 32
    return torch.stack([cx, cy], 1), area


def test_pixels_agree_with_position_size_and_colour(batch):
    centroid, area = _centroid_and_area(batch)
    target = torch.tensor(POSITION_CENTER)[batch.attributes["position"]]
    # a triangle's centroid lies below its bounding-box centre; all within 0.09 of the named spot
    assert (centroid - target).abs().max() < 0.09
    nearest = (centroid[:, None] - torch.tensor(POSITION_CENTER)[None]).norm(dim=2).argmin(1)
    assert torch.equal(nearest, batch.attributes["position"])
    small = area[batch.attributes["size"] == 0]
    large = area[batch.attributes["size"] == 1]
    assert small.max() < large.min()  # the two sizes never overlap
    # mean colour of the shape pixels has the right channels on
    x = (batch.images + 1) / 2
    mask = (x.amax(1) - x.amin(1) > 0.5) | (x.amin(1) > 0.7)
    mean_rgb = (x * mask[:, None]).sum((2, 3)) / mask.sum((1, 2))[:, None]
    from kuosan.data.shapes import COLOUR_RGB

    assert torch.equal((mean_rgb > 0.5).float(), COLOUR_RGB[batch.attributes["colour"]])


def test_backgrounds_are_never_shape_coloured(batch):
    x = (batch.images + 1) / 2
    corner_far = []
    for i in range(len(batch)):  # the pixel block farthest from the shape: a corner opposite to it
        pos = ATTRIBUTES["position"][int(batch.attributes["position"][i])]
        rows = slice(0, 4) if "bottom" in pos else slice(28, 32)
        cols = slice(0, 4) if "right" in pos else slice(28, 32)
        corner_far.append(x[i, :, rows, cols])
    bg = torch.stack(corner_far)
    assert bg.max() <= 0.45 + 1e-6
    assert (bg.amax(1) - bg.amin(1)).max() < 0.25  # greyish: low chroma


def test_antialiased_edges(batch):
    x = (batch.images[:50] + 1) / 2
    levels = torch.unique((x * 255).round())
    assert len(levels) > 200  # not a two-level picture


def test_load_dataset_shapes():
    assert "shapes" in DATASET_NAMES
    images = load_dataset("shapes", n=12, seed=3)
    assert torch.equal(images, make_shapes(12, 3).images)
    with pytest.raises(DataError, match="seed"):
        load_dataset("shapes", n=12)
    with pytest.raises(DataError, match="positive"):
        load_dataset("shapes", n=0, seed=1)


def test_batch_indexing(batch):
    sub = batch[torch.tensor([3, 1])]
    assert sub.captions == [batch.captions[3], batch.captions[1]]
    assert torch.equal(sub.images[1], batch.images[1])
    small = batch.attributes["size"] == 0
    assert len(batch[:5]) == 5 and len(batch[small]) == int(small.sum())
    assert (batch[small].attributes["size"] == 0).all()


def test_build_data_shapes_uses_run_seed_and_fixed_eval_sets():
    from kuosan.build import build_data
    from kuosan.config import resolve_config

    cfg = resolve_config(overrides=["data.name=shapes", "data.n=6", "train.seed=4"])
    assert torch.equal(build_data(cfg), make_shapes(6, 4).images)
    assert torch.equal(build_data(cfg, split="test"), make_shapes(6, SHAPES_EVAL_SEEDS["test"]).images)
    with pytest.raises(DataError, match="split"):
        build_data(cfg, split="holdout")


# ------------------------------------------------------------------------------------- classifier


class _TableClassifier(torch.nn.Module):
    """Predicts, for image i (its pixels all equal i / 100), the attributes in row i of a table."""

    def __init__(self, table: dict[str, list[int]]):
        super().__init__()
        self.table = {k: torch.tensor(v) for k, v in table.items()}

    def forward(self, x):
        idx = (x[:, 0, 0, 0] * 100).round().long()
        return {k: torch.nn.functional.one_hot(v[idx], len(ATTRIBUTES[k])).float() for k, v in self.table.items()}


def test_prompt_accuracy_semantics():
    from kuosan.judges.shapes import prompt_accuracy

    images = (torch.arange(4).float() / 100).view(4, 1, 1, 1).expand(4, 3, 32, 32)
    predicted = {"shape": [0, 1, 2, 0], "colour": [3, 3, 3, 3], "size": [0, 1, 0, 1], "position": [4, 4, 4, 4]}
    prompted = {
        "shape": torch.tensor([0, 1, 2, 1]),  # image 3 wrong
        "colour": torch.tensor([3, 3, 0, 3]),  # image 2 wrong
        "size": torch.tensor([1, 1, 0, 1]),  # image 0 wrong, but its prompt omits size
        "position": torch.tensor([4, 0, 4, 4]),
    }  # image 1 wrong, named only for images 1, 2
    named = {
        "shape": torch.ones(4, dtype=torch.bool),
        "colour": torch.ones(4, dtype=torch.bool),
        "size": torch.tensor([False, True, True, True]),
        "position": torch.tensor([False, True, True, False]),
    }
    report = prompt_accuracy(images, prompted, named, classifier=_TableClassifier(predicted))
    assert report["shape"] == 0.75 and report["colour"] == 0.75
    assert report["size"] == 1.0  # image 0's wrong size is not asked for
    assert report["position"] == 0.5  # images 1 (wrong) and 2 (right)
    assert report["all_named"] == 0.25  # only image 0 matches everything its prompt names
    assert report["n"] == 4
    everything = prompt_accuracy(images, prompted, classifier=_TableClassifier(predicted))
    assert everything["size"] == 0.75 and everything["all_named"] == 0.0
    none_named = dict(named, position=torch.zeros(4, dtype=torch.bool))
    assert math.isnan(prompt_accuracy(images, prompted, none_named, classifier=_TableClassifier(predicted))["position"])
    with pytest.raises(ValueError, match="3, 32, 32"):
        prompt_accuracy(torch.zeros(2, 1, 32, 32), prompted)


@pytest.fixture(scope="module")
def fresh():
    return make_shapes(300, SHAPES_EVAL_SEEDS["test"])


def test_shipped_classifier_reads_fresh_images(fresh):
    from kuosan.judges.shapes import WEIGHTS_PATH, load_shapes_classifier, prompt_accuracy

    assert WEIGHTS_PATH.stat().st_size < 1_000_000
    report = prompt_accuracy(fresh.images, fresh.attributes, classifier=load_shapes_classifier())
    assert all(report[key] >= 0.98 for key in ATTRIBUTES), report
    assert report["all_named"] >= 0.95
    wrong = {k: (v + 1) % len(ATTRIBUTES[k]) for k, v in fresh.attributes.items()}  # every prompt wrong
    report = prompt_accuracy(fresh.images, wrong, classifier=load_shapes_classifier())
    assert all(report[key] <= 0.02 for key in ATTRIBUTES) and report["all_named"] == 0.0


def test_classifier_tolerates_mildly_imperfect_images(fresh):
    from kuosan.judges.shapes import load_shapes_classifier, prompt_accuracy

    g = torch.Generator().manual_seed(0)
    blurred = torch.nn.functional.avg_pool2d(fresh.images, 3, stride=1, padding=1, count_include_pad=False)
    noisy = 0.5 * fresh.images + 0.5 * blurred + 0.05 * torch.randn(fresh.images.shape, generator=g)
    shifted = (noisy + 0.05).clamp(-1, 1)  # a slight colour cast
    report = prompt_accuracy(shifted, fresh.attributes, classifier=load_shapes_classifier())
    assert all(report[key] >= 0.95 for key in ATTRIBUTES), report


def test_classifier_rejects_wrong_shape():
    from kuosan.judges.shapes import ShapesClassifier

    with pytest.raises(ValueError, match="3, 32, 32"):
        ShapesClassifier()(torch.zeros(2, 3, 16, 16))


def test_bad_arguments_are_one_line_data_errors():
    import numpy as np

    assert torch.equal(make_shapes(np.int64(3), np.int64(2)).images, make_shapes(3, 2).images)
    for n, seed in [(0, 1), (2.5, 1), (True, 1), (2, "x"), (2, 1.0)]:
        with pytest.raises(DataError) as err:
            make_shapes(n, seed)
        assert "\n" not in str(err.value)
    with pytest.raises(DataError, match="batch_size"):
        next(shapes_stream(0, seed=1))
