"""kuosan models out to diffusers: the U-Net as UNet2DModel and the VAE as AutoencoderKL, loaded back
with diffusers' from_pretrained and compared output for output.

Tolerances: the mapped networks compute the same operations in the same order up to the kernels
(1e-5 on outputs of size ~0.05, measured 1e-8 to 3e-8); a sampled image through the exported
scheduler differs more (1e-4) because diffusers builds its beta table in float32 and kuosan in
float64."""

import json

import numpy as np
import pytest
import torch

from cli_helpers import fails_cleanly, kuosan

diffusers = pytest.importorskip("diffusers")

from kuosan.interop.diffusers import DiffusersError  # noqa: E402
from kuosan.interop.export import unet_to_diffusers, vae_to_diffusers  # noqa: E402
from kuosan.networks import UNet  # noqa: E402
from kuosan.networks.autoencoder import AutoencoderKL  # noqa: E402


def _randomised(net: torch.nn.Module) -> torch.nn.Module:
    """Every parameter drawn at random (the zero-initialised output layers would hide a wrong map)."""
    g = torch.Generator().manual_seed(0)
    for p in net.parameters():
        p.data = torch.randn(p.shape, generator=g) * 0.05
    return net.eval()


@pytest.mark.parametrize(
    "kw",
    [
        dict(in_channels=3, base_channels=16, channel_mult=(1, 2), num_res_blocks=1, num_heads=2, scale_shift=False,
             groups=8),
        dict(in_channels=1, out_channels=2, base_channels=32, channel_mult=(1, 2, 2), num_res_blocks=2,
             attention_levels=(1,), num_heads=4, scale_shift=True, groups=32),
        dict(in_channels=3, base_channels=16, channel_mult=(1, 2, 4), num_res_blocks=1, attention_levels=(0, 2),
             num_heads=1, groups=8),
        dict(in_channels=1, base_channels=16, channel_mult=(1, 2), num_res_blocks=1, num_heads=2, groups=8,
             num_classes=10),
    ],
)  # fmt: skip
def test_the_unet_maps_onto_unet2dmodel_exactly(kw):
    net = _randomised(UNet(**kw))
    config, state = unet_to_diffusers(net, 8)
    ref = diffusers.UNet2DModel(**config).eval()
    ref.load_state_dict(state, strict=True)
    x = torch.randn(2, kw["in_channels"], 8, 8, generator=torch.Generator().manual_seed(1))
    t = torch.tensor([3.0, 700.0])
    cond = {"class_labels": torch.tensor([3, 10])} if kw.get("num_classes") else {}  # a class and the null label
    with torch.no_grad():
        assert (net(x, t, **cond) - ref(x, t, **cond).sample).abs().max() < 1e-5


def test_unets_that_do_not_map_say_why():
    with pytest.raises(DiffusersError, match="one attention_head_dim"):
        unet_to_diffusers(UNet(base_channels=16, channel_mult=(1, 2), attention_levels=(0,), num_heads=2, groups=8), 8)
    with pytest.raises(DiffusersError, match="groups"):
        unet_to_diffusers(UNet(base_channels=24, channel_mult=(1, 2), groups=16, num_heads=1), 8)
    with pytest.raises(DiffusersError, match="without text cross-attention"):
        unet_to_diffusers(UNet(base_channels=16, groups=8, pooled_dim=12, num_heads=1), 8)


@pytest.mark.parametrize(
    "kw",
    [
        dict(in_channels=4, base_channels=16, channel_mult=(1, 2), num_res_blocks=1, num_heads=2, groups=8,
             context_dim=12),
        dict(in_channels=4, base_channels=32, channel_mult=(1, 2, 2), num_res_blocks=2, attention_levels=(0, 1),
             num_heads=4, groups=8, context_dim=12, pooled_dim=10, cond_channels=5, scale_shift=True),
    ],
)  # fmt: skip
def test_the_text_unet_maps_onto_unet2dconditionmodel_exactly(kw):
    """Cross-attention with a padding mask (encoder_attention_mask), a pooled vector (class_labels)
    and concatenated inpainting inputs (extra in_channels)."""
    net = _randomised(UNet(**kw))
    config, state = unet_to_diffusers(net, 8)
    assert config.pop("_class_name") == "UNet2DConditionModel"
    ref = diffusers.UNet2DConditionModel(**config).eval()
    ref.load_state_dict(state, strict=True)
    g = torch.Generator().manual_seed(1)
    x, ctx = torch.randn(2, 4, 8, 8, generator=g), torch.randn(2, 5, 12, generator=g)
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]]).bool()
    t = torch.tensor([3.0, 700.0])
    ours, theirs, x_in = dict(context=ctx, context_mask=mask), dict(encoder_hidden_states=ctx), x
    theirs["encoder_attention_mask"] = mask.float()
    if kw.get("pooled_dim"):
        ours["pooled"] = theirs["class_labels"] = torch.randn(2, 10, generator=g)
    if kw.get("cond_channels"):
        ours["cond_image"] = torch.randn(2, 5, 8, 8, generator=g)
        x_in = torch.cat([x, ours["cond_image"]], dim=1)
    with torch.no_grad():
        assert (net(x, t, **ours) - ref(x_in, t, **theirs).sample).abs().max() < 1e-5


