"""The argument parser of the ``kuosan`` command line (the commands are in :mod:`kuosan.cli.commands`)."""

from __future__ import annotations

import argparse
import re

DEVICE_HELP = "auto (a CUDA GPU if there is one; cuda:LOCAL_RANK under torchrun), cpu, cuda, cuda:N or mps"

RUN_OR_SD_HELP = "run directory of a text-conditional model, or diffusers:DIR (a Stable Diffusion folder)"


def grid_help() -> str:
    from kuosan.diffusion.schedules import GRIDS

    return (
        f"noise-level grid: {', '.join(GRIDS)}, or scheduler (a diffusers model's own timesteps, its default) "
        "(default: the run's)"
    )


# config overrides anywhere on a train command line: section.key=value
OVERRIDE = re.compile(r"^[A-Za-z_]\w*(\.\w+)+=")


def add_device_options(p, *, precision: bool) -> None:
    """--device (and --precision, the network's autocast) of a command that runs a trained network."""
    p.add_argument("--device", help=f"{DEVICE_HELP} (default: the run's sample.device, auto)")
    if precision:
        p.add_argument(
            "--precision", choices=["fp32", "bf16", "fp16"], help="the network's autocast (default: the run's, fp32)"
        )


def add_train(sub):
    from kuosan.presets import PRESETS

    p = sub.add_parser(
        "train",
        help="train a diffusion model",
        description="Train a diffusion model; `section.key=value` overrides any config entry.",
    )
    p.add_argument("--preset", help=f"named preset: {', '.join(PRESETS)} (src/kuosan/presets/NAME.toml)")
    p.add_argument("--config", help="experiment file (TOML or JSON)")
    p.add_argument("--out", required=True, help="run directory (checkpoints, samples, log)")
    p.add_argument("--time-budget", type=float, help="seconds of training")
    p.add_argument("--steps", type=int, help="total optimizer steps")
    p.add_argument("--seed", type=int)
    p.add_argument("--resume", action="store_true", help="continue the run in --out")
    p.add_argument("--device", help=f"{DEVICE_HELP} (default: the config's train.device, auto)")
    p.add_argument("--no-progress", action="store_true")
    p.epilog = "Overrides look like train.lr=1e-3 or model.params.base_channels=32, anywhere on the line."


def add_sample(sub):
    from kuosan.samplers import SAMPLERS

    p = sub.add_parser("sample", help="draw samples from a trained run")
    p.add_argument("run", help="run directory, or diffusers:DIR (an unconditional diffusers U-Net with its scheduler)")
    p.add_argument(
        "--sampler",
        help=f"one of: {', '.join(SAMPLERS)} (default: the run's; docs/samplers.md "
        "says which to use: unipc with --grid kuosan for 5-20 steps)",
    )
    p.add_argument(
        "--steps",
        type=int,
        help="sampler steps (default: the run's; heun and dpmpp-2s evaluate the network twice per step)",
    )
    p.add_argument("--grid", help=grid_help())
    p.add_argument(
        "--eta", type=float, help="stochasticity of ddim, euler-ancestral, dpmpp-2s, dpmpp-2m-sde, dpmpp-3m-sde"
    )
    p.add_argument(
        "--langevin-steps",
        type=int,
        help="annealed-langevin: Langevin steps per noise level; pc: corrector steps per step",
    )
    p.add_argument("--snr", type=float, help="pc: the Langevin corrector's signal-to-noise ratio")
    p.add_argument(
        "--solver-type", choices=["midpoint", "heun"], help="dpmpp-2m-sde: the second-order term (default midpoint)"
    )
    p.add_argument(
        "--form", choices=["usual", "exact"], help="dpmpp-3m, dpmpp-3m-sde: k-diffusion's weights or the exact ones"
    )
    p.add_argument("-n", "--num", type=int, default=64, help="number of samples")
    p.add_argument(
        "--class",
        dest="class_label",
        help="class-conditional run: the class index, or all (every class in turn; the default)",
    )
    p.add_argument("--guidance", type=float, help="class-conditional run: guidance scale (default: the run's)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--weights", choices=["ema", "model"], default="ema")
    p.add_argument("--no-clip", action="store_true", help="do not clamp x0_hat to [-1, 1]")
    p.add_argument("--batch-size", type=int, default=1000)
    add_device_options(p, precision=True)
    p.add_argument("--out", required=True, help="FILE.npy (array (N, ...) in [-1, 1]) or FILE.png (grid)")
    p.add_argument(
        "--trajectory",
        help="also FILE.gif (an animation, a frame a step) or FILE.png (a strip) of x_t and the model's x0_hat "
        "for the first batch",
    )


