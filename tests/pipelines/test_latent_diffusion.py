"""Text-conditional latent diffusion end to end: VAE -> text encoder -> U-Net -> sampler, conditional
training with dict data (exact resume), the pipelines (txt2img, img2img strength endpoints, inpainting)
and their command line. Tiny configs: a 2-step VAE, a tiny BERT, a tiny U-Net."""

import json
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from kuosan.app import build_trainer
from kuosan.cli import main
from kuosan.config import ConfigError, resolve_config
from kuosan.interop.tiny import tiny_bert
from kuosan.losses.conditional import ConditionalObjective, latent_scale_from_posterior, random_box_masks
from kuosan.pipelines import TextToImagePipeline, downsample_mask, img2img_start_index
from kuosan.runs import load_autoencoder
from kuosan.train import checkpoint as ckpt
from train_helpers import TINY_DIGITS, assert_resume_equals_uninterrupted

TINY_UNET = [
    "model.params.base_channels=16",
    "model.params.num_res_blocks=1",
    "model.params.num_heads=2",
    "model.params.dropout=0.1",
    "train.batch_size=8",
    "train.warmup_steps=1",
    "train.log_every=1",
    "train.checkpoint_every=1000",
    "sample.steps=2",
    "data.n=48",
    "text.max_length=8",
]


@pytest.fixture(scope="module")
def bert_dir(tmp_path_factory):
    return tiny_bert(tmp_path_factory.mktemp("bert"))


@pytest.fixture(scope="module")
def vae_run(tmp_path_factory):
    """A 2-step shapes VAE (32x32x3 -> 8x8x4)."""
    out = tmp_path_factory.mktemp("runs") / "vae"
    cfg = resolve_config(
        "shapes-vae",
        None,
        [
            "data.n=32",
            "model.params.block_out_channels=[8,8,8]",
            "model.params.groups=4",
            "train.batch_size=8",
            "train.warmup_steps=1",
            "train.checkpoint_every=1000",
        ],
    )
    build_trainer(cfg, out, progress=False).fit(steps=2)
    return out


def _ldm_cfg(vae_run, bert_dir, *extra):
    return resolve_config(
        "shapes-ldm", None, TINY_UNET + [f"latent.autoencoder={vae_run}", f"text.encoder=path:{bert_dir}", *extra]
    )


# ---------------------------------------------------------------- training


def test_conditional_training_resumes_bitwise(tmp_path, vae_run, bert_dir):
    """Dict data (posterior mean/std, caption index) through the Trainer: 2 + 2 steps == 4 steps."""
    straight, _ = assert_resume_equals_uninterrupted(lambda: _ldm_cfg(vae_run, bert_dir), tmp_path, steps=4, stop=2)
    assert set(straight.cond_data) == {"x_std", "caption"} and straight.data.shape[1:] == (4, 8, 8)
    saved = ckpt.read_config(tmp_path / "a")
    assert saved["latent"]["scale_factor"] > 0  # computed once from the data and recorded
    assert saved["model"]["params"]["context_dim"] == 24 and saved["model"]["params"]["cond_channels"] == 5
    assert (tmp_path / "a" / "samples").is_dir()


def test_a_streamed_captioned_folder_is_encoded_in_pieces_to_the_same_latents(tmp_path, vae_run, bert_dir):
    """A latent run on image files it streams encodes them a piece at a time; the latents, scale
    and captions are those of the in-memory path."""
    rng = np.random.default_rng(0)
    for k in range(10):
        Image.fromarray(rng.integers(0, 256, (40, 36, 3), dtype=np.uint8), "RGB").save(tmp_path / f"{k}.png")
        (tmp_path / f"{k}.txt").write_text(["a red circle", "a blue square"][k % 2])
    folder = [f"data.name=folder:{tmp_path}", "data.size=32", "data.channels=3"]
    built = {
        loader: build_trainer(_ldm_cfg(vae_run, bert_dir, *folder, f"data.loader={loader}"), tmp_path / loader)
        for loader in ("stream", "memory")
    }
    a, b = built["stream"], built["memory"]
    assert torch.is_tensor(a.data) and a.data.shape == (10, 4, 8, 8) and torch.equal(a.data, b.data)
    assert a.cond_data.keys() == b.cond_data.keys() and all(
        torch.equal(a.cond_data[k], b.cond_data[k]) for k in a.cond_data
    )
    assert a.config["latent"]["scale_factor"] == b.config["latent"]["scale_factor"] > 0


