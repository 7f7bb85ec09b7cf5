"""Denoiser wrappers that are themselves Denoisers, so every sampler gets them for free: x0 clamping,
classifier-free guidance (and Perp-Neg's negative prompts), and two kinds of inpainting.

Notation: the contract D(x, sigma, **cond) -> x0_hat in VE scaling (x = x0 + sigma * eps); ``cond``
is the conditioning a network takes (e.g. ``context``, ``context_mask``, ``pooled``, ``cond_image``),
batch-first. ``mask`` m (B or 1, 1, H, W) is 1 where the image is to be (re)generated and 0 where the
known content ``x0_known`` is kept (Stable Diffusion's inpainting convention: white = repaint).
"""

from __future__ import annotations

import torch
from torch import nn

from kuosan.utils import append_dims


class ClampDenoiser(nn.Module):
    """x0 clipping (DDPM's clip_denoised, diffusers' clip_sample): D'(x, sigma) = clamp(D(x, sigma), lo, hi)."""

    def __init__(self, denoiser, lo: float = -1.0, hi: float = 1.0):
        super().__init__()
        self.denoiser, self.lo, self.hi = denoiser, lo, hi

    def forward(self, x: torch.Tensor, sigma, **cond) -> torch.Tensor:
        return self.denoiser(x, sigma, **cond).clamp(self.lo, self.hi)


def broadcast_batch(value: torch.Tensor, b: int, name: str) -> torch.Tensor:
    """A batch-first tensor of batch b, or a batch-1 one repeated to b."""
    if value.shape[0] == b:
        return value
    if value.shape[0] == 1:
        return value.expand(b, *value.shape[1:])
    raise ValueError(f"{name} has batch {value.shape[0]}, expected {b} or 1")


def stack_conditionings(parts: list[dict], cond: dict, b: int) -> dict:
    """The conditioning of one batched call on [x] * len(parts): for each key of ``cond``, every
    part's value (batch 1 or b) or, where a part lacks the key (an inpainting ``cond_image``), the
    conditional one, concatenated along the batch."""
    out = {}
    for key, value in cond.items():
        c = broadcast_batch(value, b, key)
        out[key] = torch.cat([broadcast_batch(p[key], b, key) if key in p else c for p in parts])
    return out


def cfg_combine(d_uncond: torch.Tensor, d_cond: torch.Tensor, scale: float) -> torch.Tensor:
    """Classifier-free guidance (Ho & Salimans 2022, Eq. 6, written for x0_hat):
    D = D_u + s (D_c - D_u); s = 1 is the conditional model, s = 0 the unconditional one."""
    return d_uncond + scale * (d_cond - d_uncond)


class CFGDenoiser(nn.Module):
    """Classifier-free guidance as a Denoiser: ``forward(x, sigma, **cond)`` evaluates the wrapped
    denoiser once on the doubled batch [x, x] with conditioning [uncond, cond] and returns
    :func:`cfg_combine` of the two halves.

    ``uncond`` holds the unconditional versions of the conditioning keys (the empty prompt's encoding,
    or a negative prompt's), batch 1 or B. Keys of ``cond`` that ``uncond`` lacks (e.g. an inpainting
    ``cond_image``) are shared by both halves. ``scale == 1`` skips the unconditional half.
    """

    def __init__(self, denoiser, uncond: dict[str, torch.Tensor], scale: float):
        super().__init__()
        self.denoiser, self.uncond, self.scale = denoiser, dict(uncond), float(scale)

    def forward(self, x: torch.Tensor, sigma, **cond) -> torch.Tensor:
        if self.scale == 1.0:
            return self.denoiser(x, sigma, **cond)
        b = x.shape[0]
        missing = sorted(set(self.uncond) - set(cond))
        if missing:
            raise ValueError(
                f"CFGDenoiser: the conditional call lacks {missing[0]}= (given for the unconditional half)"
            )
        both = stack_conditionings([self.uncond, cond], cond, b)
        sigma = torch.as_tensor(sigma, dtype=x.dtype, device=x.device)
        sigma = torch.cat([sigma.expand(b)] * 2) if sigma.ndim == 0 else torch.cat([sigma, sigma])
        d_uncond, d_cond = self.denoiser(torch.cat([x, x]), sigma, **both).chunk(2)
        return cfg_combine(d_uncond, d_cond, self.scale)


def perpendicular_component(e: torch.Tensor, e_pos: torch.Tensor) -> torch.Tensor:
    """The part of e perpendicular to e_pos, per sample: e - (<e, e_pos> / ||e_pos||^2) e_pos."""
    dot = (e * e_pos).flatten(1).sum(1)
    norm2 = e_pos.pow(2).flatten(1).sum(1).clamp(min=1e-12)
    return e - append_dims(dot / norm2, e.ndim) * e_pos


