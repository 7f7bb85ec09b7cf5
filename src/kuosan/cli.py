"""The ``kuosan`` command line: train, sample, info, eval, nll, reconstruct, txt2img, img2img, inpaint."""
from __future__ import annotations

import argparse
import json
import logging
import re
import sys
from pathlib import Path

EXIT_USAGE = 2
OVERRIDE = re.compile(r"^[A-Za-z_]\w*(\.\w+)+=")


class UserError(Exception):
    """A problem with what the user asked for: printed as one line, exit status 2."""


def _add_train(sub):
    p = sub.add_parser("train", help="train a diffusion model",
                       description="Train a diffusion model; `section.key=value` overrides any config entry.")
    p.add_argument("--preset", help="named preset: digits, toy2d, digits-ncsn, toy2d-ncsn, shapes-vae, shapes-ldm, "
                                    "shapes-pixel")
    p.add_argument("--config", help="experiment file (TOML or JSON)")
    p.add_argument("--out", required=True, help="run directory (checkpoints, samples, log)")
    p.add_argument("--time-budget", type=float, help="seconds of training")
    p.add_argument("--steps", type=int, help="total optimizer steps")
    p.add_argument("--seed", type=int)
    p.add_argument("--resume", action="store_true", help="continue the run in --out")
    p.add_argument("--no-progress", action="store_true")
    p.epilog = "Overrides look like train.lr=1e-3 or model.params.base_channels=32, anywhere on the line."


def _add_sample(sub):
    from kuosan.diffusion.schedules import GRIDS
    from kuosan.samplers import SAMPLERS

    p = sub.add_parser("sample", help="draw samples from a trained run")
    p.add_argument("run", help="run directory")
    p.add_argument("--sampler", help=f"one of: {', '.join(SAMPLERS)} (default: the run's; docs/samplers.md "
                                     "says which to use: unipc with --grid kuosan for 5-20 steps)")
    p.add_argument("--steps", type=int, help="sampler steps (default: the run's; heun and dpmpp-2s evaluate "
                                             "the network twice per step)")
    p.add_argument("--grid", help=f"noise-level grid: {', '.join(GRIDS)} (default: the run's)")
    p.add_argument("--eta", type=float, help="stochasticity of ddim, euler-ancestral, dpmpp-2s, dpmpp-2m-sde, "
                                             "dpmpp-3m-sde")
    p.add_argument("--langevin-steps", type=int,
                   help="annealed-langevin: Langevin steps per noise level; pc: corrector steps per step")
    p.add_argument("--snr", type=float, help="pc: the Langevin corrector's signal-to-noise ratio")
    p.add_argument("-n", "--num", type=int, default=64, help="number of samples")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--weights", choices=["ema", "model"], default="ema")
    p.add_argument("--no-clip", action="store_true", help="do not clamp x0_hat to [-1, 1]")
    p.add_argument("--batch-size", type=int, default=1000)
    p.add_argument("--out", required=True, help="FILE.npy (array (N, ...) in [-1, 1]) or FILE.png (grid)")


def cmd_train(args) -> int:
    from kuosan.build import build_trainer
    from kuosan.config import resolve_config
    from kuosan.train import checkpoint as ckpt

    if args.preset is None and args.config is None and not args.resume:
        raise UserError("give --preset NAME or --config FILE (or --resume)")
    out = Path(args.out)
    existing = ckpt.find_checkpoint(out)
    if existing and not args.resume:
        raise UserError(f"{out} already holds a checkpoint; pass --resume to continue it or choose another --out")
    if args.resume and not existing:
        raise UserError(f"--resume: no checkpoint in {out}")
    overrides = list(args.overrides)  # pulled out of argv by main()
    if args.seed is not None:
        overrides.append(f"train.seed={args.seed}")
    if args.resume:
        from kuosan.config import Config, _merge, parse_override

        base = ckpt.read_config(out)
        for item in overrides:
            base = _merge(base, parse_override(item))
        cfg = Config.from_dict(base)
    else:
        cfg = resolve_config(args.preset, args.config, overrides)
    steps = args.steps if args.steps is not None else cfg.train.steps
    budget = args.time_budget if args.time_budget is not None else cfg.train.time_budget
    if steps is None and budget is None:
        raise UserError("give --steps or --time-budget (or train.steps / train.time_budget in the config)")
    if budget is not None and budget <= 0:
        raise UserError(f"--time-budget must be positive, got {budget}")
    from kuosan.train import distributed

    distributed.init_from_env()  # under torchrun: join the process group (gloo on CPU)
    try:
        trainer = build_trainer(cfg, out, progress=not args.no_progress)
        if args.resume:
            trainer.resume()
            if trainer.rank == 0:
                print(f"resuming {out} at step {trainer.step}", file=sys.stderr)
        summary = trainer.fit(steps=steps, time_budget=budget)
    finally:
        distributed.shutdown()
    if trainer.rank == 0:
        print(json.dumps(summary))
    return 130 if summary["interrupted"] else 0


