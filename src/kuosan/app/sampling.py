"""Sampling from a trained run, and a run's description, as the CLI and the Python API run them."""

from __future__ import annotations

import inspect
import math
import os
from pathlib import Path

import torch

from kuosan import devices
from kuosan.build import prior_for, validate_sampling
from kuosan.config import ConfigError
from kuosan.diffusion.guidance import CFGDenoiser, ClampDenoiser
from kuosan.diffusion.schedules import GRIDS
from kuosan.interop import diffusers as hf
from kuosan.runs import Run
from kuosan.samplers import SAMPLERS
from kuosan.samplers.loop import generate, sample_batches

# a diffusers folder samples as diffusers' DDIMPipeline does unless told otherwise
DIFFUSERS_DEFAULTS = {"sampler": "ddim", "steps": 50, "grid": "scheduler"}

# the keywords every sampler takes, which sample() passes itself
_COMMON = {"denoiser", "x", "sigmas", "generator", "callback", "extra_args"}


def sampler_options(name: str) -> list[str]:
    """The keyword options sampler ``name`` takes beyond the common ones (eta, langevin_steps, ...)."""
    return [p for p in inspect.signature(SAMPLERS[name]).parameters if p not in _COMMON]


def refuse_autoencoder(run: Run) -> None:
    """ConfigError (one line) when ``run`` is a first-stage autoencoder run: it reconstructs, it does
    not generate, and it has no likelihood."""
    if run.is_autoencoder:
        raise ConfigError(
            f"{run.path} is an autoencoder run (model.network={run.config.model.network}): it reconstructs, it "
            f"does not generate; use `kuosan reconstruct {run.path}`, or train a latent diffusion model on it"
        )


def sample(
    run_dir: str | Path,
    n: int,
    *,
    sampler: str | None = None,
    steps: int | None = None,
    grid: str | None = None,
    clip: bool | None = None,
    seed: int = 0,
    weights: str = "ema",
    batch_size: int = 1000,
    device: str | None = None,
    precision: str | None = None,
    class_label: int | str | None = None,
    guidance: float | None = None,
    callback=None,
    **sampler_options_,
) -> torch.Tensor:
    """n samples (n, ...) from the unconditional or class-conditional run in ``run_dir``, images
    clamped to [-1, 1], as a CPU tensor. Unset ``sampler``, ``steps``, ``grid``, ``clip``,
    ``device`` (auto: a GPU if there is one) and ``precision`` (the network's autocast: fp32, bf16,
    fp16) take the run's ``sample`` config; the remaining keywords are the sampler's own options
    (``sampler_options``). ConfigError or DeviceError naming the impossible choice. A seed gives
    the same samples on every device up to floating-point error: the noise is drawn on the CPU.

    ``run_dir`` may name a diffusers model folder, ``diffusers:DIR`` (an unconditional UNet2DModel
    with its scheduler): then the defaults are diffusers' DDIMPipeline's (DDIM, 50 steps on the
    scheduler's own timesteps, grid "scheduler"; x0 clipped as its ``clip_sample`` says), and every
    kuosan sampler and grid works on it.

    A class-conditional run (``label.classes`` K) samples ``class_label`` (an index in [0, K), or
    "all": classes 0, 1, ..., K-1 in turn, the default) with classifier-free guidance ``guidance``
    against the null label (default the run's ``label.guidance``).

    ``callback`` (if given) is called at every network evaluation of the sampler with the dict
    {"i", "x", "sigma", "sigma_next", "x0_hat"} (the sampler's state in the Denoiser's VE scaling),
    batch after batch: what the trajectory pictures and the web app's progress read."""
    if n < 1:
        raise ConfigError(f"the number of samples must be at least 1, got {n}")
    if batch_size < 1:
        raise ConfigError(f"the batch size must be at least 1, got {batch_size}")
    if hf.is_diffusers_spec(run_dir):
        if class_label is not None or guidance is not None:
            raise ConfigError("--class and --guidance are for kuosan's class-conditional runs, not diffusers:DIR")
        return _sample_diffusers(
            run_dir,
            n,
            sampler=sampler,
            steps=steps,
            grid=grid,
            clip=clip,
            seed=seed,
            batch_size=batch_size,
            device=device,
            precision=precision,
            callback=callback,
            **sampler_options_,
        )
    run = Run.open(run_dir, weights=weights)
    refuse_autoencoder(run)
    cfg = run.config
    if run.is_conditional:
        raise ConfigError(
            f"{run_dir} is a text-conditional or latent diffusion run: use kuosan txt2img (or "
            "kuosan.pipelines.TextToImagePipeline)"
        )
    for key, val in (
        ("sampler", sampler),
        ("steps", steps),
        ("grid", grid),
        ("clip", clip),
        ("device", device),
        ("precision", precision),
    ):
        if val is not None:
            setattr(cfg.sample, key, val)
    validate_sampling(cfg, prefix="")
    where = devices.resolve_device(cfg.sample.device)
    precision = devices.resolve_precision(where, cfg.sample.precision)
    unknown = sorted(set(sampler_options_) - set(sampler_options(cfg.sample.sampler)))
    if unknown:
        takes = ", ".join(sampler_options(cfg.sample.sampler)) or "no options"
        raise ConfigError(f"sampler {cfg.sample.sampler} does not take {', '.join(unknown)} (it takes: {takes})")
    check_output_memory(n, run.network.data_shape)
    den, extra = _class_guidance(run, n, class_label, guidance, where, run_dir)
    g = torch.Generator().manual_seed(seed)
    run.network.to(where)
    with devices.autocast(where, precision):
        x = generate(
            den,
            run.schedule,
            run.network.data_shape,
            n,
            sampler=cfg.sample.sampler,
            steps=cfg.sample.steps,
            grid=cfg.sample.grid,
            generator=g,
            batch_size=batch_size,
            prior=prior_for(cfg),
            device=where,
            extra_args=extra,
            callback=callback,
            **sampler_options_,
        )
    require_finite(x, f"the samples of {run_dir}")
    return (x.clamp(-1, 1) if x.ndim == 4 else x).float()  # images live in [-1, 1]; 2-D toy data do not


