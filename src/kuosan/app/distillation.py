"""Score distillation sampling of images (``kuosan sds``): images optimised through a frozen
text-conditional model, g = identity (:mod:`kuosan.distill.sds` has the mathematics)."""

from __future__ import annotations

import math
from pathlib import Path

import torch

from kuosan import devices
from kuosan.build import encode_posterior
from kuosan.config import ConfigError
from kuosan.distill.sds import T_SCHEDULES, WEIGHTINGS, ScoreDistillation, kl_form_step
from kuosan.interop import diffusers as hf
from kuosan.pipelines import TextToImagePipeline


def load_text_pipeline(run_dir: str | Path, device: str | None = None) -> TextToImagePipeline:
    """The text-to-image pipeline of a kuosan text run or a Stable Diffusion folder (``diffusers:DIR``);
    ConfigError (one line) for a model without text conditioning, which score distillation needs."""
    try:
        if hf.is_diffusers_spec(run_dir):
            pipe = TextToImagePipeline.from_diffusers(run_dir, device=device or "auto")
        else:
            pipe = TextToImagePipeline.from_run(run_dir, device=device)
    except hf.DiffusersError as e:
        raise ConfigError(str(e).splitlines()[0]) from None
    if pipe.text_encoder is None:
        raise ConfigError(f"{run_dir} has no text conditioning: score distillation needs a text-conditional model")
    for module in (pipe.autoencoder, getattr(pipe.denoiser, "net", None), pipe.text_encoder):
        if isinstance(module, torch.nn.Module):
            module.requires_grad_(False)  # a frozen critic: gradients flow through it, not into it
    return pipe


def check_prompt_length(pipe: TextToImagePipeline, prompts: list[str]) -> None:
    """ConfigError for a prompt with more tokens than the text encoder takes (it would be cut)."""
    enc = pipe.text_encoder
    tokenizer, most = getattr(enc, "tokenizer", None), getattr(enc, "max_length", None)
    if tokenizer is None or most is None:
        return
    for prompt in prompts:
        count = len(tokenizer(prompt, verbose=False)["input_ids"])
        if count > most:
            raise ConfigError(
                f"the prompt {prompt[:40] + '...' if len(prompt) > 40 else prompt!r} has {count} tokens; "
                f"this model's text encoder takes at most {most}"
            )


def model_input(pipe: TextToImagePipeline, x: torch.Tensor) -> torch.Tensor:
    """What the denoiser works on for images x in [-1, 1], differentiably: the latent s (E(x) - shift)
    of a latent model (E the posterior's mean; a plain autoencoder's z), x itself in pixel space."""
    if pipe.autoencoder is None:
        return x
    return pipe.scale_latents(encode_posterior(pipe.autoencoder, x)[0])


def score_distillation(
    run_dir: str | Path,
    prompt: str,
    *,
    n: int = 1,
    steps: int = 200,
    lr: float = 0.05,
    guidance: float = 7.5,
    negative: str | None = None,
    t_min: float = 0.02,
    t_max: float = 0.98,
    weighting: str = "1-abar",
    t_schedule: str = "random",
    t_max_end: float = 0.5,
    seed: int = 0,
    device: str | None = None,
    through_encoder: bool = False,
    progress: bool = False,
) -> tuple[torch.Tensor, dict]:
    """(images (n, C, H, W) in [-1, 1] on the CPU, report): ``n`` images, each started from grey plus
    a little noise, optimised with Adam for ``steps`` steps on the SDS gradient of the run's model
    for ``prompt`` with classifier-free guidance ``guidance`` (against ``negative``, default the empty
    prompt). For a latent model the latent is optimised and decoded at the end (g = identity in
    latent space); with ``through_encoder`` the pixels are, through the frozen VAE encoder (the path
    a rendered image takes in DreamFusion; on kuosan's shapes VAE it finds noise the encoder reads as
    the prompt: docs/score_distillation.md). ``run_dir`` is a kuosan text
    run or a Stable Diffusion folder (``diffusers:DIR``). The report has the final mean squared
    residual ||eps_hat - eps||^2 and the weighted KL form's change along the run (its line integral
    of the SDS gradient, :func:`kuosan.distill.sds.kl_form_change`)."""
    for name, value in (("n", n), ("steps", steps)):
        if value < 1:
            raise ConfigError(f"{name} must be at least 1, got {value}")
    if not (math.isfinite(lr) and lr > 0):
        raise ConfigError(f"the learning rate must be a positive number, got {lr}")
    if not math.isfinite(guidance):
        raise ConfigError(f"guidance must be a finite number, got {guidance}")
    if weighting not in WEIGHTINGS or t_schedule not in T_SCHEDULES:
        raise ConfigError(
            f"weighting is one of {', '.join(WEIGHTINGS)} and t schedule one of {', '.join(T_SCHEDULES)}; "
            f"got {weighting!r}, {t_schedule!r}"
        )
    pipe = load_text_pipeline(run_dir, device)
    check_prompt_length(pipe, [prompt, negative or ""])
    try:
        sds = ScoreDistillation(
            None, pipe.schedule, t_min=t_min, t_max=t_max, weighting=weighting, t_schedule=t_schedule,
            t_max_end=t_max_end,
        )  # fmt: skip
        cond, uncond = pipe._encode([prompt] * n, negative or None)
    except ValueError as e:
        raise ConfigError(str(e).splitlines()[0]) from None
    # the pipeline's guided denoiser: CFG, x0 clamping for a pixel model, an inpainting model's
    # "repaint everything" inputs
    sds.denoiser = pipe._guided(uncond, guidance, False, pipe.latent_shape)
    where = pipe.device
    g = torch.Generator().manual_seed(seed)
    in_latents = pipe.autoencoder is not None and not through_encoder
    shape = (n, *(pipe.latent_shape if in_latents else pipe.image_shape()))
    scale = 0.1 if in_latents else 0.05
    image = (scale * devices.randn(shape, generator=g, device=where)).requires_grad_(True)
    opt = torch.optim.Adam([image], lr=lr)

    def latent(x: torch.Tensor) -> torch.Tensor:
        return x if in_latents else model_input(pipe, x)

    from tqdm import tqdm

    kl, kl_half, residual = 0.0, None, float("nan")
    with devices.autocast(where, pipe.precision):
        for i in tqdm(range(steps), desc="sds", disable=None if progress else True, leave=False):
            opt.zero_grad()
            z = latent(image)
            loss, info = sds.step(z, i, steps, g, **cond)
            loss.backward()
            before = image.detach().clone()
            opt.step()
            if not in_latents:  # pixels stay in the image range
                with torch.no_grad():
                    image.clamp_(-1, 1)
            kl += kl_form_step(image.grad, before, image.detach())  # the line integral, step by step
            if i == steps // 2 - 1:
                kl_half = kl
            residual = float(info["residual_sq"].mean())
            if not math.isfinite(residual):
                raise ConfigError(f"the SDS residual became {residual} at step {i}; try a smaller learning rate")
    report = {
        "prompt": prompt,
        "n": n,
        "steps": steps,
        "guidance": guidance,
        "residual_sq": residual,
        "kl_form_change": kl,
        "kl_form_change_half": kl if kl_half is None else kl_half,
    }
    report["optimised"] = "latents" if in_latents else "pixels"
    out = pipe.decode(image.detach()) if in_latents else image.detach().float().cpu()
    return out, report
