"""diffusers checkpoints through kuosan's Denoiser, samplers and pipelines, against diffusers' own
pipelines on tiny random models saved to local folders (no download).

Tolerance: 1e-4 on images in [0, 1]. The methods are the same; the arithmetic is not: kuosan steps
in VE scaling (x = x_t / sqrt(abar_t)) and diffusers in VP scaling, kuosan recovers each timestep
from a float32 noise level (off by up to 4e-6) and combines guidance on x0_hat rather than on eps,
so float32 rounding enters in other places; measured differences are 1e-6 to 1.2e-5 over 10-50
steps.
"""

import json
import logging

import numpy as np
import pytest
import torch

from cli_helpers import fails_cleanly, kuosan

diffusers = pytest.importorskip("diffusers")

from kuosan.interop import diffusers as hf  # noqa: E402
from kuosan.interop.tiny import tiny_ddpm, tiny_stable_diffusion  # noqa: E402
from kuosan.pipelines import TextToImagePipeline  # noqa: E402
from kuosan.samplers import get_sampler  # noqa: E402
from kuosan.samplers.loop import prior_noise  # noqa: E402

TOL = 1e-4
PROMPTS = ["a red circle", "a blue square on the left"]


def to_np(x: torch.Tensor) -> np.ndarray:
    """kuosan images in [-1, 1] as diffusers' output_type="np" writes them: (N, H, W, C) in [0, 1]."""
    return (x / 2 + 0.5).clamp(0, 1).permute(0, 2, 3, 1).numpy()


@pytest.fixture(scope="module")
def sd(tmp_path_factory):
    return tiny_stable_diffusion(tmp_path_factory.mktemp("sd") / "sd")


@pytest.fixture(scope="module")
def sd_inpaint(tmp_path_factory):
    return tiny_stable_diffusion(tmp_path_factory.mktemp("sd") / "sd-inpaint", inpaint=True)


def _quiet(pipe):
    pipe.set_progress_bar_config(disable=True)
    return pipe


# --- the schedule and the grid --------------------------------------------------------------------


@pytest.mark.parametrize(
    "config",
    [
        {},
        {"beta_schedule": "scaled_linear", "beta_start": 0.00085, "beta_end": 0.012},
        {"beta_schedule": "squaredcos_cap_v2"},
        {"trained_betas": torch.linspace(1e-4, 0.03, 1000).tolist()},
        {"beta_schedule": "scaled_linear", "beta_start": 0.00085, "beta_end": 0.012, "rescale_betas_zero_snr": True},
        {"num_train_timesteps": 500},
    ],
)
def test_the_schedule_is_the_schedulers_own(config):
    ref = diffusers.DDIMScheduler(**config).alphas_cumprod.double()
    if config.get("rescale_betas_zero_snr"):  # abar_T = 0: an infinite sigma; 2^-24 as diffusers' Euler has it
        assert ref[-1] == 0
        ref[-1] = diffusers.EulerDiscreteScheduler(**config).alphas_cumprod[-1].double()
    schedule = hf.schedule_from_config(config)
    assert schedule.T == len(ref)
    assert torch.allclose(schedule.abar, ref, rtol=1e-12, atol=0), (schedule.abar - ref).abs().max()
    assert np.isfinite(schedule.sigma_max)


@pytest.mark.parametrize("spacing, offset", [("leading", 0), ("leading", 1), ("trailing", 0), ("linspace", 0)])
@pytest.mark.parametrize("steps", [1, 7, 10, 50, 1000])
def test_timesteps_are_the_schedulers(spacing, offset, steps):
    config = {"timestep_spacing": spacing, "steps_offset": offset}
    ref = diffusers.DDIMScheduler(**config)
    ref.set_timesteps(steps)
    if offset and steps == 1000:
        pytest.skip("leading spacing with an offset puts t = 1000 outside the table at 1000 steps")
    assert hf.scheduler_timesteps(config, steps) == ref.timesteps.tolist()


def test_the_predictions_and_bad_scheduler_configs():
    assert [hf.prediction_from_config({"prediction_type": k}) for k in hf.PREDICTIONS] == ["eps", "v", "x0"]
    with pytest.raises(hf.DiffusersError, match="prediction_type 'flow'"):
        hf.prediction_from_config({"prediction_type": "flow"})
    with pytest.raises(hf.DiffusersError, match="scheduler config"):
        hf.schedule_from_config({"beta_schedule": "nope"})


# --- unconditional DDPM folders ---------------------------------------------------------------------