def class_labels(class_label: int | str | None, n: int, classes: int, names=()) -> torch.Tensor:
    """(n,) labels of a request: one class (its index, or its name among ``names``) for all, or
    "all" / None: 0, 1, ..., K-1 in turn."""
    if class_label is None or str(class_label) == "all":
        return torch.arange(n) % classes
    names = [str(x) for x in names]
    if str(class_label) in names:
        return torch.full((n,), names.index(str(class_label)))
    try:
        k = int(class_label)
    except ValueError:
        known = f"; the classes are {', '.join(names)}" if names else ""
        raise ConfigError(f"--class must be a class index, a class name or all, got {class_label!r}{known}") from None
    if not 0 <= k < classes:
        raise ConfigError(f"--class {k} is not a class of this run (it has classes 0..{classes - 1})")
    return torch.full((n,), k)


def _class_guidance(run, n, class_label, guidance, where, run_dir):
    """(denoiser, extra_args) of a sampling request: the run's own Denoiser, or for a class run the
    classifier-free guided one with the requested labels."""
    classes = run.config.label.classes
    if not classes:
        if class_label is not None or guidance is not None:
            raise ConfigError(
                f"{run_dir} is not class-conditional: --class and --guidance need a run with label.classes"
            )
        return run.denoiser(), None
    scale = run.config.label.guidance if guidance is None else float(guidance)
    if not math.isfinite(scale):
        raise ConfigError(f"guidance must be a finite number, got {scale}")
    # guidance on the model's own predictions, the clamp (if any) on the guided one, as the pipelines do
    den = CFGDenoiser(run.denoiser(clip=False), {"class_labels": torch.tensor([classes], device=where)}, scale)
    if run.config.sample.clip:
        den = ClampDenoiser(den)
    labels = class_labels(class_label, n, classes, run.config.label.names)
    return den, {"class_labels": labels.to(where)}


