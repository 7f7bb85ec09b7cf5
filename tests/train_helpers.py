"""Helpers of the tests that train through ``build_trainer``."""

from pathlib import Path

import torch

from cli_helpers import kuosan
from kuosan.app import build_trainer
from kuosan.config import resolve_config
from kuosan.train import checkpoint as ckpt

# a tiny digits U-Net for training tests (8 GroupNorm groups: it exports to diffusers)
TINY_DIGITS = [
    "model.params.base_channels=16",
    "model.params.num_res_blocks=1",
    "model.params.num_heads=2",
    "model.params.groups=8",
    "train.batch_size=16",
    "train.warmup_steps=1",
    "train.checkpoint_every=1000",
]


def trained_digits(out: Path, *, seed: int, steps: int = 3) -> Path:
    """A tiny digits run (``TINY_DIGITS``) trained ``steps`` steps from ``seed``: a base to start from."""
    build_trainer(resolve_config("digits", None, TINY_DIGITS + [f"train.seed={seed}"]), out, progress=False).fit(
        steps=steps
    )
    return out


def cli_resume_equals_uninterrupted(tmp_path: Path, *train_args) -> Path:
    """``kuosan train TRAIN_ARGS`` through the CLI: 2 steps, then ``--resume`` to 4, equal 4 steps
    straight, bitwise (weights, EMA, optimizer, RNG). Returns the straight run."""
    a, b = tmp_path / "a", tmp_path / "b"
    kuosan("train", "--steps", 4, "--out", a, "--no-progress", *train_args)
    kuosan("train", "--steps", 2, "--out", b, "--no-progress", *train_args)
    kuosan("train", "--resume", "--steps", 4, "--out", b, "--no-progress")
    ta, tb = checkpoint_tensors(a), checkpoint_tensors(b)
    for name in ta:
        for key in ta[name]:
            assert torch.equal(ta[name][key], tb[name][key]), (name, key)
    return a


def checkpoint_tensors(run: Path) -> dict:
    """{"model", "ema", "state"} -> that checkpoint part's tensors."""
    return {name: ckpt.load_tensors(run, name) for name in ("model", "ema", "state")}


def assert_resume_equals_uninterrupted(make_cfg, tmp_path: Path, *, steps: int = 6, stop: int = 3):
    """``steps`` steps straight == ``stop`` steps, a new Trainer resumed from the checkpoint, then on to
    ``steps``: weights, EMA, optimizer and RNG states bitwise. ``make_cfg()`` returns a fresh config
    each time (building may fill in fields). Returns (straight trainer, its checkpoint tensors)."""
    straight = build_trainer(make_cfg(), tmp_path / "a", progress=False)
    straight.fit(steps=steps)
    build_trainer(make_cfg(), tmp_path / "b", progress=False).fit(steps=stop)
    resumed = build_trainer(make_cfg(), tmp_path / "b", progress=False)
    resumed.resume()
    assert resumed.step == stop
    resumed.fit(steps=steps)
    a, b = checkpoint_tensors(tmp_path / "a"), checkpoint_tensors(tmp_path / "b")
    for name in a:
        assert a[name].keys() == b[name].keys(), name
        for k in a[name]:
            assert torch.equal(a[name][k], b[name][k]), (name, k)
    fresh = build_trainer(make_cfg(), tmp_path / "c", progress=False)  # and training really moved the weights
    assert not all(torch.equal(v, a["model"][k]) for k, v in fresh.net.state_dict().items())
    return straight, a