@pytest.mark.parametrize(
    "scheduler, clipped",
    [
        ({"clip_sample": False}, False),
        ({"clip_sample": True}, True),
        ({"clip_sample": False, "prediction_type": "v_prediction"}, False),
        ({"clip_sample": False, "prediction_type": "sample"}, False),
    ],
)
def test_ddim_and_ddpm_equal_diffusers_pipelines(tmp_path, scheduler, clipped):
    """kuosan's ddim (eta 0) and ddpm samplers on the scheduler's grid from the same noise equal
    DDIMPipeline / DDPMPipeline. With clip_sample, kuosan's clamped Denoiser re-derives eps from the
    clipped x0 (diffusers' use_clipped_model_output=True); DDPM always uses the clipped x0."""
    folder = tiny_ddpm(tmp_path / "ddpm", **scheduler)
    model = hf.load_model(f"diffusers:{folder}")
    assert model.clip == clipped and model.data_shape == (3, 8, 8)
    for steps in (10, 50):
        for name, pipe_cls in (("ddim", diffusers.DDIMPipeline), ("ddpm", diffusers.DDPMPipeline)):
            pipe = _quiet(pipe_cls.from_pretrained(folder))
            options = {"eta": 0.0, "use_clipped_model_output": True} if name == "ddim" else {}
            ref = pipe(
                batch_size=3,
                generator=torch.Generator().manual_seed(1),
                num_inference_steps=steps,
                output_type="np",
                **options,
            ).images
            grid = model.grid(steps, final=name)
            g = torch.Generator().manual_seed(1)
            x = prior_noise((3, *model.data_shape), float(grid.sigmas[0]), generator=g)
            x = hf.vp_output(get_sampler(name)(model.denoiser(), x, grid.sigmas, generator=g), grid.final_sigma)
            err = np.abs(to_np(x) - ref).max()
            assert err < TOL, (name, steps, err)


def test_sample_command_on_a_diffusers_folder(tmp_path):
    """`kuosan sample diffusers:DIR` with diffusers' grid equals DDIMPipeline; every kuosan sampler runs."""
    folder = tiny_ddpm(tmp_path / "ddpm", clip_sample=False)
    out = tmp_path / "x.npy"
    kuosan("sample", f"diffusers:{folder}", "--sampler", "ddim", "--grid", "scheduler", "--steps", 10, "-n", 3,
           "--seed", 1, "--out", out)  # fmt: skip
    ref = _quiet(diffusers.DDIMPipeline.from_pretrained(folder))(
        batch_size=3, generator=torch.Generator().manual_seed(1), num_inference_steps=10, output_type="np"
    ).images
    assert np.abs(to_np(torch.from_numpy(np.load(out))) - ref).max() < TOL
    for sampler in ("unipc", "dpmpp-2m", "heun", "euler-ancestral"):
        kuosan("sample", f"diffusers:{folder}", "--sampler", sampler, "--steps", 4, "-n", 2, "--out", out)
        x = np.load(out)
        assert x.shape == (2, 3, 8, 8) and np.isfinite(x).all()
    info = json.loads(kuosan("info", f"diffusers:{folder}").stdout)
    assert info["data_shape"] == [3, 8, 8] and info["prediction"] == "eps"


def test_weights_load_and_run_in_half_precision(tmp_path):
    folder = tiny_ddpm(tmp_path / "ddpm", clip_sample=False)
    full = hf.load_model(folder)
    x = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    sigma = torch.full((2,), 1.5)
    ref = full.denoiser()(x, sigma)
    for dtype in ("bfloat16", "float16"):
        model = hf.load_model(folder, dtype=dtype)
        assert model.network.unet.dtype == hf.DTYPES[dtype]
        out = model.denoiser()(x, sigma)
        assert out.dtype == torch.float32 and (out - ref).abs().max() < 0.1, dtype


# --- Stable Diffusion -----------------------------------------------------------------------------