def _sample_diffusers(
    spec: str,
    n: int,
    *,
    sampler,
    steps,
    grid,
    clip,
    seed,
    batch_size,
    device,
    precision,
    callback=None,
    **options,
) -> torch.Tensor:
    """``sample`` for a diffusers folder (see there)."""
    sampler = sampler or DIFFUSERS_DEFAULTS["sampler"]
    steps = steps or DIFFUSERS_DEFAULTS["steps"]
    grid = grid or DIFFUSERS_DEFAULTS["grid"]
    if sampler not in SAMPLERS:
        raise ConfigError(f"sampler={sampler!r} is not one of {', '.join(SAMPLERS)}")
    if grid not in (*GRIDS, "scheduler"):
        raise ConfigError(f"grid={grid!r} is not one of {', '.join(GRIDS)}, scheduler")
    if steps < 1:
        raise ConfigError(f"steps must be at least 1, got {steps}")
    unknown = sorted(set(options) - set(sampler_options(sampler)))
    if unknown:
        raise ConfigError(f"sampler {sampler} does not take {', '.join(unknown)}")
    try:
        model = hf.load_model(spec)
        if model.network.conditional:
            raise ConfigError(f"{model.path} holds a text-conditional U-Net: use kuosan txt2img")
        where = devices.resolve_device(device or "auto")
        precision = devices.resolve_precision(where, precision or "fp32")
        g = hf.sampling_grid(model.schedule, model.scheduler, steps, grid, sampler)
        sigmas, final_sigma = g.sigmas, g.final_sigma
    except (hf.DiffusersError, ValueError) as e:
        raise ConfigError(str(e).splitlines()[0]) from None
    check_output_memory(n, model.data_shape)
    den = model.denoiser(clip=clip)
    if final_sigma > 0:
        den = hf.HoldAtDenoiser(den, final_sigma)
    model.network.to(where)
    with devices.autocast(where, precision):
        x = sample_batches(
            den,
            sigmas,
            model.data_shape,
            n,
            sampler=sampler,
            generator=torch.Generator().manual_seed(seed),
            batch_size=batch_size,
            device=where,
            callback=callback,
            **options,
        )
    x = hf.vp_output(x.float(), final_sigma)
    require_finite(x, f"the samples of {spec}")
    return x.clamp(-1, 1)


def require_finite(x: torch.Tensor, what: str) -> None:
    """ConfigError (one line) when ``x`` holds NaN or infinity: nothing non-finite is ever written."""
    bad = int((~torch.isfinite(x)).sum())
    if bad:
        raise ConfigError(f"{what} are not finite ({bad} NaN or infinite values); nothing was written")


def check_output_memory(n: int, shape: tuple[int, ...], *, copies: int = 3) -> None:
    """ConfigError (one line) when n samples of ``shape`` (float32, with the ``copies`` a run holds at
    once: the batches, their concatenation, the file's array) would not fit in this machine's memory."""
    need = n * math.prod(shape) * 4 * copies
    try:
        total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return
    if need > total:
        raise ConfigError(
            f"{n:,} samples of shape {tuple(shape)} would need {need / 2**30:.1f} GiB of memory; "
            f"this machine has {total / 2**30:.1f} GiB (draw them in several runs with other seeds)"
        )


def run_info(run_dir: str | Path) -> dict:
    """What a run is: step, training time, last loss, data shape, parameter count, config (and an
    autoencoder's latent shape). For a diffusers folder: its U-Net class, parameters, data shape,
    prediction and scheduler config."""
    if hf.is_diffusers_spec(run_dir):
        try:
            model = hf.load_model(run_dir)
        except hf.DiffusersError as e:
            raise ConfigError(str(e)) from None
        return {
            "model": str(model.path),
            "unet": model.network.unet.__class__.__name__,
            "parameters": sum(p.numel() for p in model.network.parameters()),
            "data_shape": list(model.data_shape),
            "prediction": model.prediction,
            "clip_sample": model.clip,
            "scheduler": model.scheduler,
        }
    run = Run.open(run_dir)
    state = run.state
    info = {
        "run": str(run_dir),
        "step": state["step"],
        "train_seconds": round(state["train_seconds"], 1),
        "last_loss": state.get("last_loss"),
        "data_shape": state["data_shape"],
        "parameters": sum(p.numel() for p in run.network.parameters()),
        "config": run.config.to_dict(),
    }
    if hasattr(run.network, "latent_shape"):  # a first-stage autoencoder
        info["latent_shape"] = list(run.network.latent_shape(state["data_shape"]))
    return info
