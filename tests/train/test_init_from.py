"""train.init_from: a new run starts from a kuosan run's EMA weights or a diffusers U-Net folder, by
the partial loading rules (new layers initialised, extra ones ignored, a shape mismatch named)."""

from __future__ import annotations

import importlib.util
import json
import shutil

import pytest
import torch

from kuosan.app import build_trainer
from kuosan.config import ConfigError, resolve_config
from kuosan.train import checkpoint as ckpt
from train_helpers import TINY_DIGITS, checkpoint_tensors, trained_digits

TINY = TINY_DIGITS


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    out = tmp_path_factory.mktemp("src") / "digits"
    return trained_digits(out, seed=3)


def test_a_run_starts_from_another_runs_ema_weights_with_a_fresh_optimizer(source, tmp_path):
    ema = ckpt.load_tensors(source, "ema")
    tr = build_trainer(
        resolve_config("digits", None, TINY + [f"train.init_from={source}"]), tmp_path / "a", progress=False
    )
    assert all(torch.equal(v, ema[k]) for k, v in tr.net.state_dict().items())
    assert tr.step == 0 and not tr.opt.state  # the optimizer starts fresh
    tr.fit(steps=2)
    # resuming needs neither the source (the checkpoint has the weights) nor gives other numbers
    straight = checkpoint_tensors(tmp_path / "a")
    kept = tmp_path / "kept"
    shutil.copytree(source, kept)
    cfg = resolve_config("digits", None, TINY + [f"train.init_from={kept}"])
    build_trainer(cfg, tmp_path / "b", progress=False).fit(steps=1)
    shutil.rmtree(kept)
    resumed = build_trainer(resolve_config("digits", None, TINY + [f"train.init_from={kept}"]), tmp_path / "b",
                            progress=False)  # fmt: skip
    resumed.resume()
    resumed.fit(steps=2)
    again = checkpoint_tensors(tmp_path / "b")
    assert all(torch.equal(straight[n][k], again[n][k]) for n in straight for k in straight[n])


def test_partial_loading_rules(source, tmp_path):
    ema = ckpt.load_tensors(source, "ema")
    cfg = resolve_config("digits-class", None, TINY + [f"train.init_from={source}"])
    tr = build_trainer(cfg, tmp_path / "c", progress=False)
    state = tr.net.state_dict()
    assert all(torch.equal(state[k], v) for k, v in ema.items())  # every shared tensor loaded
    fresh = build_trainer(resolve_config("digits-class", None, TINY), tmp_path / "d", progress=False)
    assert torch.equal(state["label_embed.weight"], fresh.net.state_dict()["label_embed.weight"])  # the new layer
    tr.fit(steps=1)
    # a class run into an unconditional one: the label embedding is ignored, the rest loaded
    from kuosan.init_from import load_into, source_weights

    plain = build_trainer(resolve_config("digits", None, TINY), tmp_path / "e", progress=False).net
    report = load_into(plain, *source_weights(str(tmp_path / "c"), plain))
    assert report["ignored"] == ["label_embed.weight"] and report["new"] == [] and len(report["loaded"]) == len(ema)
    wider = resolve_config("digits", None, TINY + ["model.params.base_channels=32", f"train.init_from={source}"])
    with pytest.raises(ConfigError, match=r"init_from: \S+ has shape \(\d+,.*\) in the run .* here"):
        build_trainer(wider, tmp_path / "f", progress=False)
    with pytest.raises(ConfigError, match="no kuosan run"):
        build_trainer(resolve_config("digits", None, TINY + [f"train.init_from={tmp_path}"]), tmp_path / "g")
    with pytest.raises(ConfigError, match="no kuosan run"):
        build_trainer(resolve_config("digits", None, TINY + [f"train.init_from={tmp_path / 'none'}"]), tmp_path / "h")


@pytest.mark.skipif(importlib.util.find_spec("diffusers") is None, reason="needs diffusers")
def test_a_run_starts_from_a_diffusers_unet_folder(source, tmp_path):
    from cli_helpers import kuosan

    kuosan("export", source, "--out", tmp_path / "hf")
    ema = ckpt.load_tensors(source, "ema")
    cfg = resolve_config("digits", None, TINY + [f"train.init_from=diffusers:{tmp_path / 'hf'}"])
    tr = build_trainer(cfg, tmp_path / "a", progress=False)
    assert all(torch.equal(v, ema[k]) for k, v in tr.net.state_dict().items())  # q, k, v fused back exactly
    with pytest.raises(ConfigError, match="no config.json"):
        build_trainer(resolve_config("digits", None, TINY + [f"train.init_from=diffusers:{tmp_path}"]), tmp_path / "b")
    # the same shapes, another function (google's DDPM folders: flip_sin_to_cos false): refused by name
    config = json.loads((tmp_path / "hf" / "unet" / "config.json").read_text())
    (tmp_path / "hf" / "unet" / "config.json").write_text(json.dumps({**config, "flip_sin_to_cos": False}))
    with pytest.raises(ConfigError, match="flip_sin_to_cos=False"):
        build_trainer(cfg, tmp_path / "c", progress=False)


def test_fine_tuning_on_a_subset_of_classes(source, tmp_path):
    """data.keep_classes keeps the examples of those classes (digits 0 and 1 here) for a fine-tune."""
    from kuosan.build import build_data, build_labelled_data

    cfg = resolve_config("digits", None, TINY + ["data.keep_classes=[0,1]", f"train.init_from={source}"])
    images, labels, names = build_labelled_data(cfg)
    assert set(labels.tolist()) == {0, 1} and len(names) == 10 and torch.equal(build_data(cfg), images)
    assert len(images) == int(((labels == 0) | (labels == 1)).sum()) > 200
    tr = build_trainer(cfg, tmp_path / "ft", progress=False)
    assert len(tr.data) == len(images)
    with pytest.raises(ConfigError, match="not a class"):
        build_labelled_data(resolve_config("digits", None, ["data.keep_classes=[12]"]))
    with pytest.raises(ConfigError, match="keep_classes"):
        build_trainer(resolve_config("shapes-pixel", None, ["data.keep_classes=[0]"]), tmp_path / "x")