def test_txt2img_equals_stable_diffusion_pipeline(sd):
    """DDIM 10 steps, guidance 7.5, a negative prompt, SD's scheduler (leading + steps_offset 1,
    set_alpha_to_one False: the last step lands on t = 0's level, held there): images and latents."""
    ref_pipe = _quiet(diffusers.StableDiffusionPipeline.from_pretrained(sd, safety_checker=None))
    ours = TextToImagePipeline.from_diffusers(f"diffusers:{sd}", device="cpu")
    common = dict(num_inference_steps=10, guidance_scale=7.5, negative_prompt=["green"] * 2)
    for output_type in ("np", "latent"):
        ref = ref_pipe(PROMPTS, generator=torch.Generator().manual_seed(0), output_type=output_type, **common).images
        x = ours.txt2img(
            PROMPTS,
            negative="green",
            steps=10,
            guidance=7.5,
            generator=torch.Generator().manual_seed(0),
            return_latents=output_type == "latent",
        )
        if output_type == "np":
            assert np.abs(to_np(x) - ref).max() < TOL
        else:
            assert ((x - ref).abs().max() / ref.abs().max()) < TOL
    # another size (SD's --height/--width): 48x32 pixels, 12x8 latents (this VAE's factor is 4)
    ref = ref_pipe(PROMPTS, height=48, width=32, generator=torch.Generator().manual_seed(2), output_type="np",
                   **common).images  # fmt: skip
    x = ours.txt2img(PROMPTS, negative="green", steps=10, guidance=7.5, height=48, width=32,
                     generator=torch.Generator().manual_seed(2))  # fmt: skip
    assert x.shape == (2, 3, 48, 32) and np.abs(to_np(x) - ref).max() < TOL
    with pytest.raises(ValueError, match="multiples of the autoencoder's factor 4"):
        ours.txt2img(PROMPTS, height=30)


@pytest.mark.parametrize("strength", [0.5, 0.75, 1.0])
def test_img2img_equals_stable_diffusion_img2img(sd, strength):
    ref_pipe = _quiet(diffusers.StableDiffusionImg2ImgPipeline.from_pretrained(sd, safety_checker=None))
    ours = TextToImagePipeline.from_diffusers(sd, device="cpu")
    image = torch.rand(1, 3, 32, 32, generator=torch.Generator().manual_seed(5)) * 2 - 1
    ref = ref_pipe(PROMPTS, image=image / 2 + 0.5, strength=strength, negative_prompt=["green"] * 2,
                   num_inference_steps=10, guidance_scale=7.5, generator=torch.Generator().manual_seed(0),
                   output_type="np").images  # fmt: skip
    x = ours.img2img(image, PROMPTS, strength=strength, negative="green", steps=10, guidance=7.5,
                     generator=torch.Generator().manual_seed(0))  # fmt: skip
    assert np.abs(to_np(x) - ref).max() < TOL


@pytest.mark.parametrize("nine_channels", [True, False])
@pytest.mark.parametrize("strength", [1.0, 0.6])
def test_inpaint_equals_stable_diffusion_inpaint(sd, sd_inpaint, nine_channels, strength):
    """The 9-channel inpainting U-Net (concat) and a 4-channel U-Net (the legacy mask blend,
    kuosan's replace method) against StableDiffusionInpaintPipeline."""
    folder = sd_inpaint if nine_channels else sd
    ref_pipe = _quiet(diffusers.StableDiffusionInpaintPipeline.from_pretrained(folder, safety_checker=None))
    ours = TextToImagePipeline.from_diffusers(folder, device="cpu")
    image = torch.rand(1, 3, 32, 32, generator=torch.Generator().manual_seed(5)) * 2 - 1
    mask = torch.zeros(1, 1, 32, 32)
    mask[..., 4:20, 8:30] = 1
    ref = ref_pipe(PROMPTS, image=image / 2 + 0.5, mask_image=mask, strength=strength, negative_prompt=["green"] * 2,
                   num_inference_steps=10, guidance_scale=7.5, generator=torch.Generator().manual_seed(0),
                   output_type="np").images  # fmt: skip
    x = ours.inpaint(image, mask, PROMPTS, strength=strength, negative="green", steps=10, guidance=7.5,
                     generator=torch.Generator().manual_seed(0))  # fmt: skip
    assert np.abs(to_np(x) - ref).max() < TOL
    method = "concat" if nine_channels else "replace"
    with pytest.raises(ValueError, match="concat" if not nine_channels else "mask inputs"):
        ours.inpaint(image, mask, PROMPTS, method="replace" if nine_channels else "concat", steps=2)
    assert method  # both forms ran above


def test_a_long_prompt_is_truncated_with_a_warning(sd, caplog):
    encoder = hf.load_prompt_encoder(sd)
    long = " ".join(["red circle"] * 20)
    with caplog.at_level(logging.WARNING, logger="kuosan.interop.diffusers"):
        out = encoder.encode([long, "a red circle"])
    assert out["context"].shape == (2, encoder.max_length, 24)
    assert any("truncated" in r.message for r in caplog.records)