def cmd_sample(args) -> int:
    import numpy as np

    from kuosan.config import ConfigError
    from kuosan.imaging import save_samples_png
    from kuosan.pipeline import sample_run

    out = Path(args.out)
    if out.suffix not in (".npy", ".png"):
        raise UserError(f"--out must end in .npy or .png, got {out.name}")
    _refuse_autoencoder(args.run)
    if args.num < 1:
        raise UserError(f"-n must be at least 1, got {args.num}")
    kwargs = {"eta": args.eta} if args.eta is not None else {}
    if args.langevin_steps is not None:
        if args.langevin_steps < 1:
            raise UserError(f"--langevin-steps must be at least 1, got {args.langevin_steps}")
        kwargs["langevin_steps"] = args.langevin_steps
    if args.snr is not None:
        kwargs["snr"] = args.snr
    try:
        x = sample_run(args.run, args.num, sampler=args.sampler, steps=args.steps, grid=args.grid,
                       clip=False if args.no_clip else None, seed=args.seed, weights=args.weights,
                       batch_size=args.batch_size, **kwargs)
    except ConfigError as e:
        raise UserError(str(e).replace("sample.sampler=", "--sampler ").replace("sample.steps=", "--steps ")
                        .replace("sample.grid=", "--grid ")) from None
    except TypeError as e:  # an option the chosen sampler does not take (e.g. --eta with heun)
        raise UserError(f"--sampler {args.sampler}: {e}") from None
    out.parent.mkdir(parents=True, exist_ok=True)
    if out.suffix == ".npy":
        np.save(out, x.numpy())
    else:
        save_samples_png(x, out)
    print(json.dumps({"out": str(out), "shape": list(x.shape)}))
    return 0


def cmd_info(args) -> int:
    from kuosan.build import load_run
    from kuosan.train import checkpoint as ckpt

    cfg, net = load_run(args.run)
    state = ckpt.read_state(args.run)
    info = {"run": str(args.run), "step": state["step"], "train_seconds": round(state["train_seconds"], 1),
            "last_loss": state.get("last_loss"), "data_shape": state["data_shape"],
            "parameters": sum(p.numel() for p in net.parameters()), "config": cfg.to_dict()}
    if hasattr(net, "latent_shape"):  # a first-stage autoencoder
        info["latent_shape"] = list(net.latent_shape(state["data_shape"]))
    print(json.dumps(info, indent=2))
    return 0


def _add_eval(sub):
    from kuosan.metrics.inception import RESIZE_POLICIES

    p = sub.add_parser("eval", help="every sample-quality metric of a samples file, as JSON",
                       description="FD/KID/precision/recall/IS on the in-house classifier and a memorisation "
                                   "check against the data set's train split (held-out reference: test split).")
    p.add_argument("samples", help="FILE.npy: array (N, C, H, W) in [-1, 1] (what `kuosan sample` writes)")
    p.add_argument("--dataset", default="digits", help="bundled data set the samples imitate: digits")
    p.add_argument("--inception-weights", help="FID Inception-v3 weights (.pth or .safetensors) to add the "
                                               "standard FID (fid_inception); nothing is downloaded")
    p.add_argument("--resize", default="tf1-bilinear", choices=RESIZE_POLICIES, help="Inception resize policy")
    p.add_argument("--stats-cache", help="FILE.npz caching the reference statistics of the Inception FID")
    p.add_argument("--out", help="also write the JSON report to this file")