def add_eval(sub):
    from kuosan.metrics.inception import RESIZE_POLICIES

    p = sub.add_parser(
        "eval",
        help="every sample-quality metric of samples, as JSON",
        description="With --ref: FID, KID, precision/recall and IS of any images against any reference in the "
        "FID Inception-v3's features (--inception-weights). Without: the bundled data set's suite (digits: "
        "FD/KID/precision/recall/IS on the in-house classifier and a memorisation check).",
    )
    p.add_argument(
        "samples", help="a folder of images, or FILE.npy/.npz: (N, C, H, W) in [-1, 1] (what `kuosan sample` writes)"
    )
    p.add_argument(
        "--ref", help="reference: a folder of images, an array file, or a statistics .npz (mu, sigma: FID only)"
    )
    p.add_argument("--dataset", help="without --ref: the bundled data set the samples imitate (default digits)")
    p.add_argument(
        "--prompts",
        help="for the CLIP score: a text file (one prompt per image, or one for all), or a captioned folder "
        "(metadata.jsonl or NAME.txt beside each image; the samples folder itself works)",
    )
    p.add_argument("--clip", help="with --prompts: a local transformers CLIP model directory")
    p.add_argument(
        "--inception-weights",
        help="FID Inception-v3 weights (.pth or .safetensors) to add the "
        "standard FID (fid_inception); nothing is downloaded",
    )
    p.add_argument("--resize", default="tf1-bilinear", choices=RESIZE_POLICIES, help="Inception resize policy")
    p.add_argument("--stats-cache", help="FILE.npz caching the reference statistics of the Inception FID")
    p.add_argument("--device", help=f"{DEVICE_HELP}: where the feature networks run (default auto)")
    p.add_argument("--out", help="also write the JSON report to this file")


def add_nll(sub):
    p = sub.add_parser(
        "nll",
        help="test-set likelihood of a trained run in bits/dim",
        description="Bits/dim of the data (discrete levels; see docs/evaluation.md): the "
        "variational bound (vlb) or the probability-flow ODE on dequantized data (ode).",
    )
    p.add_argument("run", help="run directory")
    p.add_argument("--split", default="test", help="data split: test, train (digits), all")
    p.add_argument("--method", default="vlb", choices=["vlb", "ode"])
    p.add_argument("-n", "--num", type=int, help="use the first N images of the split (default: all)")
    p.add_argument("--batch-size", type=int, default=500)
    p.add_argument("--seed", type=int, default=0, help="seed of the noise, dequantization and probes")
    p.add_argument("--weights", choices=["ema", "model"], default="ema")
    p.add_argument(
        "--variance",
        default="auto",
        choices=["auto", "fixed_small", "fixed_large", "learned_range"],
        help="vlb: reverse variance (auto: learned_range for learn_sigma runs, else fixed_small)",
    )
    p.add_argument("--no-clip", action="store_true", help="vlb: do not clamp x0_hat to the data range")
    p.add_argument(
        "--dequantize",
        default="auto",
        choices=["auto", "yes", "no"],
        help="vlb: start the chain from dequantized data (auto: as the run was trained)",
    )
    p.add_argument(
        "--steps",
        type=int,
        help="vlb: bound of the model respaced to this many timesteps "
        "(default: all T, improved-diffusion's calc_bpd_loop)",
    )
    p.add_argument("--rtol", type=float, default=1e-5, help="ode: relative tolerance of the RK45 solver")
    p.add_argument("--atol", type=float, default=1e-5, help="ode: absolute tolerance of the RK45 solver")
    p.add_argument("--trace", default="hutchinson", choices=["hutchinson", "exact"], help="ode: divergence")
    p.add_argument("--probe", default="rademacher", choices=["rademacher", "gaussian"], help="ode: Hutchinson probe")
    add_device_options(p, precision=False)
    p.add_argument("--out", help="FILE.npy: also save the per-image bits/dim")