def test_cli_txt2img_img2img_inpaint_on_a_stable_diffusion_folder(tmp_path, sd):
    from PIL import Image

    spec = f"diffusers:{sd}"
    kuosan("txt2img", spec, "a red circle", "-n", 2, "--steps", 3, "--negative", "green", "--guidance", 7.5,
           "--height", 48, "--width", 32, "--out", tmp_path / "a.npy")  # fmt: skip
    assert np.load(tmp_path / "a.npy").shape == (2, 3, 48, 32)
    Image.fromarray(np.full((32, 32, 3), 90, np.uint8)).save(tmp_path / "in.png")
    mask = np.zeros((32, 32), np.uint8)
    mask[:16] = 255
    Image.fromarray(mask).save(tmp_path / "mask.png")
    kuosan("img2img", spec, tmp_path / "in.png", "blue", "--steps", 3, "--out", tmp_path / "b.png")
    kuosan("inpaint", spec, tmp_path / "in.png", tmp_path / "mask.png", "red", "--steps", 3, "--sampler", "euler",
           "--grid", "karras", "--out", tmp_path / "c.npy")  # fmt: skip
    c = np.load(tmp_path / "c.npy")
    assert c.shape == (1, 3, 32, 32) and np.isfinite(c).all()
    fails_cleanly(kuosan("txt2img", spec, "red", "--height", 30, "--out", tmp_path / "x.png", check=False), "multiples")


# --- safety and errors ----------------------------------------------------------------------------


def test_pickled_weights_are_refused_and_nothing_is_unpickled(tmp_path):
    folder = tiny_ddpm(tmp_path / "ddpm", clip_sample=False)
    unet = folder / "unet"
    for f in unet.glob("*.safetensors"):
        f.unlink()
    (unet / "diffusion_pytorch_model.bin").write_bytes(b"\x80\x04 not a pickle anyone should open")
    line = fails_cleanly(kuosan("sample", f"diffusers:{folder}", "--out", tmp_path / "x.npy", check=False),
                         "safetensors only")  # fmt: skip
    assert "diffusion_pytorch_model.bin" in line


def test_broken_folders_are_one_line(tmp_path, sd):
    out = tmp_path / "x.png"
    fails_cleanly(kuosan("sample", f"diffusers:{tmp_path / 'none'}", "--out", out, check=False), "not found")
    empty = tmp_path / "empty"
    empty.mkdir()
    fails_cleanly(kuosan("sample", f"diffusers:{empty}", "--out", out, check=False), "scheduler")
    partial = tmp_path / "partial"
    partial.mkdir()
    for part in ("unet", "scheduler", "tokenizer", "text_encoder"):
        (partial / part).symlink_to(sd / part)
    fails_cleanly(kuosan("txt2img", f"diffusers:{partial}", "red", "--out", out, check=False), "no vae/")
    fails_cleanly(kuosan("sample", f"diffusers:{sd}", "--out", out, check=False), "txt2img")
    bad = tmp_path / "bad"
    bad.mkdir()
    for part in ("unet", "vae", "tokenizer", "text_encoder"):
        (bad / part).symlink_to(sd / part)
    (bad / "scheduler").mkdir()
    (bad / "scheduler" / "scheduler_config.json").write_text('{"prediction_type": "flow"}')
    fails_cleanly(kuosan("txt2img", f"diffusers:{bad}", "red", "--out", out, check=False), "prediction_type")


def test_a_learned_variance_folder_samples_on_its_prediction_channels(tmp_path):
    """variance_type learned_range: the U-Net's 2C outputs are the prediction and the variance; the
    data have C channels and the Denoiser reads the first C (DDIM does not use the variance)."""
    unet = diffusers.UNet2DModel(sample_size=8, in_channels=3, out_channels=6, layers_per_block=1,
                                 block_out_channels=(16, 32), down_block_types=("DownBlock2D", "DownBlock2D"),
                                 up_block_types=("UpBlock2D", "UpBlock2D"), norm_num_groups=8)  # fmt: skip
    sched = diffusers.DDPMScheduler(variance_type="learned_range", clip_sample=False)
    diffusers.DDPMPipeline(unet=unet, scheduler=sched).save_pretrained(tmp_path / "lv")
    model = hf.load_model(tmp_path / "lv")
    assert model.data_shape == (3, 8, 8)
    out = tmp_path / "x.npy"
    kuosan("sample", f"diffusers:{tmp_path / 'lv'}", "--steps", 4, "-n", 2, "--out", out)
    assert np.load(out).shape == (2, 3, 8, 8)
    ref = _quiet(diffusers.DDIMPipeline.from_pretrained(tmp_path / "lv"))
    assert ref.unet.config.out_channels == 6