def _add_nll(sub):
    p = sub.add_parser("nll", help="test-set likelihood of a trained run in bits/dim",
                       description="Bits/dim of the data (discrete levels; see docs/evaluation.md): the "
                                   "variational bound (vlb) or the probability-flow ODE on dequantized data (ode).")
    p.add_argument("run", help="run directory")
    p.add_argument("--split", default="test", help="data split: test, train (digits), all")
    p.add_argument("--method", default="vlb", choices=["vlb", "ode"])
    p.add_argument("-n", "--num", type=int, help="use the first N images of the split (default: all)")
    p.add_argument("--batch-size", type=int, default=500)
    p.add_argument("--seed", type=int, default=0, help="seed of the noise, dequantization and probes")
    p.add_argument("--weights", choices=["ema", "model"], default="ema")
    p.add_argument("--variance", default="auto", choices=["auto", "fixed_small", "fixed_large", "learned_range"],
                   help="vlb: reverse variance (auto: learned_range for learn_sigma runs, else fixed_small)")
    p.add_argument("--no-clip", action="store_true", help="vlb: do not clamp x0_hat to the data range")
    p.add_argument("--dequantize", default="auto", choices=["auto", "yes", "no"],
                   help="vlb: start the chain from dequantized data (auto: as the run was trained)")
    p.add_argument("--steps", type=int, help="vlb: bound of the model respaced to this many timesteps "
                                             "(default: all T, improved-diffusion's calc_bpd_loop)")
    p.add_argument("--rtol", type=float, default=1e-5, help="ode: relative tolerance of the RK45 solver")
    p.add_argument("--atol", type=float, default=1e-5, help="ode: absolute tolerance of the RK45 solver")
    p.add_argument("--trace", default="hutchinson", choices=["hutchinson", "exact"], help="ode: divergence")
    p.add_argument("--probe", default="rademacher", choices=["rademacher", "gaussian"], help="ode: Hutchinson probe")
    p.add_argument("--out", help="FILE.npy: also save the per-image bits/dim")


def cmd_eval(args) -> int:
    import numpy as np
    import torch

    from kuosan.metrics.evaluate import DATASETS, evaluate_samples

    if args.dataset not in DATASETS:
        raise UserError(f"--dataset {args.dataset!r}: available: {', '.join(DATASETS)}")
    path = Path(args.samples)
    if not path.is_file():
        raise UserError(f"samples file not found: {path}")
    try:
        x = np.load(path, allow_pickle=False)
    except (ValueError, OSError) as e:
        raise UserError(f"cannot read {path} as a .npy array: {e}") from None
    if x.dtype.kind != "f" or x.ndim != 4 or x.shape[1:] != (1, 8, 8) or len(x) < 10:
        raise UserError(f"{path}: expected digit samples, a float array (N >= 10, 1, 8, 8) in [-1, 1]; got "
                        f"{x.dtype} {x.shape}")
    if not np.isfinite(x).all():
        raise UserError(f"{path} holds non-finite values")
    if args.inception_weights and not Path(args.inception_weights).is_file():
        raise UserError(f"--inception-weights: file not found: {args.inception_weights}")
    try:
        report = evaluate_samples(torch.from_numpy(x.astype(np.float32)), args.dataset,
                                  inception_weights=args.inception_weights, resize=args.resize,
                                  stats_cache=args.stats_cache)
    except ValueError as e:
        raise UserError(str(e)) from None
    report = {"samples": str(path), "dataset": args.dataset, **report}
    text = json.dumps(report)
    if args.out:
        Path(args.out).write_text(text + "\n")
    print(text)
    return 0


def _nll_data(cfg, split: str):
    """The evaluation images of a run's data set: digits splits, the whole image folder, fresh toy draws."""
    import torch

    from kuosan.build import build_data
    from kuosan.data import DIGITS_SPLITS, load_dataset

    name = cfg.data.name
    if name == "digits":
        if split not in DIGITS_SPLITS:
            raise UserError(f"--split {split!r}: digits has {', '.join(DIGITS_SPLITS)}")
        return build_data(cfg, split=split)
    if name.startswith("toy2d:"):  # "test": a fresh draw the model never saw
        seed = cfg.train.seed + (1 if split == "test" else 0)
        return load_dataset(name, n=10_000, generator=torch.Generator().manual_seed(seed))
    if split not in ("all", "train"):
        raise UserError(f"--split {split!r}: an image folder has no test split; use --split all")
    return build_data(cfg)


