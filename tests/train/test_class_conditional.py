"""Class-conditional diffusion (guided-diffusion's class_cond with classifier-free guidance over labels):
the label embedding, label dropout, exact resume, and `kuosan sample --class` with its bad input."""

from __future__ import annotations

import importlib.util
import json

import numpy as np
import pytest
import torch

from cli_helpers import fails_cleanly, kuosan
from kuosan.config import ConfigError, resolve_config
from kuosan.losses.conditional import ConditionalObjective
from kuosan.networks.unet import UNet
from train_helpers import TINY_DIGITS, assert_resume_equals_uninterrupted

TINY = [*TINY_DIGITS, "sample.steps=2"]


def test_the_label_embedding_conditions_the_unet_and_the_null_label_is_its_own():
    torch.manual_seed(0)
    net = UNet(in_channels=1, base_channels=16, channel_mult=(1, 2), num_res_blocks=1, num_heads=2, num_classes=10)
    assert net.config["num_classes"] == 10 and net.label_embed.num_embeddings == 11
    with torch.no_grad():  # zero-initialised output layers would hide every input at the start
        for p in net.parameters():
            p.add_(0.05 * torch.randn_like(p))
    x, t = torch.randn(3, 1, 8, 8), torch.tensor([10, 500, 900])
    a = net(x, t, class_labels=torch.tensor([0, 0, 0]))
    b = net(x, t, class_labels=torch.tensor([0, 7, 10]))
    assert torch.equal(a[0], b[0]) and not torch.allclose(a[1], b[1]) and not torch.allclose(a[2], b[2])
    with pytest.raises(ValueError, match="class_labels"):
        net(x, t)
    with pytest.raises(ValueError, match="without class_labels"):
        UNet(in_channels=1, base_channels=16, channel_mult=(1, 2), num_res_blocks=1, num_heads=2)(
            x, t, class_labels=torch.zeros(3, dtype=torch.long)
        )
    assert "num_classes" not in UNet(in_channels=1, base_channels=16, num_heads=2).config  # unchanged configs


def test_label_dropout_puts_the_null_label_in_at_the_given_rate():
    class Inner:
        def draw(self, x0, generator=None):
            return {}

    obj = ConditionalObjective(Inner(), cond_drop=0.25, num_classes=10)
    label = torch.arange(20000) % 10
    drawn = obj.draw(torch.zeros(20000, 1), torch.Generator().manual_seed(0), label=label)
    dropped = drawn["class_labels"] == 10
    assert abs(float(dropped.float().mean()) - 0.25) < 0.01
    assert torch.equal(drawn["class_labels"][~dropped], label[~dropped])
    with pytest.raises(ValueError, match="label"):
        obj.draw(torch.zeros(2, 1))


def test_class_guidance_is_combined_before_the_clamp(tmp_path):
    """kuosan sample --class: D = clamp(D_null + w (D_k - D_null)), as the pipelines and guided-diffusion
    clip the guided prediction (clamping each half first would extrapolate out of [-1, 1])."""
    from kuosan.app.sampling import _class_guidance

    class FakeRun:
        class config:
            class label:
                classes, guidance, names = 10, 2.0, []

            class sample:
                clip = True

        @staticmethod
        def denoiser(clip=None):
            assert clip is False
            return lambda x, sigma, class_labels: (
                torch.where(class_labels[:, None] == 10, 0.2, 0.9) * torch.ones_like(x)
            )

    den, extra = _class_guidance(FakeRun, 4, "all", None, "cpu", "run")
    assert extra["class_labels"].tolist() == [0, 1, 2, 3]
    out = den(torch.zeros(4, 3), torch.ones(4), **extra)
    assert torch.allclose(out, torch.ones(4, 3))  # 0.2 + 2 (0.9 - 0.2) = 1.6, clamped to 1


def test_class_conditional_training_resumes_bitwise(tmp_path):
    straight, tensors = assert_resume_equals_uninterrupted(
        lambda: resolve_config("digits-class", None, list(TINY)), tmp_path, steps=4, stop=2
    )
    assert set(straight.cond_data) == {"label"} and straight.net.config["num_classes"] == 10
    assert tensors["model"]["label_embed.weight"].shape == (11, 64)


def test_cli_class_conditional_train_sample_and_bad_input(tmp_path):
    run = tmp_path / "run"
    kuosan("train", "--preset", "digits-class", "--steps", 2, "--out", run, "--no-progress", *TINY)
    kuosan("sample", run, "-n", 6, "--class", 3, "--seed", 1, "--out", tmp_path / "three.npy")
    kuosan("sample", run, "-n", 6, "--class", "all", "--guidance", 1.0, "--seed", 1, "--out", tmp_path / "all.npy")
    three, every = np.load(tmp_path / "three.npy"), np.load(tmp_path / "all.npy")
    assert three.shape == every.shape == (6, 1, 8, 8) and not np.array_equal(three, every)
    kuosan("sample", run, "-n", 6, "--class", 3, "--seed", 1, "--out", tmp_path / "again.npy")
    assert np.array_equal(three, np.load(tmp_path / "again.npy"))
    out = tmp_path / "x.npy"
    fails_cleanly(kuosan("sample", run, "--class", 10, "--out", out, check=False), "--class 10", "0..9")
    fails_cleanly(kuosan("sample", run, "--class", "seven", "--out", out, check=False), "--class")
    if importlib.util.find_spec("diffusers"):  # UNet2DModel with num_class_embeds = 11
        import diffusers

        kuosan("export", run, "--out", tmp_path / "hf")
        unet = diffusers.UNet2DModel.from_pretrained(tmp_path / "hf" / "unet")
        assert unet.config.num_class_embeds == 11
        labels = json.loads((tmp_path / "hf" / "class_labels.json").read_text())
        assert labels["null_label"] == 10 and labels["id2label"] == {str(k): str(k) for k in range(10)}
    plain = tmp_path / "plain"
    kuosan("train", "--preset", "digits", "--steps", 1, "--out", plain, "--no-progress", *TINY)
    fails_cleanly(kuosan("sample", plain, "--class", 3, "--out", out, check=False), "not class-conditional")
    assert not out.exists()
    with pytest.raises(ConfigError, match="class labels"):
        from kuosan.build import validate

        validate(resolve_config("shapes-pixel", None, ["label.classes=3", "text.encoder="]))
    fails_cleanly(
        kuosan("train", "--preset", "digits-class", "--steps", 1, "--out", tmp_path / "five", "label.classes=5",
               *TINY, check=False),
        "label.classes=5",
    )  # fmt: skip
