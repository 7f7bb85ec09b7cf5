"""Text-to-image, image-to-image and inpainting with a trained text-conditional (latent) diffusion run.

Stable Diffusion's pipelines (Rombach et al. 2022) on kuosan's contracts: prompts are encoded by the
run's frozen text encoder, the network becomes a Denoiser (``build.build_denoiser``), classifier-free
guidance and inpainting are Denoiser wrappers (``diffusion/guidance.py``), any sampler of the registry
integrates, and a latent run's autoencoder decodes the result.

Notation: images are (N, 3, H, W) in [-1, 1]; z = s * E(x) are latents with the run's scale factor s
(for a pixel-space run z = x); ``sigmas`` is the sampler's decreasing grid in VE scaling (x = x0 +
sigma * eps); ``mask`` is 1 where the picture is to be (re)generated (white in a mask PNG).

Devices: the network, the text encoder and the autoencoder live on the pipeline's ``device``; every
random draw is made on the caller's CPU generator and moved (:func:`kuosan.devices.randn`), so a seed
gives the same images on every device up to floating-point error; results come back on the CPU.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from kuosan import devices
from kuosan.build import build_denoiser, build_schedule, encode_posterior
from kuosan.diffusion.guidance import (
    CFGDenoiser,
    ClampDenoiser,
    ConcatInpaintDenoiser,
    PerpNegDenoiser,
    ReplaceInpaintDenoiser,
    broadcast_batch,
)
from kuosan.runs import Run
from kuosan.samplers.loop import prior_noise, sample_batches

DEFAULT_GUIDANCE = 3.0
INPAINT_METHODS = ("auto", "concat", "replace")


def img2img_start_index(steps: int, strength: float) -> int:
    """diffusers' img2img strength: of a ``steps``-step grid, the last int(steps * strength) steps are
    run, i.e. sampling starts at grid index steps - int(steps * strength) (strength 0: no step, the
    input's reconstruction; strength 1: the whole grid)."""
    if not 0 <= strength <= 1:
        raise ValueError(f"strength must be in [0, 1], got {strength}")
    return steps - min(int(steps * strength), steps)


def downsample_mask(mask: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """A pixel mask (N, 1, H, W) on the latent grid (h, w): each latent cell covers an (H/h) x (W/w)
    tile and is repainted if any pixel of its tile is (max-pooling, so the hole never shrinks)."""
    h, w = size
    if mask.shape[-2] % h or mask.shape[-1] % w:
        raise ValueError(f"a {mask.shape[-2]}x{mask.shape[-1]} mask does not tile a {h}x{w} latent grid")
    return F.max_pool2d(mask.float(), (mask.shape[-2] // h, mask.shape[-1] // w))


class TextToImagePipeline:
    """A denoiser with its schedule, text encoder and autoencoder, ready to generate.

    ``TextToImagePipeline.from_run(run_dir)`` loads a kuosan run, ``from_diffusers(folder)`` a Stable
    Diffusion folder (:mod:`kuosan.interop.diffusers`); the methods take prompts (one image per
    prompt) and return images (N, C, H, W) in [-1, 1] on the CPU. Unset ``steps``, ``sampler``,
    ``grid`` and ``guidance`` take the pipeline's ``defaults`` (a run's ``sample`` config; for a
    diffusers model, diffusers' own: DDIM, 50 steps on the scheduler's timesteps, guidance 7.5).
    ``device`` (auto: a GPU if there is one) is where the networks run, moved there on construction;
    ``precision`` is the denoising network's autocast (the decoder and the text encoder run as loaded).

    The parts: ``denoiser`` D(z, sigma, **cond) on the latents; ``schedule`` (its noise levels);
    ``latent_shape`` (C, h, w) of the latents the model was made for; ``text_encoder`` with
    ``encode(prompts) -> {key: (N, ...)}`` (the network's conditioning keywords) or None;
    ``autoencoder`` (``encode(x) -> posterior``, ``decode(z)``, ``downsampling_factor``) or None for a
    pixel-space model; ``scale_factor`` and ``shift_factor``: z = s (E(x) - shift); ``clip``: x0_hat
    clamped to [-1, 1] (pixel space); ``inpaint_model``: the network takes mask + masked-latent inputs;
    ``scheduler``: a diffusers scheduler config, whose timesteps the grid "scheduler" reproduces;
    ``posterior``: images encode to the posterior's "mode" (kuosan) or a "sample" of it drawn from
    the generator (diffusers' img2img).
    """

    def __init__(
        self,
        denoiser,
        schedule,
        latent_shape: tuple[int, ...],
        *,
        text_encoder=None,
        autoencoder=None,
        scale_factor: float = 1.0,
        shift_factor: float | None = None,
        clip: bool = False,
        inpaint_model: bool = False,
        defaults: dict | None = None,
        scheduler: dict | None = None,
        posterior: str = "mode",
        device=None,
        precision: str = "fp32",
    ):
        self.device = devices.resolve_device(device)
        self.precision = devices.resolve_precision(self.device, precision)
        for module in (denoiser, text_encoder, autoencoder):
            if isinstance(module, torch.nn.Module):
                module.to(self.device)
        if posterior not in ("mode", "sample"):
            raise ValueError(f"posterior must be 'mode' or 'sample', got {posterior!r}")
        self.denoiser, self.schedule, self.latent_shape = denoiser, schedule, tuple(latent_shape)
        self.text_encoder, self.autoencoder = text_encoder, autoencoder
        self.scale_factor, self.shift_factor = float(scale_factor), shift_factor
        self.clip, self.inpaint_model, self.scheduler, self.posterior = clip, inpaint_model, scheduler, posterior
        self.defaults = {"sampler": "ddim", "steps": 20, "grid": "trailing", "guidance": DEFAULT_GUIDANCE}
        self.defaults.update(defaults or {})

    @classmethod
    def from_config(
        cls, cfg, net, *, text_encoder=None, autoencoder=None, device=None, precision=None
    ) -> TextToImagePipeline:
        """The pipeline of a kuosan config and its trained network (``net.data_shape`` set)."""
        return cls(
            build_denoiser(cfg, net, clip=False),
            build_schedule(cfg),
            tuple(net.data_shape),
            text_encoder=text_encoder,
            autoencoder=autoencoder,
            scale_factor=cfg.latent.scale_factor if autoencoder is not None else 1.0,
            clip=autoencoder is None and cfg.sample.clip,  # latents have no fixed range
            inpaint_model=bool(net.config.get("cond_channels")),
            defaults={"sampler": cfg.sample.sampler, "steps": cfg.sample.steps, "grid": cfg.sample.grid},
            device=cfg.sample.device if device is None else device,
            precision=precision or cfg.sample.precision,
        )

    @classmethod
    def from_run(cls, run_dir, *, weights: str = "ema", device=None, precision=None) -> TextToImagePipeline:
        run = Run.open(run_dir, weights=weights)
        return cls.from_config(
            run.config,
            run.network,
            text_encoder=run.text_encoder,
            autoencoder=run.autoencoder,
            device=device,
            precision=precision,
        )

    @classmethod
    def from_diffusers(cls, folder, *, device=None, precision: str = "fp32", dtype=None) -> TextToImagePipeline:
        """A Stable Diffusion folder (``diffusers:DIR`` or DIR: unet/, vae/, text_encoder/, tokenizer/,
        scheduler/) with diffusers' defaults; ``dtype`` of the U-Net's weights (default as saved)."""
        from kuosan.interop import diffusers as hf

        sd = hf.load_stable_diffusion(folder, dtype=dtype)
        return cls(
            sd.model.denoiser(clip=False),
            sd.model.schedule,
            sd.model.data_shape,
            text_encoder=sd.text_encoder,
            autoencoder=sd.vae,
            scale_factor=sd.scale_factor,
            shift_factor=sd.shift_factor,
            inpaint_model=sd.model.network.extra_channels > 0,
            defaults={"sampler": "ddim", "steps": 50, "grid": "scheduler", "guidance": 7.5},
            scheduler=sd.model.scheduler,
            posterior="sample",
            device=device,
            precision=precision,
        )

    # --- encoders -----------------------------------------------------------------------------------

    def encode_prompts(self, prompts: list[str]) -> dict[str, torch.Tensor]:
        """The network's text conditioning of the prompts ({} for a run without text)."""
        if self.text_encoder is None:
            if any(prompts):
                raise ValueError("this run was trained without text conditioning; give no prompt")
            return {}
        return {k: v.to(self.device) for k, v in self.text_encoder.encode(list(prompts)).items()}

    def image_shape(self, latent_shape: tuple[int, ...] | None = None) -> tuple[int, ...]:
        """The (C, H, W) of the images whose latents have ``latent_shape`` (default the model's)."""
        c, h, w = latent_shape or self.latent_shape
        if self.autoencoder is None:
            return (c, h, w)
        f = self.autoencoder.downsampling_factor
        return (self.autoencoder.config["in_channels"], h * f, w * f)

    def latent_shape_for(self, height: int | None, width: int | None) -> tuple[int, ...]:
        """The latent shape of images of ``height`` x ``width`` pixels (default: the model's own size);
        ValueError for a size the autoencoder's downsampling factor does not divide."""
        if height is None and width is None:
            return self.latent_shape
        _, H, W = self.image_shape()
        height, width = height or H, width or W
        if self.autoencoder is None:
            if (height, width) != (H, W):
                raise ValueError(f"this pixel-space model makes {W}x{H} images, not {width}x{height}")
            return self.latent_shape
        f = self.autoencoder.downsampling_factor
        if height % f or width % f or height < f or width < f:
            raise ValueError(
                f"height and width must be multiples of the autoencoder's factor {f}, got {width}x{height}"
            )
        return (self.latent_shape[0], height // f, width // f)

    @torch.inference_mode()
    def encode_images(self, images: torch.Tensor, *, generator: torch.Generator | None = None) -> torch.Tensor:
        """z0 of images, on the pipeline's device: s * (E(x) - shift) for a latent model, E(x) the
        posterior's mean (``posterior="mode"``) or a draw from it on ``generator`` ("sample"); the
        images themselves for a pixel-space model."""
        if images.ndim != 4:
            raise ValueError(f"images must have shape (N, C, H, W), got {tuple(images.shape)}")
        images = images.to(self.device)
        if self.autoencoder is None:
            if tuple(images.shape[1:]) != self.latent_shape:
                raise ValueError(
                    f"this run works on images of shape {self.latent_shape}, got {tuple(images.shape[1:])}"
                )
            return images.float()
        want = self.image_shape()
        if self.scheduler is None and tuple(images.shape[1:]) != want:  # a kuosan run: its trained size
            raise ValueError(f"this run works on images of shape {want}, got {tuple(images.shape[1:])}")
        self.latent_shape_for(images.shape[-2], images.shape[-1])  # a size the autoencoder divides
        if images.shape[1] != want[0]:
            raise ValueError(f"this model works on {want[0]}-channel images, got {images.shape[1]} channels")
        mean, std = encode_posterior(self.autoencoder, images.float())
        if self.posterior == "sample" and std is not None:
            mean = mean + std * devices.randn(mean.shape, generator=generator, device=mean.device, dtype=mean.dtype)
        return self.scale_latents(mean)

    def scale_latents(self, e: torch.Tensor) -> torch.Tensor:
        """z = s (E(x) - shift): the autoencoder's latent as the denoiser sees it."""
        return self.scale_factor * (e - self.shift_factor if self.shift_factor is not None else e)

    def unscale_latents(self, z: torch.Tensor) -> torch.Tensor:
        """E(x) = z / s + shift: what the autoencoder's decoder takes (the inverse of :meth:`scale_latents`)."""
        z = z / self.scale_factor
        return z + self.shift_factor if self.shift_factor is not None else z

    @torch.inference_mode()
    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """Images in [-1, 1] of z0 (the autoencoder's decoder applied to z / s + shift for a latent
        model), on the CPU."""
        if self.autoencoder is not None:
            z = self.autoencoder.decode(self.unscale_latents(z.to(self.device)))
        return z.float().clamp(-1, 1).cpu()

    # --- the shared sampling loop ---------------------------------------------------------------------

    def _grid(self, steps, grid, sampler=None) -> tuple[torch.Tensor, float, int]:
        """(sigmas, final level, number of steps) of a request: a kuosan grid (final level 0), or
        "scheduler", a diffusers model's own timesteps (:func:`kuosan.interop.diffusers.scheduler_grid`;
        DDIM's final level, DDPM's for the ddpm sampler)."""
        from kuosan.interop.diffusers import sampling_grid

        steps, grid = steps or self.defaults["steps"], grid or self.defaults["grid"]
        g = sampling_grid(self.schedule, self.scheduler, steps, grid, sampler or self.defaults["sampler"])
        return g.sigmas, g.final_sigma, steps

    def _guided(self, uncond: dict, guidance: float, inpainting: bool, latent_shape, *, negatives=(), weights=()):
        """The denoiser a request samples with: classifier-free guidance against ``uncond`` (Perp-Neg
        with the conditionings ``negatives`` at ``weights``, if given), x0 clamping for a pixel
        model, an inpainting model's inputs when it does plain text-to-image."""
        den = self.denoiser
        if negatives:
            den = PerpNegDenoiser(den, uncond, list(negatives), list(weights), guidance)
        elif uncond:
            den = CFGDenoiser(den, uncond, guidance)
        if self.clip:
            den = ClampDenoiser(den)
        if self.inpaint_model and not inpainting:  # an inpainting model doing txt2img:
            ones = torch.ones(1, 1, *latent_shape[1:], device=self.device)  # repaint all, nothing known
            den = ConcatInpaintDenoiser(den, ones, torch.zeros(1, *latent_shape, device=self.device))
        return den

    def _encode(self, prompts: list[str], negative) -> tuple[dict, dict]:
        """(cond, uncond) encodings of the prompts and of the negative prompts (default: the empty one)."""
        cond = self.encode_prompts(prompts)
        if not cond:
            return {}, {}
        negatives = [negative] * len(prompts) if negative is None or isinstance(negative, str) else list(negative)
        if len(negatives) != len(prompts):
            raise ValueError(f"{len(negatives)} negative prompts for {len(prompts)} prompts")
        return cond, self.encode_prompts([n or "" for n in negatives])

    @torch.inference_mode()
    def _run(
        self,
        n: int,
        cond: dict,
        uncond: dict,
        *,
        guidance,
        steps,
        sampler,
        grid,
        generator,
        batch_size: int,
        start=None,
        inpaint=None,
        latent_shape=None,
        callback=None,
    ) -> torch.Tensor:
        """Sample n latents with conditioning ``cond`` guided away from ``uncond`` (both batch n).
        ``start(i0, i1, sigmas, n_steps, generator) -> (x, sigmas)`` gives img2img's starting point
        and grid; ``inpaint(i0, i1, den, generator) -> den`` wraps the denoiser for inpainting;
        ``callback`` sees every step (the sampler's dict, latents in VE scaling).
        A grid whose final level is above 0 (a diffusers scheduler's) holds the sample there and
        returns it in VP scaling, as the scheduler does."""
        from kuosan.interop.diffusers import HoldAtDenoiser, vp_output

        guidance = self.defaults["guidance"] if guidance is None else guidance
        latent_shape = latent_shape or self.latent_shape
        sigmas, final_sigma, n_steps = self._grid(steps, grid, sampler)

        def wrap(i0, i1, generator):
            den = self._guided({k: v[i0:i1] for k, v in uncond.items()}, guidance, inpaint is not None, latent_shape)
            den = inpaint(i0, i1, den, generator) if inpaint is not None else den
            return HoldAtDenoiser(den, final_sigma) if final_sigma > 0 else den

        begin = None if start is None else (lambda i0, i1, sigmas, generator: start(i0, i1, sigmas, n_steps, generator))
        with devices.autocast(self.device, self.precision):
            z = sample_batches(
                self.denoiser,
                sigmas,
                latent_shape,
                n,
                sampler=sampler or self.defaults["sampler"],
                generator=generator,
                batch_size=batch_size,
                wrap=wrap,
                start=begin,
                extra_args=cond,
                device=self.device,
                **({"callback": callback} if callback is not None else {}),
            )
        return vp_output(z.float(), final_sigma)

    # --- the three tasks ------------------------------------------------------------------------------

    def txt2img(
        self,
        prompts: list[str],
        *,
        guidance: float | None = None,
        negative=None,
        steps=None,
        sampler=None,
        grid=None,
        generator: torch.Generator | None = None,
        batch_size: int = 100,
        return_latents: bool = False,
        callback=None,
        height: int | None = None,
        width: int | None = None,
    ) -> torch.Tensor:
        """One image per prompt: prior noise -> sampler with classifier-free guidance -> decoder;
        ``height`` x ``width`` pixels (default the model's size; a latent model takes any multiple of
        its autoencoder's factor)."""
        latent_shape = self.latent_shape_for(height, width)
        cond, uncond = self._encode(list(prompts), negative)
        z = self._run(
            len(prompts),
            cond,
            uncond,
            guidance=guidance,
            steps=steps,
            sampler=sampler,
            grid=grid,
            generator=generator,
            batch_size=batch_size,
            callback=callback,
            latent_shape=latent_shape,
        )
        return z if return_latents else self.decode(z)

    def img2img(
        self,
        images: torch.Tensor,
        prompts: list[str],
        *,
        strength: float = 0.6,
        guidance: float | None = None,
        negative=None,
        steps=None,
        sampler=None,
        grid=None,
        generator: torch.Generator | None = None,
        batch_size: int = 100,
        return_latents: bool = False,
        callback=None,
    ) -> torch.Tensor:
        """SDEdit / diffusers' img2img: encode the images, noise them to the grid level of ``strength``
        (:func:`img2img_start_index`) and sample the rest of the grid. Strength 0 returns the
        reconstruction decode(encode(x)); strength 1 starts from pure prior noise (exactly txt2img:
        the input is ignored). A diffusers model does what diffusers' img2img pipeline does: it
        encodes a posterior draw (from ``generator``, before the noise), and at strength 1 it noises
        the input to the first level (which, on Stable Diffusion's leading timesteps, t = 901, keeps
        a trace of it) instead of starting from the prior."""
        if not 0 <= strength <= 1:
            raise ValueError(f"strength must be in [0, 1], got {strength}")
        z0 = self.encode_images(images, generator=generator)
        z0 = broadcast_batch(z0, len(prompts), "images")

        def start(i0, i1, sigmas, n_steps, generator):
            first = img2img_start_index(n_steps, strength)
            if first == 0 and self.scheduler is None:  # strength 1: the prior, as txt2img
                return prior_noise((i1 - i0, *z0.shape[1:]), float(sigmas[0]), generator=generator), sigmas
            noise = devices.randn(z0[i0:i1].shape, generator=generator, device=self.device)
            return z0[i0:i1] + float(sigmas[first]) * noise, sigmas[first:]

        cond, uncond = self._encode(list(prompts), negative)
        z = self._run(
            len(prompts),
            cond,
            uncond,
            guidance=guidance,
            steps=steps,
            sampler=sampler,
            grid=grid,
            generator=generator,
            batch_size=batch_size,
            start=start,
            callback=callback,
            latent_shape=tuple(z0.shape[1:]),
        )
        return z if return_latents else self.decode(z)

    def inpaint(
        self,
        images: torch.Tensor,
        masks: torch.Tensor,
        prompts: list[str],
        *,
        method: str = "auto",
        strength: float = 1.0,
        guidance: float | None = None,
        negative=None,
        steps=None,
        sampler=None,
        grid=None,
        generator: torch.Generator | None = None,
        batch_size: int = 100,
        return_latents: bool = False,
        callback=None,
    ) -> torch.Tensor:
        """Repaint where ``masks`` (N or 1, 1, H, W) is 1, keep the rest. ``method``: "concat" for a model
        trained with mask + masked-latent inputs (text.inpaint_fraction > 0; Stable Diffusion's
        9-channel inpainting U-Net), "replace" (any model: the known region replaced by its noised
        latent at every level, then pasted exactly at the end; Stable Diffusion's legacy mask blend);
        "auto" picks concat when the model has the inputs for it. ``strength`` below 1 starts from
        the noised input at that grid level (as img2img) instead of the prior.

        A diffusers model follows diffusers' ``StableDiffusionInpaintPipeline`` (the same random
        draws in the same order, so the same images for a seed): the mask is binarised at 0.5 and
        taken to the latent grid by nearest-neighbour interpolation; the 9-channel U-Net sees the
        latents of the masked image x * (mask < 0.5); the replacement uses the starting noise, and at
        strength 1 the first step sees pure noise everywhere. A kuosan run max-pools the mask (the
        hole never shrinks) and masks in latent space."""
        if method not in INPAINT_METHODS:
            raise ValueError(f"unknown inpainting method {method!r}; choose from {', '.join(INPAINT_METHODS)}")
        if not 0 < strength <= 1:
            raise ValueError(f"strength must be in (0, 1], got {strength}")
        has_concat = self.inpaint_model
        method = ("concat" if has_concat else "replace") if method == "auto" else method
        if method == "concat" and not has_concat:
            raise ValueError("inpainting method 'concat' needs a model trained with text.inpaint_fraction > 0")
        if method == "replace" and has_concat:  # an inpainting model asked for the replacement method
            raise ValueError("this model takes mask inputs: use method 'concat' (or 'auto')")
        n = len(prompts)
        if masks.ndim != 4 or masks.shape[1] != 1 or masks.shape[-2:] != images.shape[-2:]:
            raise ValueError(
                f"masks must have shape (N, 1, {images.shape[-2]}, {images.shape[-1]}), got {tuple(masks.shape)}"
            )
        given = masks.float().to(self.device)
        masks = broadcast_batch(given, n, "masks")
        diffusers_form = self.scheduler is not None
        if diffusers_form:  # the draws of diffusers' pipeline, in its order, for the whole batch
            given, masks = (given >= 0.5).float(), (masks >= 0.5).float()
            latent_shape = self.latent_shape_for(images.shape[-2], images.shape[-1])
            need_z0 = method == "replace" or strength < 1
            z0 = broadcast_batch(self.encode_images(images, generator=generator), n, "images") if need_z0 else None
            noise = devices.randn((n, *latent_shape), generator=generator, device=self.device)
            masked = images.to(self.device) * (given < 0.5)  # at the batch of the images and masks given
            masked_z = broadcast_batch(self.encode_images(masked, generator=generator), n, "masked images")
            m = F.interpolate(masks, size=latent_shape[-2:], mode="nearest")
        else:
            z0 = broadcast_batch(self.encode_images(images), n, "images")
            latent_shape = tuple(z0.shape[1:])
            m = downsample_mask(masks, latent_shape[-2:])

        def wrap(i0, i1, den, generator):
            if method == "concat":
                if diffusers_form:
                    return ConcatInpaintDenoiser(den, cond_image=torch.cat([m[i0:i1], masked_z[i0:i1]], dim=1))
                return ConcatInpaintDenoiser(den, m[i0:i1], z0[i0:i1])
            if diffusers_form:
                keep = float(self._grid(steps, grid, sampler)[0][0]) if strength == 1 else None
                return ReplaceInpaintDenoiser(den, m[i0:i1], z0[i0:i1], noise[i0:i1], keep_from=keep)
            eps = devices.randn(z0[i0:i1].shape, generator=generator, device=self.device)
            return ReplaceInpaintDenoiser(den, m[i0:i1], z0[i0:i1], eps)

        def start(i0, i1, sigmas, n_steps, generator):
            first = img2img_start_index(n_steps, strength)
            if diffusers_form:
                if strength == 1:
                    return noise[i0:i1] * (1 + float(sigmas[0]) ** 2) ** 0.5, sigmas
                return z0[i0:i1] + float(sigmas[first]) * noise[i0:i1], sigmas[first:]
            if strength == 1:
                return prior_noise((i1 - i0, *latent_shape), float(sigmas[0]), generator=generator), sigmas
            eps = devices.randn(z0[i0:i1].shape, generator=generator, device=self.device)
            return z0[i0:i1] + float(sigmas[first]) * eps, sigmas[first:]

        cond, uncond = self._encode(list(prompts), negative)
        z = self._run(
            n,
            cond,
            uncond,
            guidance=guidance,
            steps=steps,
            sampler=sampler,
            grid=grid,
            generator=generator,
            batch_size=batch_size,
            inpaint=wrap,
            start=start if (diffusers_form or strength < 1) else None,
            callback=callback,
            latent_shape=latent_shape,
        )
        if method == "replace":
            m, z0 = m.cpu(), z0.cpu()  # exact in latent space (the sampler's last step already lands there)
            z = m * z + (1 - m) * z0
        return z if return_latents else self.decode(z)


def conditional_sample_fn(cfg, x_shape: tuple[int, ...], *, prompts=None, uncond=None, autoencoder=None):
    """The Trainer's picture callback for a text/latent/class run: the first n cached prompts (or the
    classes, ``prompts={"class_labels": ...}``), cycled, the config's sampler with guidance
    DEFAULT_GUIDANCE (a class run: its ``label.guidance``), decoded to images."""

    def sample_fn(net, n, generator):
        net.data_shape = x_shape
        where = next(net.parameters()).device  # the pictures are drawn where the network trains
        pipe = TextToImagePipeline.from_config(cfg, net, autoencoder=autoencoder, device=where, precision="fp32")
        cond = unc = {}
        if prompts is not None:
            rows = torch.arange(n) % next(iter(prompts.values())).shape[0]
            cond = {k: v[rows].to(where) for k, v in prompts.items()}
            unc = {k: v.expand(n, *v.shape[1:]).to(where) for k, v in uncond.items()}
        z = pipe._run(
            n,
            cond,
            unc,
            guidance=cfg.label.guidance if cfg.label.classes else DEFAULT_GUIDANCE,
            steps=None,
            sampler=None,
            grid=None,
            generator=generator,
            batch_size=100,
        )
        return pipe.decode(z)

    return sample_fn