def add_reconstruct(sub):
    p = sub.add_parser(
        "reconstruct",
        help="reconstruction PSNR of a trained autoencoder run, and a picture",
        description="Encode and decode the run's evaluation images (shapes: the fixed test set; "
        "digits: the test split); print PSNR, KL per latent dimension and the latent "
        "scale factor as JSON; draw originals over reconstructions.",
    )
    p.add_argument("run", help="run directory of a vae or ae run")
    p.add_argument("-n", "--num", type=int, default=64, help="images in the picture")
    p.add_argument("--out", help="FILE.png: originals (rows) over their reconstructions")
    p.add_argument("--split", default="test", help="evaluation split: test or val (shapes), test (digits)")
    p.add_argument("--eval-n", type=int, default=2000, help="shapes: number of evaluation images")
    p.add_argument("--weights", choices=["ema", "model"], default="ema")
    p.add_argument("--sample", action="store_true", help="decode posterior draws instead of the posterior mean")
    p.add_argument("--batch-size", type=int, default=250)
    p.add_argument("--seed", type=int, default=0, help="seed of the posterior draws")
    add_device_options(p, precision=False)


def add_generation_options(p, *, prompt_help: str) -> None:
    from kuosan.samplers import SAMPLERS

    p.add_argument("prompt", help=prompt_help)
    p.add_argument("-n", "--num", type=int, default=1, help="images per prompt")
    p.add_argument(
        "--guidance",
        type=float,
        help="classifier-free guidance scale (1: no guidance; default 3 for a kuosan run, 7.5 for Stable Diffusion)",
    )
    p.add_argument(
        "--negative", "--negative-prompt", default="", help="negative prompt (the unconditional half of guidance)"
    )
    p.add_argument("--steps", type=int, help="sampler steps (default: the run's; 50 for Stable Diffusion)")
    p.add_argument("--sampler", help=f"one of: {', '.join(SAMPLERS)} (default: the run's; ddim for Stable Diffusion)")
    p.add_argument("--grid", help=grid_help())
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--weights", choices=["ema", "model"], default="ema")
    add_device_options(p, precision=True)
    p.add_argument("--out", required=True, help="FILE.png (grid) or FILE.npy (array (N, C, H, W) in [-1, 1])")
    p.add_argument("--caption", action="store_true", help="FILE.png: write the prompt beneath each image")
    p.add_argument("--trajectory", help="also FILE.gif or FILE.png of the decoded x_t and x0_hat at every step")


def add_pictures(sub):
    p = sub.add_parser("plot", help="a run's training curves (loss and its EMA, lr, grad norm, steps/s) as PNG")
    p.add_argument("run", help="run directory (its log.jsonl)")
    p.add_argument("--out", help="FILE.png (default RUN/training.png)")
    p = sub.add_parser("show", help="pictures of diffusion at work: the forward process, score fields, Langevin")
    shows = p.add_subparsers(dest="what", required=True)
    q = shows.add_parser(
        "forward", help="q(x_t | x_0) over t with abar(t) and SNR(t) of the linear and cosine schedules"
    )
    q.add_argument("--dataset", default="digits", help="an image data set: digits, shapes, folder:PATH")
    q.add_argument(
        "--schedule",
        nargs="+",
        default=["linear", "cosine"],
        choices=["linear", "cosine"],
        help="the schedules whose strips are drawn (the curves show both)",
    )
    q.add_argument("-n", "--num", type=int, default=8, help="images in each cell")
    q.add_argument("--seed", type=int, default=0)
    q.add_argument("--out", required=True, help="FILE.png")
    q = shows.add_parser("score", help="a 2-D run's learned score field against the exact one and the data")
    q.add_argument("run", help="run directory of a 2-D (toy2d) run")
    q.add_argument("--sigma", type=float, nargs="+", default=[0.05, 0.2, 0.5, 1.0], help="noise levels (VE sigma)")
    q.add_argument("--points", type=int, default=21, help="arrows per side of the grid")
    q.add_argument("--seed", type=int, default=0, help="seed of the data points drawn")
    q.add_argument("--out", required=True, help="FILE.png")
    q = shows.add_parser(
        "langevin",
        help="Langevin vs annealed Langevin on a 1:4 Gaussian mixture with its exact score (seed 003, Song & Ermon)",
    )
    q.add_argument("-n", "--num", type=int, default=1280, help="chains")
    q.add_argument("--steps", type=int, default=1000, help="Langevin steps")
    q.add_argument("--seed", type=int, default=0)
    q.add_argument("--out", required=True, help="FILE.png")