def test_the_vae_maps_onto_autoencoderkl_exactly():
    vae = _randomised(AutoencoderKL(block_out_channels=(8, 16), groups=4, latent_channels=4))
    config, state = vae_to_diffusers(vae, scaling_factor=0.5)
    ref = diffusers.AutoencoderKL(**config).eval()
    ref.load_state_dict(state, strict=True)
    x = torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(2)) * 2 - 1
    with torch.no_grad():
        assert (vae.encode(x).mean - ref.encode(x).latent_dist.mean).abs().max() < 1e-5
        z = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(3))
        assert (vae.decode(z) - ref.decode(z).sample).abs().max() < 1e-5
    assert ref.config.scaling_factor == 0.5


TINY = ["model.params.base_channels=32", "model.params.num_res_blocks=1", "train.batch_size=8"]


def test_export_a_digits_run_and_sample_it_with_diffusers(tmp_path):
    run, out = tmp_path / "run", tmp_path / "hf"
    kuosan("train", "--preset", "digits", "--steps", 3, "--out", run, "--no-progress", *TINY)
    report = json.loads(kuosan("export", run, "--format", "diffusers", "--out", out).stdout)
    assert report["class"] == "DDPMPipeline"
    pipe = diffusers.DDPMPipeline.from_pretrained(out)
    pipe.set_progress_bar_config(disable=True)
    ref = pipe(batch_size=4, generator=torch.Generator().manual_seed(2), num_inference_steps=10, output_type="np")
    mine = tmp_path / "mine.npy"
    kuosan("sample", run, "--sampler", "ddpm", "--grid", "leading", "--steps", 10, "-n", 4, "--seed", 2, "--out", mine)
    x = torch.from_numpy(np.load(mine))
    assert np.abs((x / 2 + 0.5).clamp(0, 1).permute(0, 2, 3, 1).numpy() - ref.images).max() < 1e-4
    # the export, read back by kuosan as a diffusers folder, is the run again
    back = tmp_path / "back.npy"
    kuosan("sample", f"diffusers:{out}", "--sampler", "ddim", "--grid", "trailing", "--steps", 5, "-n", 4,
           "--out", back)  # fmt: skip
    kuosan("sample", run, "--sampler", "ddim", "--grid", "trailing", "--steps", 5, "-n", 4, "--out", mine)
    assert np.abs(np.load(back) - np.load(mine)).max() < 1e-4
    fails_cleanly(kuosan("export", run, "--out", out, check=False), "not empty")


def test_export_a_vae_run_round_trip(tmp_path):
    """A kuosan VAE exported and reloaded with AutoencoderKL.from_pretrained decodes the same latents
    to the same images (1e-5), with the latent scale factor of its training data in its config."""
    from kuosan.runs import load_autoencoder

    run, out = tmp_path / "vae", tmp_path / "hf-vae"
    kuosan("train", "--preset", "shapes-vae", "--steps", 2, "--out", run, "--no-progress", "data.n=32",
           "model.params.block_out_channels=[8,8,8]", "model.params.groups=4", "train.batch_size=8")  # fmt: skip
    report = json.loads(kuosan("export", run, "--out", out).stdout)
    assert report["class"] == "AutoencoderKL" and report["scaling_factor"] > 0
    ref = diffusers.AutoencoderKL.from_pretrained(out).eval()
    _, vae = load_autoencoder(run)
    z = torch.randn(3, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert (vae.decode(z) - ref.decode(z).sample).abs().max() < 1e-5
    assert abs(ref.config.scaling_factor - report["scaling_factor"]) < 1e-12
    assert not list(tmp_path.glob(".*partial"))


def test_runs_that_do_not_export_say_why(tmp_path):
    run = tmp_path / "toy"
    kuosan("train", "--preset", "toy2d", "--steps", 2, "--out", run, "--no-progress")
    fails_cleanly(kuosan("export", run, "--out", tmp_path / "x", check=False), "not a square-image UNet2DModel")
    assert not (tmp_path / "x").exists()