def cmd_nll(args) -> int:
    import time

    import numpy as np
    import torch

    from kuosan.build import build_denoiser, build_schedule, data_bin_width, load_run
    from kuosan.diffusion.likelihood import ode_bpd, respaced_schedule, vlb_bpd

    _refuse_autoencoder(args.run)
    cfg, net = load_run(args.run, weights=args.weights)
    x = _nll_data(cfg, args.split)
    if args.num is not None:
        if args.num < 1:
            raise UserError(f"-n must be at least 1, got {args.num}")
        x = x[: args.num]
    if args.batch_size < 1:
        raise UserError(f"--batch-size must be at least 1, got {args.batch_size}")
    schedule = build_schedule(cfg)
    denoiser = build_denoiser(cfg, net, clip=False)  # no clamping: the ODE needs the model's own vector field
    if args.method == "vlb" and getattr(cfg.diffusion, "kind", "vp") != "vp":
        raise UserError("--method vlb needs a DDPM (VP) run; use --method ode")
    bin_width = data_bin_width(cfg)
    variance = args.variance
    if variance == "auto":
        variance = "learned_range" if cfg.diffusion.learn_sigma else "fixed_small"
    if variance == "learned_range" and not cfg.diffusion.learn_sigma:
        raise UserError("--variance learned_range: this run's network has no learned variance")
    dequantized = cfg.diffusion.dequantize if args.dequantize == "auto" else args.dequantize == "yes"
    if dequantized and bin_width is None:
        raise UserError("--dequantize: this run's data are continuous")
    vlb_schedule = schedule
    if args.steps is not None:
        if not 2 <= args.steps <= schedule.T:
            raise UserError(f"--steps must be between 2 and T={schedule.T}, got {args.steps}")
        vlb_schedule = respaced_schedule(schedule, args.steps)
    g = torch.Generator().manual_seed(args.seed)
    t0, parts, extra = time.perf_counter(), [], {}
    for chunk in x.split(args.batch_size):
        if args.method == "vlb":
            out = vlb_bpd(denoiser, chunk, vlb_schedule, variance=variance, bin_width=bin_width,
                          clip_denoised=not args.no_clip, dequantized=dequantized, generator=g)
            extra.setdefault("prior_bpd", []).append(out["prior_bpd"])
            extra.setdefault("decoder_bpd", []).append(out["terms"][:, 0])
        else:
            out = ode_bpd(denoiser, chunk, bin_width=bin_width, generator=g, rtol=args.rtol, atol=args.atol,
                          trace=args.trace, probe=args.probe, sigma_min=schedule.sigma_min,
                          sigma_max=schedule.sigma_max)
            extra.setdefault("nfe", []).append(out["nfe"])
        parts.append(out["bpd"])
    bpd = torch.cat(parts)
    result = {"run": str(args.run), "split": args.split, "method": args.method, "n": len(bpd),
              "bpd": float(bpd.mean()), "bpd_stderr": float(bpd.std() / len(bpd) ** 0.5) if len(bpd) > 1 else None,
              "bin_width": bin_width, "seconds": round(time.perf_counter() - t0, 1), "seed": args.seed}
    if args.method == "vlb":
        result.update(variance=variance, clip_denoised=not args.no_clip, dequantized=dequantized,
                      steps=vlb_schedule.T,
                      prior_bpd=float(torch.cat(extra["prior_bpd"]).mean()),
                      decoder_bpd=float(torch.cat(extra["decoder_bpd"]).mean()))
    else:
        result.update(rtol=args.rtol, atol=args.atol, trace=args.trace, probe=args.probe,
                      nfe_per_batch=extra["nfe"], sigma_min=schedule.sigma_min, sigma_max=schedule.sigma_max)
    if args.out:
        np.save(args.out, bpd.numpy())
    print(json.dumps(result))
    return 0


def _refuse_autoencoder(run) -> None:
    """A one-line error for generating from (or taking the likelihood of) a first-stage autoencoder run."""
    from kuosan.networks import AUTOENCODERS
    from kuosan.train import checkpoint as ckpt

    network = ckpt.read_config(run).get("model", {}).get("network")
    if network in AUTOENCODERS:
        raise UserError(f"{run} is an autoencoder run (model.network={network}): it reconstructs, it does not "
                        f"generate; use `kuosan reconstruct {run}`, or train a latent diffusion model on it")


def _add_reconstruct(sub):
    p = sub.add_parser("reconstruct", help="reconstruction PSNR of a trained autoencoder run, and a picture",
                       description="Encode and decode the run's evaluation images (shapes: the fixed test set; "
                                   "digits: the test split); print PSNR, KL per latent dimension and the latent "
                                   "scale factor as JSON; draw originals over reconstructions.")
    p.add_argument("run", help="run directory of a vae or ae run")
    p.add_argument("-n", "--num", type=int, default=64, help="images in the picture")
    p.add_argument("--out", help="FILE.png: originals (rows) over their reconstructions")
    p.add_argument("--split", default="test", help="evaluation split: test or val (shapes), test (digits)")
    p.add_argument("--eval-n", type=int, default=2000, help="shapes: number of evaluation images")
    p.add_argument("--weights", choices=["ema", "model"], default="ema")
    p.add_argument("--sample", action="store_true", help="decode posterior draws instead of the posterior mean")
    p.add_argument("--batch-size", type=int, default=250)
    p.add_argument("--seed", type=int, default=0, help="seed of the posterior draws")