class PerpNegDenoiser(nn.Module):
    """Perp-Neg guidance (Armandpour et al. 2023) as a Denoiser: negative prompts push only along the
    part of their direction that is perpendicular to the positive prompt's, so a negative that shares
    content with the prompt (DreamFusion's "back view" against "front view" of one object) removes
    what differs without cancelling the object:

        D = D_u + w (e_+ - sum_i w_i perp(e_i, e_+)),   e_+ = D_c - D_u,  e_i = D_(neg i) - D_u.

    The paper writes it on eps_hat; eps = (x - D) / sigma is affine in D with one factor per sample and
    the perpendicular part is homogeneous, so the x0 form is the same combination. One evaluation on
    the batch [x, x, x, ...] (uncond, cond, each negative); ``negatives`` are conditioning dicts
    (batch 1 or B), ``weights`` their w_i (>= 0), fixed (stable-dreamfusion interpolates them by the
    camera's azimuth). With no negatives it is :class:`CFGDenoiser`.
    """

    def __init__(self, denoiser, uncond: dict, negatives: list[dict], weights: list[float], scale: float):
        super().__init__()
        if len(negatives) != len(weights):
            raise ValueError(f"{len(negatives)} negative conditionings for {len(weights)} weights")
        self.denoiser, self.uncond, self.scale = denoiser, dict(uncond), float(scale)
        self.negatives, self.weights = [dict(n) for n in negatives], [float(w) for w in weights]

    def forward(self, x: torch.Tensor, sigma, **cond) -> torch.Tensor:
        b, k = x.shape[0], 2 + len(self.negatives)
        parts = [self.uncond, cond, *self.negatives]
        missing = sorted(set().union(self.uncond, *self.negatives) - set(cond))
        if missing:
            raise ValueError(f"PerpNegDenoiser: the conditional call lacks {missing[0]}= (given for another part)")
        both = stack_conditionings(parts, cond, b)
        sigma = torch.as_tensor(sigma, dtype=x.dtype, device=x.device).expand(b)
        d = self.denoiser(torch.cat([x] * k), torch.cat([sigma] * k), **both).chunk(k)
        d_u, e_pos = d[0], d[1] - d[0]
        guided = e_pos
        for w, d_neg in zip(self.weights, d[2:]):
            guided = guided - w * perpendicular_component(d_neg - d_u, e_pos)
        return d_u + self.scale * guided


def inpaint_cond_image(mask: torch.Tensor, x0_known: torch.Tensor) -> torch.Tensor:
    """The extra input of a concatenation-conditioned inpainting network (Stable Diffusion's inpainting
    U-Net: 1 mask + C masked-image channels): concat(m, (1 - m) * x0_known) along channels."""
    return torch.cat([mask.to(x0_known.dtype), (1 - mask.to(x0_known.dtype)) * x0_known], dim=1)


class ConcatInpaintDenoiser(nn.Module):
    """Inpainting with a model trained for it (concatenation conditioning): every call supplies
    ``cond_image = inpaint_cond_image(mask, x0_known)``; the network itself fills the hole.
    ``cond_image`` may be given instead (Stable Diffusion's inpainting pipeline: the mask and the
    latents of the masked image, encoded in pixel space)."""

    def __init__(self, denoiser, mask=None, x0_known=None, *, cond_image: torch.Tensor | None = None):
        super().__init__()
        if (cond_image is None) == (mask is None or x0_known is None):
            raise ValueError("ConcatInpaintDenoiser takes mask and x0_known, or cond_image")
        self.denoiser = denoiser
        self.cond_image = inpaint_cond_image(mask, x0_known) if cond_image is None else cond_image

    def forward(self, x: torch.Tensor, sigma, **cond) -> torch.Tensor:
        cond_image = broadcast_batch(self.cond_image, x.shape[0], "cond_image")
        return self.denoiser(x, sigma, cond_image=cond_image, **cond)


def replace_known(
    x: torch.Tensor, sigma, mask: torch.Tensor, x0_known: torch.Tensor, noise: torch.Tensor
) -> torch.Tensor:
    """The replacement step of RePaint (Lugmayr et al. 2022, Eq. 8, without resampling) and of Stable
    Diffusion's legacy inpainting: x <- m * x + (1 - m) * (x0_known + sigma * noise), the known region
    set to the known content noised to the current level (VE scaling)."""
    sigma = torch.as_tensor(sigma, dtype=x.dtype, device=x.device)
    sigma = sigma.reshape(-1, *([1] * (x.ndim - 1))) if sigma.ndim else sigma
    return mask * x + (1 - mask) * (x0_known + sigma * noise)


class ReplaceInpaintDenoiser(nn.Module):
    """Inpainting with any model, the replacement method (RePaint with r = 1 resampling, i.e. Stable
    Diffusion's legacy / diffusers' ``StableDiffusionInpaintPipelineLegacy`` blending):

        D'(x, sigma) = m * D(x~, sigma) + (1 - m) * x0_known,   x~ = replace_known(x, sigma, ...)

    The known region is noised with one fixed ``noise`` draw for the whole trajectory (as the legacy
    pipeline's ``add_noise(init_latents, noise, t)``), so along a deterministic sampler it stays
    exactly x0_known + sigma * noise and lands on x0_known at sigma = 0. The hole sees the noised
    known content through the network's receptive field; nothing else ties the two regions together.

    ``keep_from``: at levels sigma >= keep_from the input is used as it is (diffusers' inpainting
    pipeline starts from pure noise everywhere at strength 1 and replaces only after each step).
    """

    def __init__(
        self,
        denoiser,
        mask: torch.Tensor,
        x0_known: torch.Tensor,
        noise: torch.Tensor,
        *,
        keep_from: float | None = None,
    ):
        super().__init__()
        self.denoiser, self.mask, self.x0_known, self.noise = denoiser, mask, x0_known, noise
        self.keep_from = keep_from

    def forward(self, x: torch.Tensor, sigma, **cond) -> torch.Tensor:
        b = x.shape[0]
        mask = broadcast_batch(self.mask, b, "mask").to(x.dtype)
        known = broadcast_batch(self.x0_known, b, "x0_known").to(x.dtype)
        keep = self.keep_from is not None and bool((torch.as_tensor(sigma) >= self.keep_from * (1 - 1e-9)).all())
        noise = broadcast_batch(self.noise, b, "noise").to(x.dtype)
        x_tilde = x if keep else replace_known(x, sigma, mask, known, noise)
        return mask * self.denoiser(x_tilde, sigma, **cond) + (1 - mask) * known
