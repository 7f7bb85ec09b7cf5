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
    ReplaceInpaintDenoiser,
    broadcast_batch,
)
from kuosan.diffusion.schedules import make_sigmas
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
    """A trained run's network, schedule, text encoder and autoencoder, ready to generate.

    ``TextToImagePipeline.from_run(run_dir)`` loads everything; the methods take prompts (one image
    per prompt) and return images (N, C, H, W) in [-1, 1]. Unset ``steps``, ``sampler`` and ``grid``
    take the run's ``sample`` config. ``device`` (default the config's ``sample.device``, auto: a GPU
    if there is one) is where the networks run, moved there on construction; ``precision`` (default
    ``sample.precision``) is the denoising network's autocast (the decoder and the text encoder run
    in float32).
    """

    def __init__(self, cfg, net, *, text_encoder=None, autoencoder=None, device=None, precision=None):
        self.device = devices.resolve_device(cfg.sample.device if device is None else device)
        self.precision = devices.resolve_precision(self.device, precision or cfg.sample.precision)
        for module in (net, text_encoder, autoencoder):
            if module is not None:
                module.to(self.device)
        self.cfg, self.net, self.text_encoder, self.autoencoder = cfg, net, text_encoder, autoencoder
        self.schedule = build_schedule(cfg)
        self.denoiser = build_denoiser(cfg, net, clip=False)
        self.latent_shape = tuple(net.data_shape) if hasattr(net, "data_shape") else None
        self.clip = autoencoder is None and cfg.sample.clip  # latents have no fixed range

    @classmethod
    def from_run(cls, run_dir, *, weights: str = "ema", device=None, precision=None) -> TextToImagePipeline:
        run = Run.open(run_dir, weights=weights)
        return cls(
            run.config,
            run.network,
            text_encoder=run.text_encoder,
            autoencoder=run.autoencoder,
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

    @torch.inference_mode()
    def encode_images(self, images: torch.Tensor) -> torch.Tensor:
        """z0 of images, on the pipeline's device: s * (posterior mean) for a latent run (the VAE's
        mode), the images otherwise."""
        if images.ndim != 4:
            raise ValueError(f"images must have shape (N, C, H, W), got {tuple(images.shape)}")
        images = images.to(self.device)
        if self.autoencoder is None:
            if self.latent_shape and tuple(images.shape[1:]) != self.latent_shape:
                raise ValueError(
                    f"this run works on images of shape {self.latent_shape}, got {tuple(images.shape[1:])}"
                )
            return images.float()
        f = self.autoencoder.downsampling_factor
        want = (self.autoencoder.config["in_channels"], self.latent_shape[1] * f, self.latent_shape[2] * f)
        if tuple(images.shape[1:]) != want:
            raise ValueError(f"this run works on images of shape {want}, got {tuple(images.shape[1:])}")
        mean, _ = encode_posterior(self.autoencoder, images.float())
        return self.cfg.latent.scale_factor * mean

    @torch.inference_mode()
    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """Images in [-1, 1] of z0 (the autoencoder's decoder applied to z / s for a latent run), on
        the CPU."""
        if self.autoencoder is not None:
            z = self.autoencoder.decode(z.to(self.device) / self.cfg.latent.scale_factor)
        return z.float().clamp(-1, 1).cpu()

    # --- the shared sampling loop ---------------------------------------------------------------------

    def _sigmas(self, steps, grid) -> torch.Tensor:
        return make_sigmas(self.schedule, steps or self.cfg.sample.steps, grid or self.cfg.sample.grid)

    def _guided(self, uncond: dict, guidance: float, inpainting: bool):
        den = self.denoiser
        if uncond:
            den = CFGDenoiser(den, uncond, guidance)
        if self.clip:
            den = ClampDenoiser(den)
        if self.net.config.get("cond_channels") and not inpainting:  # an inpainting model doing txt2img:
            ones = torch.ones(1, 1, *self.latent_shape[1:], device=self.device)  # repaint all, nothing known
            den = ConcatInpaintDenoiser(den, ones, torch.zeros(1, *self.latent_shape, device=self.device))
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
        guidance: float,
        steps,
        sampler,
        grid,
        generator,
        batch_size: int,
        start=None,
        inpaint=None,
    ) -> torch.Tensor:
        """Sample n latents with conditioning ``cond`` guided away from ``uncond`` (both batch n).
        ``start(i0, i1, sigmas, generator) -> (x, sigmas)`` gives img2img's starting point and grid;
        ``inpaint(i0, i1, den, generator) -> den`` wraps the denoiser for inpainting."""

        def wrap(i0, i1, generator):
            den = self._guided({k: v[i0:i1] for k, v in uncond.items()}, guidance, inpaint is not None)
            return inpaint(i0, i1, den, generator) if inpaint is not None else den

        with devices.autocast(self.device, self.precision):
            z = sample_batches(
                self.denoiser,
                self._sigmas(steps, grid),
                self.latent_shape,
                n,
                sampler=sampler or self.cfg.sample.sampler,
                generator=generator,
                batch_size=batch_size,
                wrap=wrap,
                start=start,
                extra_args=cond,
                device=self.device,
            )
        return z.float()

    # --- the three tasks ------------------------------------------------------------------------------

    def txt2img(
        self,
        prompts: list[str],
        *,
        guidance: float = DEFAULT_GUIDANCE,
        negative=None,
        steps=None,
        sampler=None,
        grid=None,
        generator: torch.Generator | None = None,
        batch_size: int = 100,
        return_latents: bool = False,
    ) -> torch.Tensor:
        """One image per prompt: prior noise -> sampler with classifier-free guidance -> decoder."""
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
        )
        return z if return_latents else self.decode(z)

    def img2img(
        self,
        images: torch.Tensor,
        prompts: list[str],
        *,
        strength: float = 0.6,
        guidance: float = DEFAULT_GUIDANCE,
        negative=None,
        steps=None,
        sampler=None,
        grid=None,
        generator: torch.Generator | None = None,
        batch_size: int = 100,
        return_latents: bool = False,
    ) -> torch.Tensor:
        """SDEdit / diffusers' img2img: encode the images, noise them to the grid level of ``strength``
        (:func:`img2img_start_index`) and sample the rest of the grid. Strength 0 returns the
        reconstruction decode(encode(x)); strength 1 starts from pure prior noise (exactly txt2img:
        the input is ignored)."""
        z0 = self.encode_images(images)
        z0 = broadcast_batch(z0, len(prompts), "images")
        n_steps = len(self._sigmas(steps, grid)) - 1
        first = img2img_start_index(n_steps, strength)

        def start(i0, i1, sigmas, generator):
            if first == 0:  # strength 1: the prior, as txt2img
                return prior_noise((i1 - i0, *self.latent_shape), float(sigmas[0]), generator=generator), sigmas
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
        )
        return z if return_latents else self.decode(z)

    def inpaint(
        self,
        images: torch.Tensor,
        masks: torch.Tensor,
        prompts: list[str],
        *,
        method: str = "auto",
        guidance: float = DEFAULT_GUIDANCE,
        negative=None,
        steps=None,
        sampler=None,
        grid=None,
        generator: torch.Generator | None = None,
        batch_size: int = 100,
        return_latents: bool = False,
    ) -> torch.Tensor:
        """Repaint where ``masks`` (N or 1, 1, H, W) is 1, keep the rest. ``method``: "concat" for a model
        trained with mask + masked-latent inputs (text.inpaint_fraction > 0), "replace" (any model: the
        known region replaced by its noised latent at every level, then pasted exactly at the end);
        "auto" picks concat when the model has the inputs for it."""
        if method not in INPAINT_METHODS:
            raise ValueError(f"unknown inpainting method {method!r}; choose from {', '.join(INPAINT_METHODS)}")
        has_concat = bool(self.net.config.get("cond_channels"))
        method = ("concat" if has_concat else "replace") if method == "auto" else method
        if method == "concat" and not has_concat:
            raise ValueError("inpainting method 'concat' needs a model trained with text.inpaint_fraction > 0")
        z0 = broadcast_batch(self.encode_images(images), len(prompts), "images")
        masks = broadcast_batch(masks.float().to(self.device), len(prompts), "masks")
        if masks.ndim != 4 or masks.shape[1] != 1 or masks.shape[-2:] != images.shape[-2:]:
            raise ValueError(
                f"masks must have shape (N, 1, {images.shape[-2]}, {images.shape[-1]}), got {tuple(masks.shape)}"
            )
        m = downsample_mask(masks, tuple(z0.shape[-2:]))

        def wrap(i0, i1, den, generator):
            if method == "concat":
                return ConcatInpaintDenoiser(den, m[i0:i1], z0[i0:i1])
            noise = devices.randn(z0[i0:i1].shape, generator=generator, device=self.device)
            return ReplaceInpaintDenoiser(den, m[i0:i1], z0[i0:i1], noise)

        if method == "replace" and has_concat:  # an inpainting model asked for the replacement method
            raise ValueError("this model takes mask inputs: use method 'concat' (or 'auto')")
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
            inpaint=wrap,
        )
        if method == "replace":
            m, z0 = m.cpu(), z0.cpu()  # exact in latent space (the sampler's last step already lands there)
            z = m * z + (1 - m) * z0
        return z if return_latents else self.decode(z)


def conditional_sample_fn(cfg, x_shape: tuple[int, ...], *, prompts=None, uncond=None, autoencoder=None):
    """The Trainer's picture callback for a text/latent run: the first n cached prompts (cycled), the
    config's sampler with guidance DEFAULT_GUIDANCE, decoded to images."""

    def sample_fn(net, n, generator):
        net.data_shape = x_shape
        where = next(net.parameters()).device  # the pictures are drawn where the network trains
        pipe = TextToImagePipeline(cfg, net, autoencoder=autoencoder, device=where, precision="fp32")
        cond = unc = {}
        if prompts is not None:
            rows = torch.arange(n) % prompts["context"].shape[0]
            cond = {k: v[rows].to(where) for k, v in prompts.items()}
            unc = {k: v.expand(n, *v.shape[1:]).to(where) for k, v in uncond.items()}
        z = pipe._run(
            n,
            cond,
            unc,
            guidance=DEFAULT_GUIDANCE,
            steps=None,
            sampler=None,
            grid=None,
            generator=generator,
            batch_size=100,
        )
        return pipe.decode(z)

    return sample_fn