def cmd_reconstruct(args) -> int:
    import torch

    from kuosan.build import build_data, load_autoencoder
    from kuosan.imaging import save_samples_png
    from kuosan.metrics.reconstruction import reconstruction_pairs, reconstruction_report

    if args.out is not None and not args.out.endswith(".png"):
        raise UserError(f"--out must end in .png, got {args.out}")
    for flag, value in (("-n", args.num), ("--eval-n", args.eval_n), ("--batch-size", args.batch_size)):
        if value < 1:
            raise UserError(f"{flag} must be at least 1, got {value}")
    cfg, net = load_autoencoder(args.run, weights=args.weights)
    if cfg.data.name == "shapes":
        from kuosan.data import load_dataset
        from kuosan.data.shapes import SHAPES_EVAL_SEEDS

        if args.split not in SHAPES_EVAL_SEEDS:
            raise UserError(f"--split {args.split!r}: shapes has {', '.join(SHAPES_EVAL_SEEDS)}")
        x = load_dataset("shapes", n=args.eval_n, seed=SHAPES_EVAL_SEEDS[args.split])
    elif cfg.data.name == "digits":
        x = build_data(cfg, split=args.split)
    else:
        raise UserError(f"no evaluation split for data.name={cfg.data.name!r} (shapes or digits)")
    with torch.inference_mode():
        report = reconstruction_report(net, x, batch_size=args.batch_size, sample=args.sample, seed=args.seed)
        result = {"run": str(args.run), "split": args.split, "weights": args.weights, "sample": args.sample, **report}
        if args.out:
            save_samples_png(reconstruction_pairs(net, x[: args.num], nrow=8), args.out, nrow=8)
            result["out"] = args.out
    print(json.dumps(result))
    return 0


def _add_generation_options(p, *, prompt_help: str) -> None:
    from kuosan.samplers import SAMPLERS

    p.add_argument("prompt", help=prompt_help)
    p.add_argument("-n", "--num", type=int, default=1, help="images per prompt")
    p.add_argument("--guidance", type=float, default=3.0, help="classifier-free guidance scale (1: no guidance)")
    p.add_argument("--negative", default="", help="negative prompt (the unconditional half of guidance)")
    p.add_argument("--steps", type=int, help="sampler steps (default: the run's)")
    p.add_argument("--sampler", help=f"one of: {', '.join(SAMPLERS)} (default: the run's)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--weights", choices=["ema", "model"], default="ema")
    p.add_argument("--out", required=True, help="FILE.png (grid) or FILE.npy (array (N, C, H, W) in [-1, 1])")


def _add_text_to_image(sub):
    p = sub.add_parser("txt2img", help="images from a text prompt (a text-conditional run)")
    p.add_argument("run", help="run directory of a text-conditional model")
    _add_generation_options(p, prompt_help='the prompt, e.g. "a red circle in the top left"')
    p = sub.add_parser("img2img", help="re-draw an image after a prompt (SDEdit, diffusers' strength)")
    p.add_argument("run", help="run directory of a text-conditional model")
    p.add_argument("image", help="input image (PNG/JPEG) of the run's image size")
    _add_generation_options(p, prompt_help="the prompt")
    p.add_argument("--strength", type=float, default=0.6, help="0: the input's reconstruction; 1: ignore the input")
    p = sub.add_parser("inpaint", help="repaint the white part of a mask after a prompt")
    p.add_argument("run", help="run directory of a text-conditional model")
    p.add_argument("image", help="input image (PNG/JPEG) of the run's image size")
    p.add_argument("mask", help="mask image of the same size: white = repaint, black = keep")
    _add_generation_options(p, prompt_help="the prompt for the repainted region")
    p.add_argument("--method", default="auto", choices=["auto", "concat", "replace"],
                   help="concat: a model trained to inpaint; replace: any model (known region replaced each step)")