def add_serve(sub):
    p = sub.add_parser(
        "serve",
        help="a local web app: generate from trained runs (txt2img, img2img, inpainting) and watch the denoising",
    )
    p.add_argument("runs", nargs="+", metavar="RUN", help="run directories, or diffusers:DIR folders")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=int, default=7860)
    p.add_argument("--out", default="kuosan-web", help="the folder the app writes its pictures to (and only there)")


def add_text_to_image(sub):
    p = sub.add_parser("txt2img", help="images from a text prompt (a text-conditional run)")
    p.add_argument("run", help=RUN_OR_SD_HELP)
    add_generation_options(p, prompt_help='the prompt, e.g. "a red circle in the top left"')
    p.add_argument("--height", type=int, help="image height in pixels (Stable Diffusion: a multiple of 8)")
    p.add_argument("--width", type=int, help="image width in pixels (Stable Diffusion: a multiple of 8)")
    p = sub.add_parser("img2img", help="re-draw an image after a prompt (SDEdit, diffusers' strength)")
    p.add_argument("run", help=RUN_OR_SD_HELP)
    p.add_argument("image", help="input image (PNG/JPEG) of the run's image size")
    add_generation_options(p, prompt_help="the prompt")
    p.add_argument("--strength", type=float, default=0.6, help="0: the input's reconstruction; 1: ignore the input")
    p = sub.add_parser("inpaint", help="repaint the white part of a mask after a prompt")
    p.add_argument("run", help=RUN_OR_SD_HELP)
    p.add_argument("image", help="input image (PNG/JPEG) of the run's image size")
    p.add_argument("mask", help="mask image of the same size: white = repaint, black = keep")
    add_generation_options(p, prompt_help="the prompt for the repainted region")
    p.add_argument(
        "--method",
        default="auto",
        choices=["auto", "concat", "replace"],
        help="concat: a model trained to inpaint; replace: any model (known region replaced each step)",
    )
    p.add_argument("--strength", type=float, default=1.0, help="below 1: start from the noised input (as img2img)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="kuosan", description="Diffusion models from first principles.")
    parser.add_argument("-v", "--verbose", action="store_true")
    sub = parser.add_subparsers(dest="command", required=True)
    add_train(sub)
    add_sample(sub)
    p = sub.add_parser("info", help="describe a trained run (or a diffusers:DIR folder)")
    p.add_argument("run")
    add_eval(sub)
    add_nll(sub)
    add_reconstruct(sub)
    add_text_to_image(sub)
    add_pictures(sub)
    add_serve(sub)
    p = sub.add_parser(
        "sds",
        help="images optimised by score distillation through a frozen text model (DreamFusion's SDS, g = identity)",
    )
    p.add_argument("run", help=RUN_OR_SD_HELP)
    p.add_argument("prompt")
    p.add_argument("-n", "--num", type=int, default=1, help="images (each optimised from its own start)")
    p.add_argument("--steps", type=int, default=200, help="optimisation steps (one denoiser evaluation each)")
    p.add_argument("--lr", type=float, default=0.05, help="Adam's learning rate on the latents (or pixels)")
    p.add_argument(
        "--guidance",
        type=float,
        default=7.5,
        help="classifier-free guidance (DreamFusion: 100; 30 over-saturates here)",
    )
    p.add_argument(
        "--through-encoder",
        action="store_true",
        help="latent model: optimise the pixels through the frozen VAE encoder instead of the latent",
    )
    p.add_argument("--negative", "--negative-prompt", default="", help="negative prompt")
    p.add_argument("--t-min", type=float, default=0.02, help="smallest timestep, as a fraction of T")
    p.add_argument("--t-max", type=float, default=0.98, help="largest timestep, as a fraction of T")
    p.add_argument("--t-schedule", default="random", choices=["random", "anneal"], help="anneal: t-max to --t-max-end")
    p.add_argument("--t-max-end", type=float, default=0.5)
    p.add_argument("--weighting", default="1-abar", choices=["1-abar", "sigma", "uniform"], help="w(t)")
    p.add_argument("--seed", type=int, default=0)
    add_device_options(p, precision=False)
    p.add_argument("--out", required=True, help="FILE.png (grid) or FILE.npy (array (N, C, H, W) in [-1, 1])")
    p = sub.add_parser(
        "dreamfusion",
        help="a NeRF optimised by score distillation through a frozen text model (DreamFusion): views, turntable",
    )
    p.add_argument("run", help=RUN_OR_SD_HELP)
    p.add_argument("prompt")
    p.add_argument("--out", required=True, help="a new or empty folder (views.npy, turntable.gif, nerf.safetensors...)")
    p.add_argument("--steps", type=int, default=1000, help="optimisation steps (one render and denoiser call each)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--guidance", type=float, default=20.0, help="classifier-free guidance (DreamFusion: 100)")
    p.add_argument("--negative", "--negative-prompt", default="", help="negative prompt")
    p.add_argument("--lr", type=float, default=5e-3, help="Adam's learning rate on the NeRF")
    p.add_argument("--batch-size", type=int, default=1, help="cameras per step")
    p.add_argument("--t-min", type=float, default=0.02, help="smallest timestep, as a fraction of T")
    p.add_argument("--t-max", type=float, default=0.98, help="largest timestep, as a fraction of T")
    p.add_argument("--t-schedule", default="anneal", choices=["random", "anneal"], help="anneal: t-max to --t-max-end")
    p.add_argument("--t-max-end", type=float, default=0.5)
    p.add_argument("--weighting", default="1-abar", choices=["1-abar", "sigma", "uniform"], help="w(t)")
    for name, default, what in (
        ("azimuth", (-180.0, 180.0), "degrees"), ("elevation", (-10.0, 60.0), "degrees"),
        ("radius", (1.0, 1.5), "camera distance from the centre"), ("fov", (40.0, 70.0), "vertical, degrees"),
    ):  # fmt: skip
        p.add_argument(f"--{name}", type=float, nargs=2, default=default, metavar=("LO", "HI"), help=f"{what}")
    p.add_argument("--view-prompts", action="store_true", help="append ', front/side/back/overhead view' by camera")
    p.add_argument("--perp-neg", action="store_true", help="Perp-Neg: the other views' prompts as negatives")
    p.add_argument("--perp-neg-weight", type=float, default=1.0)
    p.add_argument("--grad-clip", type=float, default=0.0, help="clip the NeRF's gradient norm (0: off)")
    p.add_argument("--albedo-warmup", type=float, default=0.3, help="fraction of steps rendering albedo only")
    p.add_argument("--textureless", type=float, default=0.0, help="probability of a textureless (white) render")
    p.add_argument("--min-ambient", type=float, default=0.6, help="the ambient light is drawn from [this, 1]")
    p.add_argument("--lambda-orientation", type=float, default=1e-2, help="weight of the orientation regulariser")
    p.add_argument("--lambda-entropy", type=float, default=0.0, help="weight of the opacity entropy regulariser")
    p.add_argument("--samples", type=int, default=48, help="samples per ray")
    p.add_argument("--render-size", type=int, help="render this many pixels high, resized to the model's size")
    p.add_argument(
        "--encoding", default="frequency", choices=["frequency", "hashgrid"], help="the NeRF's input encoding"
    )
    p.add_argument(
        "--frequencies", type=int, default=3, help="octaves of the frequency encoding (more: finer detail, and noise)"
    )
    p.add_argument(
        "--background", default="fixed", choices=["mlp", "fixed"], help="fixed: dark grey; mlp: learned, by direction"
    )
    p.add_argument(
        "--decoded-target",
        action="store_true",
        help="latent model: the SDS target decoded to pixels instead of the gradient through the encoder",
    )
    p.add_argument(
        "--init",
        help="start from an earlier run's nerf.safetensors (its config.json beside it); --steps 0: export only",
    )
    p.add_argument("--save-mesh", nargs="?", const="ply", choices=["ply", "obj"], help="also write mesh.ply/.obj")
    p.add_argument("--mesh-level", type=float, help="the density of the mesh's surface (default ln 2 / 0.1)")
    add_device_options(p, precision=False)
    p = sub.add_parser("export", help="write a trained run as a diffusers folder (from_pretrained loads it)")
    p.add_argument(
        "run",
        help="run directory: a vae run (AutoencoderKL), an unconditional DDPM run (DDPMPipeline), or a text/latent "
        "run (UNet2DConditionModel + scheduler + VAE)",
    )
    p.add_argument("--format", default="diffusers", choices=["diffusers"])
    p.add_argument("--weights", choices=["ema", "model"], default="ema")
    p.add_argument("--out", required=True, help="the folder to write (must not exist, or be empty)")
    return parser