def test_a_pretrained_diffusers_vae_is_the_first_stage_of_a_text_run_on_a_captioned_folder(tmp_path, bert_dir):
    """latent.autoencoder=diffusers:DIR: a diffusers AutoencoderKL folder (bare, or a pipeline's vae/)
    encodes the folder, with its own scaling_factor; the run samples through the same VAE."""
    diffusers = pytest.importorskip("diffusers")
    torch.manual_seed(0)
    hf = diffusers.AutoencoderKL(
        block_out_channels=(8, 8), down_block_types=("DownEncoderBlock2D",) * 2,
        up_block_types=("UpDecoderBlock2D",) * 2, norm_num_groups=4, scaling_factor=0.3,
    ).eval()  # fmt: skip
    hf.save_pretrained(tmp_path / "pipe" / "vae")
    images = tmp_path / "pictures"
    images.mkdir()
    rng = np.random.default_rng(0)
    for k in range(6):
        Image.fromarray(rng.integers(0, 256, (20, 16, 3), dtype=np.uint8), "RGB").save(images / f"{k}.png")
        (images / f"{k}.txt").write_text(["a red circle", "a blue square"][k % 2])
    folder = [f"data.name=folder:{images}", "data.size=16", "data.channels=3", "train.batch_size=2"]
    for spec in (tmp_path / "pipe" / "vae", tmp_path / "pipe"):
        trainer = build_trainer(_ldm_cfg(f"diffusers:{spec}", bert_dir, *folder), tmp_path / "run", progress=False)
        assert trainer.config["latent"]["scale_factor"] == 0.3 and trainer.data.shape == (6, 4, 8, 8)
    pixels = torch.stack([torch.from_numpy(np.array(Image.open(images / f"{k}.png"))) for k in range(6)])
    x = pixels.permute(0, 3, 1, 2).float()[:, :, 2:18] / 127.5 - 1  # 16x20: the centre 16x16
    with torch.no_grad():
        mean = hf.encode(x).latent_dist.mean
    torch.testing.assert_close(trainer.data, 0.3 * mean, atol=1e-5, rtol=1e-4)  # diffusers' own encoding
    trainer.fit(steps=1)
    r = subprocess.run(
        [sys.executable, "-m", "kuosan", "txt2img", str(tmp_path / "run"), "a red circle", "-n", "1", "--steps", "2",
         "--out", str(tmp_path / "x.npy")], capture_output=True, text=True,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["shape"] == [1, 3, 16, 16]
    from kuosan.interop.diffusers import DiffusersError

    with pytest.raises(DiffusersError, match="not found"):
        build_trainer(_ldm_cfg(f"diffusers:{tmp_path / 'gone'}", bert_dir, *folder), tmp_path / "r2", progress=False)
    hf.register_to_config(shift_factor=0.1)  # SD3 / Flux latents are shifted as well: refused, not half-served
    hf.save_pretrained(tmp_path / "shifted")
    with pytest.raises(ConfigError, match="shift_factor"):
        build_trainer(_ldm_cfg(f"diffusers:{tmp_path / 'shifted'}", bert_dir, *folder), tmp_path / "r3", progress=False)


def test_missing_autoencoder_is_a_one_line_config_error(tmp_path, bert_dir):
    cfg = resolve_config(
        "shapes-ldm", None, TINY_UNET + [f"latent.autoencoder={tmp_path / 'none'}", f"text.encoder=path:{bert_dir}"]
    )
    with pytest.raises(ConfigError, match="kuosan train --preset shapes-vae") as e:
        build_trainer(cfg, tmp_path / "ldm", progress=False)
    assert "\n" not in str(e.value)


def test_objective_prompt_dropout_posterior_draw_and_masks():
    seen = {}

    class Inner:
        def draw(self, x0, generator=None):
            return {"t": torch.zeros(x0.shape[0], dtype=torch.long)}

        def loss(self, net, x0, *, t):
            seen["x0"] = x0
            seen["out"] = net(x0, t)
            return x0.flatten(1).sum(1)

    prompts = {
        "context": torch.randn(3, 2, 4),
        "context_mask": torch.ones(3, 2, dtype=torch.bool),
        "pooled": torch.randn(3, 4),
    }
    uncond = {
        "context": torch.zeros(1, 2, 4),
        "context_mask": torch.ones(1, 2, dtype=torch.bool),
        "pooled": torch.zeros(1, 4),
    }
    x0, std, caption = torch.randn(64, 2, 4, 4), torch.rand(64, 2, 4, 4), torch.randint(3, (64,))
    g = torch.Generator().manual_seed(0)
    drawn = ConditionalObjective(Inner(), prompts=prompts, uncond=uncond, cond_drop=0.5).draw(
        x0, g, caption=caption, x_std=std
    )
    dropped = (drawn["pooled"] == 0).all(1)
    assert 10 < int(dropped.sum()) < 54  # about half
    torch.testing.assert_close(drawn["context"][~dropped], prompts["context"][caption[~dropped]])

    def net(x, t, **cond):
        return cond

    ConditionalObjective(Inner(), prompts=prompts, uncond=uncond).loss(net, x0, **drawn)
    torch.testing.assert_close(seen["x0"], x0 + std * drawn["posterior_noise"])
    assert set(seen["out"]) == {"context", "context_mask", "pooled"}

    obj = ConditionalObjective(Inner(), prompts=prompts, uncond=uncond, cond_drop=0.0, inpaint_fraction=1.0)
    drawn = obj.draw(x0, g, caption=caption)
    assert "posterior_noise" not in drawn and not (drawn["pooled"] == 0).all(1).any()
    obj.loss(net, x0, **drawn)
    m = drawn["inpaint_mask"]
    assert ((m == 0) | (m == 1)).all() and (m.mean((1, 2, 3)) < 1).all() and (m.mean((1, 2, 3)) > 0).all()
    torch.testing.assert_close(seen["out"]["cond_image"], torch.cat([m, (1 - m) * x0], 1))


def test_random_box_masks_are_boxes_within_bounds():
    m = random_box_masks(200, 8, 8, torch.Generator().manual_seed(0))
    rows, cols = m[:, 0].amax(2), m[:, 0].amax(1)
    area = m.sum((1, 2, 3))
    assert torch.equal(area, rows.sum(1) * cols.sum(1))  # a filled rectangle
    assert rows.sum(1).min() >= 2 and rows.sum(1).max() <= 6


def test_closed_form_scale_factor_matches_sampled_estimate(vae_run):
    from kuosan.data.shapes import make_shapes
    from kuosan.networks.autoencoder import latent_scale_factor

    _, vae = load_autoencoder(vae_run)
    images = make_shapes(64, 5).images
    post = vae.encode(images)
    closed = latent_scale_from_posterior(post.mean, post.std)
    sampled = latent_scale_factor(vae, images, generator=torch.Generator().manual_seed(0))
    assert closed == pytest.approx(sampled, rel=0.03)


# ---------------------------------------------------------------- pipelines


@pytest.fixture(scope="module")
def ldm_runs(tmp_path_factory, vae_run, bert_dir):
    """Two 3-step latent runs: txt2img only, and one trained to inpaint too (concat inputs)."""
    root = tmp_path_factory.mktemp("ldm")
    runs = {}
    for name, frac in (("plain", 0.0), ("inpaint", 0.5)):
        cfg = _ldm_cfg(vae_run, bert_dir, f"text.inpaint_fraction={frac}")
        build_trainer(cfg, root / name, progress=False).fit(steps=3)
        runs[name] = root / name
    return runs


def test_img2img_strength_endpoints(ldm_runs):
    pipe = TextToImagePipeline.from_run(ldm_runs["plain"])
    from kuosan.data.shapes import make_shapes

    images, prompts = make_shapes(3, 9).images, ["a red circle", "blue square", "green"]
    recon = pipe.decode(pipe.encode_images(images))
    same = pipe.img2img(images, prompts, strength=0.0, steps=4, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(same, recon)
    ignored = pipe.img2img(images, prompts, strength=1.0, steps=4, generator=torch.Generator().manual_seed(1))
    txt = pipe.txt2img(prompts, steps=4, generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(ignored, txt)
    half = pipe.img2img(images, prompts, strength=0.5, steps=4, generator=torch.Generator().manual_seed(1))
    assert not torch.allclose(half, txt) and not torch.allclose(half, recon)
    assert [img2img_start_index(20, s) for s in (0.0, 0.6, 1.0)] == [20, 8, 0]


@pytest.mark.parametrize("sampler", ["ddim", "euler-ancestral", "dpmpp-2m"])
def test_replacement_inpainting_keeps_the_known_latents_exactly(ldm_runs, sampler):
    from kuosan.data.shapes import make_shapes

    pipe = TextToImagePipeline.from_run(ldm_runs["plain"])
    images = make_shapes(2, 4).images
    mask = torch.zeros(1, 1, 32, 32)
    mask[..., 3:13, 18:30] = 1  # touches latent cells rows 0..3, cols 4..7
    z = pipe.inpaint(
        images,
        mask,
        ["a red circle", "a white square"],
        method="replace",
        steps=4,
        sampler=sampler,
        generator=torch.Generator().manual_seed(0),
        return_latents=True,
    )
    z0 = pipe.encode_images(images)
    m = downsample_mask(mask, (8, 8))
    assert m[0, 0, :4, 4:].eq(1).all() and m.sum() == 16
    assert torch.equal(z * (1 - m), z0 * (1 - m))
    assert not torch.allclose(z * m, z0 * m)


def test_concat_inpainting_and_guidance_run_on_an_inpainting_model(ldm_runs):
    pipe = TextToImagePipeline.from_run(ldm_runs["inpaint"])
    images = torch.zeros(2, 3, 32, 32)
    mask = torch.ones(1, 1, 32, 32)
    g = lambda: torch.Generator().manual_seed(0)  # noqa: E731
    out = pipe.inpaint(images, mask, ["red", "blue"], steps=3, generator=g())
    assert out.shape == (2, 3, 32, 32) and out.abs().max() <= 1
    with pytest.raises(ValueError, match="use method 'concat'"):
        pipe.inpaint(images, mask, ["red", "blue"], method="replace", steps=3)
    a = pipe.txt2img(["red"], guidance=1.0, steps=3, generator=g(), return_latents=True)
    b = pipe.txt2img(["red"], guidance=5.0, steps=3, generator=g(), return_latents=True)
    c = pipe.txt2img(["red"], guidance=5.0, negative="blue", steps=3, generator=g(), return_latents=True)
    assert not torch.allclose(a, b) and not torch.allclose(b, c)


def test_pixel_space_text_model(tmp_path, bert_dir):
    cfg = resolve_config(
        "shapes-pixel",
        None,
        TINY_UNET
        + [f"text.encoder=path:{bert_dir}", "model.params.channel_mult=[1,2]", "model.params.attention_levels=[1]"],
    )
    build_trainer(cfg, tmp_path / "px", progress=False).fit(steps=2)
    pipe = TextToImagePipeline.from_run(tmp_path / "px")
    x = pipe.txt2img(["a red circle"] * 2, guidance=3.0, steps=2, generator=torch.Generator().manual_seed(0))
    assert x.shape == (2, 3, 32, 32) and x.abs().max() <= 1 and pipe.autoencoder is None


# ---------------------------------------------------------------- command line


def _png(path, array):
    Image.fromarray(array).save(path)
    return str(path)


def test_cli_txt2img_img2img_inpaint(tmp_path, ldm_runs, capsys):
    run = str(ldm_runs["inpaint"])
    img = _png(tmp_path / "in.png", np.full((32, 32, 3), 40, np.uint8))
    mask_arr = np.zeros((32, 32), np.uint8)
    mask_arr[:16, :16] = 255
    mask = _png(tmp_path / "mask.png", mask_arr)
    assert main(["txt2img", run, "a red circle", "-n", "2", "--steps", "2", "--out", str(tmp_path / "a.npy")]) == 0
    assert np.load(tmp_path / "a.npy").shape == (2, 3, 32, 32)
    assert (
        main(["img2img", run, img, "blue", "--strength", "0.5", "--steps", "2", "--out", str(tmp_path / "b.png")]) == 0
    )
    assert (
        main(
            [
                "inpaint",
                run,
                img,
                mask,
                "green",
                "--steps",
                "2",
                "--guidance",
                "2",
                "--negative",
                "red",
                "--sampler",
                "euler",
                "--out",
                str(tmp_path / "c.png"),
            ]
        )
        == 0
    )
    assert Image.open(tmp_path / "c.png").size[0] > 32
    capsys.readouterr()


def test_cli_txt2img_captioned_grid_and_decoded_trajectory(tmp_path, ldm_runs, capsys):
    """--caption writes the prompt beneath each image (a taller picture than the plain grid);
    --trajectory draws the decoded x_t and x0_hat of every step, the same images as without it."""
    common = ["txt2img", str(ldm_runs["plain"]), "a red circle", "-n", "2", "--steps", "3", "--seed", "1"]
    assert main([*common, "--out", str(tmp_path / "plain.png")]) == 0
    assert (
        main([*common, "--caption", "--out", str(tmp_path / "cap.png"), "--trajectory", str(tmp_path / "t.gif")]) == 0
    )
    assert main([*common, "--out", str(tmp_path / "a.npy"), "--trajectory", str(tmp_path / "t.png")]) == 0
    assert main([*common, "--out", str(tmp_path / "b.npy")]) == 0
    np.testing.assert_array_equal(np.load(tmp_path / "a.npy"), np.load(tmp_path / "b.npy"))
    plain, captioned = Image.open(tmp_path / "plain.png"), Image.open(tmp_path / "cap.png")
    assert captioned.height > plain.height
    with Image.open(tmp_path / "t.gif") as gif:
        assert gif.n_frames == 4 and gif.width > 2 * 64  # x_t beside x0_hat, decoded to 32x32 images (scaled)
    assert np.asarray(Image.open(tmp_path / "t.png").convert("L")).std() > 5
    capsys.readouterr()
    assert main([*common, "--caption", "--out", str(tmp_path / "c.npy")]) == 2  # an array has no captions
    assert "--caption" in capsys.readouterr().err


def test_cli_an_unconditional_run_asked_for_a_prompt(tmp_path, capsys):
    run = tmp_path / "digits"
    assert main(["train", "--preset", "digits", "--steps", "1", "--out", str(run), "--no-progress", *TINY_DIGITS]) == 0
    capsys.readouterr()
    assert main(["txt2img", str(run), "a red circle", "--out", str(tmp_path / "x.png")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "text" in err, err


@pytest.mark.parametrize(
    "argv, message",
    [
        (["txt2img", "{missing}", "red", "--out", "{tmp}/x.png"], "run directory not found"),
        (["txt2img", "{run}", "red", "--out", "{tmp}/x.jpg"], "--out must end in"),
        (["txt2img", "{run}", "red", "--sampler", "nope", "--out", "{tmp}/x.png"], "unknown sampler"),
        (["img2img", "{run}", "{tmp}/nothing.png", "red", "--out", "{tmp}/x.png"], "image file not found"),
        (["img2img", "{run}", "{big}", "red", "--out", "{tmp}/x.png"], "works on images of shape (3, 32, 32)"),
        (
            ["img2img", "{run}", "{img}", "red", "--strength", "1.5", "--out", "{tmp}/x.png"],
            "strength must be in [0, 1]",
        ),
        (["img2img", "{run}", "{notimg}", "red", "--out", "{tmp}/x.png"], "cannot read"),
        (["inpaint", "{run}", "{img}", "{big}", "red", "--out", "{tmp}/x.png"], "the mask is 64x64"),
        (["sample", "{run}", "--out", "{tmp}/x.png"], "use kuosan txt2img"),
    ],
)
def test_cli_bad_input_is_one_line_exit_2(tmp_path, ldm_runs, capsys, argv, message):
    paths = {
        "run": str(ldm_runs["plain"]),
        "missing": str(tmp_path / "nothing"),
        "tmp": str(tmp_path),
        "img": _png(tmp_path / "img.png", np.zeros((32, 32, 3), np.uint8)),
        "big": _png(tmp_path / "big.png", np.zeros((64, 64, 3), np.uint8)),
    }
    (tmp_path / "notimg.png").write_text("not an image")
    paths["notimg"] = str(tmp_path / "notimg.png")
    assert main([a.format(**paths) for a in argv]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1, err


def test_cli_train_shapes_ldm_without_vae_as_a_user_would(tmp_path):
    """The preset names runs/shapes-vae; without it: one line, exit 2 (run in an empty directory)."""
    proc = subprocess.run(
        [sys.executable, "-m", "kuosan", "train", "--preset", "shapes-ldm", "--out", "ldm", "--steps", "1", "data.n=8"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 2
    assert proc.stderr.strip().count("\n") == 0 and "runs/shapes-vae" in proc.stderr
    assert "kuosan train --preset shapes-vae" in proc.stderr


@pytest.mark.slow
def test_two_processes_equal_one_with_dict_data(tmp_path, bert_dir):
    """torchrun with 2 processes x 4 examples == 1 process x (2 micro-batches of 4), bit for bit, for a
    text-conditional model: the conditioning of the dict data and the objective's draw (prompt dropout,
    masks) are sliced like x."""
    import os

    args = [
        "-m",
        "kuosan",
        "train",
        "--preset",
        "shapes-pixel",
        "--no-progress",
        "--steps",
        "2",
        *TINY_UNET,
        "model.params.channel_mult=[1,2]",
        "model.params.attention_levels=[1]",
        "model.params.dropout=0",
        "train.precision=fp32",
        "text.inpaint_fraction=0.5",
        f"text.encoder=path:{bert_dir}",
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    ddp = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
    for launcher, out, extra in ((ddp, "ddp", []), ([sys.executable], "accum", ["train.grad_accum=2"])):
        r = subprocess.run(
            [*launcher, *args, "--out", str(tmp_path / out), *extra],
            capture_output=True,
            text=True,
            env=env,
            timeout=300,
        )
        assert r.returncode == 0, r.stderr[-2000:]
    a, b = ckpt.load_tensors(tmp_path / "ddp", "model"), ckpt.load_tensors(tmp_path / "accum", "model")
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert ckpt.read_state(tmp_path / "ddp")["world_size"] == 2


def test_text_and_autoencoder_commands_with_an_explicit_cpu_device(tmp_path, ldm_runs, vae_run, capsys):
    """txt2img, img2img and reconstruct through the device code: --device cpu (and --precision fp32)
    gives what the default (auto, the CPU here) gives, bit for bit."""
    run = str(ldm_runs["plain"])
    img = _png(tmp_path / "in.png", np.full((32, 32, 3), 90, np.uint8))
    for argv in (["txt2img", run, "a red circle"], ["img2img", run, img, "blue"]):
        common = [*argv, "-n", "2", "--steps", "2", "--seed", "3"]
        assert main([*common, "--out", str(tmp_path / "auto.npy")]) == 0
        assert main([*common, "--device", "cpu", "--precision", "fp32", "--out", str(tmp_path / "cpu.npy")]) == 0
        assert np.array_equal(np.load(tmp_path / "auto.npy"), np.load(tmp_path / "cpu.npy"))
    capsys.readouterr()
    reports = []
    for extra in ([], ["--device", "cpu"]):
        assert main(["reconstruct", str(vae_run), "--eval-n", "16", "--sample", *extra]) == 0
        reports.append(json.loads(capsys.readouterr().out))
    assert reports[0] == reports[1] and np.isfinite(reports[0]["psnr_db"])


def test_export_a_latent_text_run_to_diffusers(tmp_path, vae_run, bert_dir):
    """An inpainting-capable latent text run: unet/ loads as UNet2DConditionModel and computes what
    kuosan's U-Net computes; vae/ carries the run's latent scale factor."""
    diffusers = pytest.importorskip("diffusers")
    from kuosan.runs import Run

    cfg = _ldm_cfg(vae_run, bert_dir, "text.inpaint_fraction=0.5", "model.params.groups=8")
    build_trainer(cfg, tmp_path / "run", progress=False).fit(steps=1)
    out = tmp_path / "hf"
    assert main(["export", str(tmp_path / "run"), "--out", str(out)]) == 0
    run = Run.open(tmp_path / "run")
    unet = diffusers.UNet2DConditionModel.from_pretrained(out / "unet").eval()
    vae = diffusers.AutoencoderKL.from_pretrained(out / "vae")
    assert vae.config.scaling_factor == pytest.approx(run.config.latent.scale_factor)
    conditioning = json.loads((out / "kuosan_conditioning.json").read_text())
    assert conditioning["latent_shape"] == list(run.network.data_shape)
    g = torch.Generator().manual_seed(0)
    c, h, w = run.network.data_shape
    x = torch.randn(2, c, h, w, generator=g)
    cond = run.text_encoder.encode(["a red circle", "a blue square on the left"])
    cond_image = torch.randn(2, run.network.config["cond_channels"], h, w, generator=g)
    t = torch.tensor([10.0, 900.0])
    with torch.no_grad():
        ours = run.network(x, t, cond_image=cond_image, **cond)
        theirs = unet(
            torch.cat([x, cond_image], dim=1),
            t,
            encoder_hidden_states=cond["context"],
            encoder_attention_mask=cond["context_mask"].float(),
            class_labels=cond.get("pooled"),
        ).sample
    assert (ours - theirs).abs().max() < 1e-4


def test_a_latent_cache_encodes_once_and_notices_what_changed(tmp_path, vae_run, bert_dir, monkeypatch):
    """data.cache: the second run on the same images and autoencoder reads the latents (bitwise the
    encoded ones) instead of encoding; an edited image is encoded again."""
    import kuosan.build as build

    encoded = []
    real = build.encode_posterior
    monkeypatch.setattr(build, "encode_posterior", lambda *a, **k: encoded.append(1) or real(*a, **k))
    rng = np.random.default_rng(0)
    for k in range(6):
        Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8), "RGB").save(tmp_path / f"{k}.png")
        (tmp_path / f"{k}.txt").write_text("a red circle")
    cache = tmp_path / "cache"
    folder = [f"data.name=folder:{tmp_path}", "data.size=32", "data.channels=3", "latent.scale_factor=1.0",
              f"data.cache={cache}"]  # fmt: skip
    for loader in ("memory", "stream", "stream"):
        trainer = build_trainer(_ldm_cfg(vae_run, bert_dir, *folder, f"data.loader={loader}"), tmp_path / "r")
        if loader == "memory":
            first = trainer.data.clone()
        assert torch.equal(trainer.data, first)
    assert len(encoded) == 2 and len(list(cache.glob("latents-*.safetensors"))) == 2  # one per way of reading
    Image.fromarray(np.zeros((32, 32, 3), dtype=np.uint8), "RGB").save(tmp_path / "0.png")
    edited = build_trainer(_ldm_cfg(vae_run, bert_dir, *folder, "data.loader=stream"), tmp_path / "r")
    assert len(encoded) == 3 and not torch.equal(edited.data[0], first[0]) and torch.equal(edited.data[1:], first[1:])
    (cache / "blocked").write_text("")
    bad = [*folder[:-1], f"data.cache={cache / 'blocked'}"]
    with pytest.raises(ConfigError, match="data.cache"):
        build_trainer(_ldm_cfg(vae_run, bert_dir, *bad), tmp_path / "r")


def test_the_web_app_generates_from_a_text_run_with_an_uploaded_image_and_a_drawn_mask(tmp_path, ldm_runs, vae_run):
    """kuosan serve's requests on a latent text run: txt2img with a prompt (a captioned grid),
    img2img from an uploaded picture of another size (resized to the model's), inpainting where
    the strokes are, and the one-line errors of a missing image or mask."""
    pytest.importorskip("gradio")
    from kuosan.pipelines import DEFAULT_GUIDANCE
    from kuosan.web import Server

    with pytest.raises(ConfigError, match="autoencoder run"):
        Server([str(vae_run)], tmp_path)
    server = Server([str(ldm_runs["inpaint"])], tmp_path)
    (name,) = server.models
    assert server.models[name].kind == "text"
    assert server.models[name].guidance == DEFAULT_GUIDANCE  # the page shows what a blank field would use

    def ask(task, image=None, **changes):
        args = dict(
            run=name, sampler="ddim", grid="(the run's)", steps=2, eta=None, seed=0, n=2, class_label="all",
            prompt="a red circle", negative="", guidance=2.0, task=task, image=image, strength=0.5,
        )  # fmt: skip
        args.update(changes)
        return server.generate(*args.values())

    text = ask("txt2img")
    assert text["grid"].height > 2 * 32 and len(text["frames"]) == 3  # captions beneath; 2 steps and the sample
    upload = np.zeros((48, 40, 4), np.uint8)
    upload[..., 0], upload[..., 3] = 200, 255
    strokes = np.zeros((48, 40, 4), np.uint8)
    strokes[:20, :20, 3] = 255
    editor = {"background": upload, "layers": [strokes], "composite": upload}
    assert ask("img2img", editor)["grid"].size == text["grid"].size
    assert ask("inpaint", editor)["grid"].size == text["grid"].size
    with pytest.raises(ConfigError, match="leave eta blank"):  # as txt2img on the command line: no eta
        ask("txt2img", eta=0.0)
    with pytest.raises(ConfigError, match="needs an image"):
        ask("img2img", None)
    with pytest.raises(ConfigError, match="needs a mask"):
        ask("inpaint", {"background": upload, "layers": [np.zeros_like(strokes)], "composite": upload})