def _read_image(path: str, *, mask: bool = False):
    """An image file as a (1, 3, H, W) tensor in [-1, 1], or a mask as (1, 1, H, W) in {0, 1} (white = 1)."""
    import numpy as np
    import torch
    from PIL import Image, UnidentifiedImageError

    p = Path(path)
    if not p.is_file():
        raise UserError(f"{'mask' if mask else 'image'} file not found: {p}")
    try:
        with Image.open(p) as img:
            arr = np.asarray(img.convert("L" if mask else "RGB"), dtype=np.float32)
    except (UnidentifiedImageError, OSError, ValueError) as e:
        raise UserError(f"cannot read {p} as an image: {e}") from None
    if mask:
        return torch.from_numpy(arr > 127.5).float()[None, None]
    return torch.from_numpy(arr / 127.5 - 1).permute(2, 0, 1)[None]


def cmd_text_to_image(args) -> int:
    import numpy as np
    import torch

    from kuosan.imaging import save_samples_png
    from kuosan.pipelines import TextToImagePipeline

    out = Path(args.out)
    if out.suffix not in (".npy", ".png"):
        raise UserError(f"--out must end in .npy or .png, got {out.name}")
    if args.num < 1:
        raise UserError(f"-n must be at least 1, got {args.num}")
    if args.steps is not None and args.steps < 1:
        raise UserError(f"--steps must be at least 1, got {args.steps}")
    strength = getattr(args, "strength", None)
    if strength is not None and not 0 <= strength <= 1:
        raise UserError(f"--strength must be in [0, 1], got {strength}")
    image = _read_image(args.image) if args.command in ("img2img", "inpaint") else None
    mask = _read_image(args.mask, mask=True) if args.command == "inpaint" else None
    if mask is not None and mask.shape[-2:] != image.shape[-2:]:
        raise UserError(f"the mask is {mask.shape[-1]}x{mask.shape[-2]} but the image {image.shape[-1]}x{image.shape[-2]}")
    _quiet_transformers()
    pipe = TextToImagePipeline.from_run(args.run, weights=args.weights)
    prompts = [args.prompt] * args.num
    common = dict(guidance=args.guidance, negative=args.negative or None, steps=args.steps, sampler=args.sampler,
                  generator=torch.Generator().manual_seed(args.seed))
    try:
        if args.command == "txt2img":
            x = pipe.txt2img(prompts, **common)
        elif args.command == "img2img":
            x = pipe.img2img(image, prompts, strength=strength, **common)
        else:
            x = pipe.inpaint(image, mask, prompts, method=args.method, **common)
    except ValueError as e:
        raise UserError(str(e).splitlines()[0]) from None
    out.parent.mkdir(parents=True, exist_ok=True)
    if out.suffix == ".npy":
        np.save(out, x.numpy())
    else:
        save_samples_png(x, out)
    print(json.dumps({"out": str(out), "shape": list(x.shape), "prompt": args.prompt}))
    return 0


def _quiet_transformers() -> None:
    """No progress bars from transformers' weight loading on the command line."""
    try:
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
    except ImportError:
        pass


def main(argv: list[str] | None = None) -> int:
    from kuosan.config import ConfigError
    from kuosan.data import DataError
    from kuosan.train import CheckpointError, TrainingDiverged

    parser = argparse.ArgumentParser(prog="kuosan", description="Diffusion models from first principles.")
    parser.add_argument("-v", "--verbose", action="store_true")
    sub = parser.add_subparsers(dest="command", required=True)
    _add_train(sub)
    _add_sample(sub)
    p = sub.add_parser("info", help="describe a trained run")
    p.add_argument("run")
    _add_eval(sub)
    _add_nll(sub)
    _add_reconstruct(sub)
    _add_text_to_image(sub)
    argv = list(sys.argv[1:] if argv is None else argv)
    overrides = [a for a in argv if OVERRIDE.match(a)]
    args = parser.parse_args([a for a in argv if not OVERRIDE.match(a)])
    args.overrides = overrides
    if overrides and args.command != "train":
        parser.error(f"config overrides ({overrides[0]}) are only for `kuosan train`")
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(message)s")
    commands = {"train": cmd_train, "sample": cmd_sample, "info": cmd_info, "eval": cmd_eval, "nll": cmd_nll,
                "reconstruct": cmd_reconstruct, "txt2img": cmd_text_to_image, "img2img": cmd_text_to_image,
                "inpaint": cmd_text_to_image}
    try:
        return commands[args.command](args)
    except (UserError, ConfigError, DataError, CheckpointError) as e:
        print(f"kuosan {args.command}: error: {e}", file=sys.stderr)
        return EXIT_USAGE
    except TrainingDiverged as e:
        print(f"kuosan {args.command}: error: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
