"""`kuosan dreamfusion`: a NeRF optimised by SDS through a frozen text model, its outputs, and bad input."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from cli_helpers import fails_cleanly, kuosan


@pytest.fixture(scope="module")
def sd(tmp_path_factory):
    pytest.importorskip("diffusers")
    from kuosan.interop.tiny import tiny_stable_diffusion

    return f"diffusers:{tiny_stable_diffusion(tmp_path_factory.mktemp('sd') / 'sd')}"


FAST = ["--steps", 4, "--samples", 8, "--albedo-warmup", 0.5]


def test_dreamfusion_writes_views_turntable_nerf_log_and_mesh(sd, tmp_path):
    """Through a latent model (renders -> frozen VAE encoder -> SDS): every output is there and
    readable, the NeRF moved from its seeded start, the same seed gives the same views, and --init
    with --steps 0 renders a saved NeRF again exactly."""
    from PIL import Image

    from kuosan.app.text_to_3d import load_nerf
    from kuosan.networks.nerf import NeRF

    outs = [tmp_path / "a", tmp_path / "b"]
    for out in outs:
        r = kuosan("dreamfusion", sd, "a red circle", "--out", out, *FAST, "--save-mesh", "--mesh-level", 1.0)
        report = json.loads(r.stdout)
    views = np.load(outs[0] / "views.npy")
    assert views.shape == (8, 3, 32, 32) and views.dtype == np.float32 and np.abs(views).max() <= 1
    assert np.array_equal(views, np.load(outs[1] / "views.npy"))
    gif = Image.open(outs[0] / "turntable.gif")
    assert gif.n_frames == 24 and gif.size == (3 * 4 * 32, 4 * 32)  # shaded | textureless | normals, 4x
    nerf, config = load_nerf(outs[0])
    assert config["prompt"] == "a red circle" and config["steps"] == 4 and config["nerf"]["encoding"] == "frequency"
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)  # the seed's start
        start = NeRF(**config["nerf"])
    moved = [not torch.equal(p, q) for p, q in zip(nerf.state_dict().values(), start.state_dict().values())]
    assert any(moved) and config["init"] is None
    kuosan("dreamfusion", sd, "a red circle", "--init", outs[0], "--steps", 0, "--samples", 8, "--out", tmp_path / "r")
    assert np.array_equal(views, np.load(tmp_path / "r" / "views.npy"))
    log = [json.loads(line) for line in (outs[0] / "log.jsonl").read_text().splitlines()]
    assert (
        log[0]["step"] == 0
        and log[-1]["report"]["steps"] == 4
        and all(math.isfinite(e.get("residual_sq", 0)) for e in log)
    )
    assert set(report["seconds_per_step"]) == {"render", "encode", "denoiser", "decode", "backward"}
    assert report["seconds_per_step"]["decode"] == 0  # the gradient goes back through the encoder
    r = kuosan("dreamfusion", sd, "a red circle", "--out", tmp_path / "c", *FAST, "--decoded-target")
    assert json.loads(r.stdout)["seconds_per_step"]["decode"] > 0
    assert not np.array_equal(views, np.load(tmp_path / "c" / "views.npy"))
    header = (outs[0] / "mesh.ply").read_bytes()[:200].decode("latin-1")
    assert header.startswith("ply") and report["mesh"]["faces"] > 0 and "property uchar red" in header


def test_dreamfusion_pixel_space_view_prompts_and_perp_neg(tmp_path):
    """A kuosan pixel-space text run: SDS on the rendered pixels themselves, with view-dependent
    prompts and Perp-Neg (cameras grouped by their view word; one denoiser call of 4 parts per
    group), three cameras a step, the learned background, the hash grid and textureless renders."""
    pytest.importorskip("transformers")
    from kuosan import app
    from kuosan.app.training import build_trainer
    from kuosan.config import resolve_config
    from kuosan.interop.tiny import tiny_bert

    bert = tiny_bert(tmp_path / "bert")
    cfg = resolve_config(
        "shapes-pixel",
        None,
        [f"text.encoder=path:{bert}", "data.n=16", "train.batch_size=4", "train.warmup_steps=1",
         "train.checkpoint_every=1000", "text.max_length=8", "model.params.base_channels=8",
         "model.params.channel_mult=[1,2]", "model.params.attention_levels=[1]", "model.params.num_heads=1",
         "model.params.num_res_blocks=1"],
    )  # fmt: skip
    build_trainer(cfg, tmp_path / "px", progress=False).fit(steps=1)
    report = app.dreamfusion(tmp_path / "px", "red", tmp_path / "out", steps=3, n_samples=8, perp_neg=True,
                             batch_size=3, background="mlp", encoding="hashgrid", textureless=0.5)  # fmt: skip
    assert report["views"] == [8, 3, 32, 32] and report["seconds_per_step"]["decode"] == 0
    config = json.loads((tmp_path / "out" / "config.json").read_text())
    assert config["perp_neg"] is True and config["view_prompts"] is True  # Perp-Neg's negatives are views


def test_dreamfusion_bad_input_is_one_line_and_loses_nothing(sd, tmp_path):
    out = tmp_path / "out"
    run = tmp_path / "digits"
    kuosan("train", "--preset", "digits", "--steps", 1, "--out", run, "--no-progress",
           "model.params.base_channels=32", "model.params.num_res_blocks=1", "train.batch_size=8")  # fmt: skip
    fails_cleanly(kuosan("dreamfusion", run, "a red circle", "--out", out, check=False), "no text conditioning")
    long = " ".join(["a red circle"] * 20)
    fails_cleanly(kuosan("dreamfusion", sd, long, "--out", out, *FAST, check=False), "tokens", "at most")
    fails_cleanly(
        kuosan("dreamfusion", sd, "red", "--elevation", 10, 100, "--out", out, check=False), "impossible elevation"
    )
    fails_cleanly(kuosan("dreamfusion", sd, "red", "--radius", 2, 1, "--out", out, check=False), "impossible radius")
    fails_cleanly(kuosan("dreamfusion", sd, "red", "--fov", 0, 30, "--out", out, check=False), "impossible fov")
    fails_cleanly(kuosan("dreamfusion", sd, "red", "--steps", 0, "--out", out, check=False), "steps")
    fails_cleanly(kuosan("dreamfusion", sd, "red", "--lambda-entropy", "nan", "--out", out, check=False), "entropy")
    fails_cleanly(kuosan("dreamfusion", sd, "red", "--mesh-level", -1, "--out", out, check=False), "mesh-level")
    fails_cleanly(kuosan("dreamfusion", sd, "red", "--out", "/proc/df", check=False), "--out")
    (tmp_path / "file").write_text("keep")
    fails_cleanly(kuosan("dreamfusion", sd, "red", "--out", tmp_path / "file", check=False), "not an empty folder")
    assert (tmp_path / "file").read_text() == "keep" and not out.exists()
    # a NeRF with a NaN in its parameters: refused by name, before any work
    kuosan("dreamfusion", sd, "red", "--out", out, *FAST)
    from safetensors.torch import load_file, save_file

    tensors = load_file(str(out / "nerf.safetensors"))
    tensors["mlp.0.weight"][0, 0] = float("nan")
    bad = tmp_path / "bad"
    bad.mkdir()
    save_file(tensors, str(bad / "nerf.safetensors"))
    (bad / "config.json").write_text((out / "config.json").read_text())
    line = fails_cleanly(kuosan("dreamfusion", sd, "red", "--init", bad, "--out", tmp_path / "c", check=False))
    assert "mlp.0.weight" in line and "not finite" in line and not (tmp_path / "c").exists()
    fails_cleanly(kuosan("dreamfusion", sd, "red", "--init", tmp_path / "none", "--out", tmp_path / "c", check=False),
                  "no NeRF")  # fmt: skip
    # an earlier result is never overwritten
    before = (out / "views.npy").read_bytes()
    fails_cleanly(kuosan("dreamfusion", sd, "red", "--out", out, check=False), "not an empty folder")
    assert (out / "views.npy").read_bytes() == before
