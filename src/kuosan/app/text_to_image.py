"""Text-to-image, image-to-image and inpainting from a trained text-conditional (latent) run, as the
CLI and the Python API run them (:class:`kuosan.pipelines.TextToImagePipeline` does the work)."""

from __future__ import annotations

import math
from pathlib import Path

import torch

from kuosan.app.sampling import require_finite
from kuosan.config import ConfigError
from kuosan.imaging import read_image
from kuosan.interop import diffusers as hf
from kuosan.pipelines import INPAINT_METHODS, TextToImagePipeline
from kuosan.train.checkpoint import read_config

TASKS = ("txt2img", "img2img", "inpaint")


def load_pipeline(
    run_dir: str | Path, weights: str = "ema", device: str | None = None, precision: str | None = None
) -> TextToImagePipeline:
    """The pipeline of a text-conditional run or a Stable Diffusion folder (``diffusers:DIR``);
    ConfigError (one line) for a folder diffusers cannot load."""
    try:
        if hf.is_diffusers_spec(run_dir):
            return TextToImagePipeline.from_diffusers(run_dir, device=device or "auto", precision=precision or "fp32")
        saved = read_config(run_dir) if Path(run_dir).is_dir() else {}
        if saved and not saved.get("text", {}).get("encoder") and not saved.get("latent", {}).get("autoencoder"):
            raise ConfigError(
                f"{run_dir} is not a text-conditional run (it has no text.encoder), so it takes no prompt: "
                f"draw its samples with kuosan sample {run_dir}"
            )
        return TextToImagePipeline.from_run(run_dir, weights=weights, device=device, precision=precision)
    except hf.DiffusersError as e:
        raise ConfigError(str(e).splitlines()[0]) from None


def text_to_image(
    run_dir: str | Path | TextToImagePipeline,
    prompt: str,
    *,
    task: str = "txt2img",
    n: int = 1,
    image=None,
    mask=None,
    strength: float | None = None,
    method: str = "auto",
    guidance: float | None = None,
    negative: str | None = None,
    steps: int | None = None,
    sampler: str | None = None,
    grid: str | None = None,
    height: int | None = None,
    width: int | None = None,
    seed: int = 0,
    weights: str = "ema",
    device: str | None = None,
    precision: str | None = None,
    callback=None,
) -> torch.Tensor:
    """``n`` images (n, C, H, W) in [-1, 1] for ``prompt``: ``task`` txt2img, img2img (``image`` redrawn
    with ``strength``) or inpaint (``image`` repainted where ``mask`` is white, by ``method``). ``image``
    and ``mask`` are file paths or tensors ((1, 3, H, W) in [-1, 1]; (1, 1, H, W) in {0, 1}).
    ``device`` and ``precision`` (the denoiser's autocast) default to the run's ``sample`` config; the
    images come back on the CPU, the same for a seed on every device up to floating-point error.
    ``run_dir`` may be a Stable Diffusion folder, ``diffusers:DIR``: then unset options take
    diffusers' defaults (DDIM, 50 steps on the scheduler's timesteps, guidance 7.5) and ``height`` /
    ``width`` choose the size of a txt2img image (multiples of 8). ConfigError or DeviceError (one
    line) for an impossible request. ``run_dir`` may be a pipeline already loaded
    (:func:`load_pipeline`; then ``weights``, ``device`` and ``precision`` are its own). ``callback``
    sees every step of the sampler (``kuosan.app.sample`` says what), in latent space for a latent
    model."""
    if guidance is not None and not math.isfinite(guidance):
        raise ConfigError(f"guidance must be a finite number, got {guidance}")
    if task not in TASKS:
        raise ConfigError(f"task {task!r} is not one of {', '.join(TASKS)}")
    if n < 1:
        raise ConfigError(f"the number of images must be at least 1, got {n}")
    if steps is not None and steps < 1:
        raise ConfigError(f"steps must be at least 1, got {steps}")
    strength = (0.6 if task == "img2img" else 1.0) if strength is None else strength
    if task == "img2img" and not 0 <= strength <= 1:
        raise ConfigError(f"strength must be in [0, 1], got {strength}")
    if task == "inpaint" and not 0 < strength <= 1:
        raise ConfigError(f"inpainting strength must be in (0, 1], got {strength}")
    if task == "inpaint" and method not in INPAINT_METHODS:
        raise ConfigError(f"method {method!r} is not one of {', '.join(INPAINT_METHODS)}")
    if task != "txt2img":
        if image is None:
            raise ConfigError(f"{task} needs an image")
        image = read_image(image) if not isinstance(image, torch.Tensor) else image
    if task == "inpaint":
        if mask is None:
            raise ConfigError("inpaint needs a mask")
        mask = read_image(mask, mask=True) if not isinstance(mask, torch.Tensor) else mask
        if mask.shape[-2:] != image.shape[-2:]:
            raise ConfigError(
                f"the mask is {mask.shape[-1]}x{mask.shape[-2]} but the image {image.shape[-1]}x{image.shape[-2]}"
            )
    if task != "txt2img" and (height or width):
        raise ConfigError(f"{task} makes images of its input's size: give no --height/--width")
    pipe = run_dir if isinstance(run_dir, TextToImagePipeline) else load_pipeline(run_dir, weights, device, precision)
    prompts = [prompt] * n
    common = dict(
        guidance=guidance,
        negative=negative or None,
        steps=steps,
        sampler=sampler,
        grid=grid,
        generator=torch.Generator().manual_seed(seed),
        callback=callback,
    )
    try:
        if task == "txt2img":
            x = pipe.txt2img(prompts, height=height, width=width, **common)
        elif task == "img2img":
            x = pipe.img2img(image, prompts, strength=strength, **common)
        else:
            x = pipe.inpaint(image, mask, prompts, method=method, strength=strength, **common)
    except ValueError as e:
        raise ConfigError(str(e).splitlines()[0]) from None
    require_finite(x, f"the images of {run_dir}")
    return x
