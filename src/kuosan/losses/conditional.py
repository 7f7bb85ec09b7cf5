"""Conditional training: text prompts or class labels (with dropout for classifier-free guidance),
latents drawn from a cached VAE posterior, and inpainting masks, around any unconditional objective.

Notation: x0 is what is diffused (pixels, or latents z = s * E(x) with the scale factor s); the
conditioning is the keyword set ``cond`` the network takes: ``context`` (B, L, D) text tokens with
``context_mask`` (B, L), ``pooled`` (B, D), ``cond_image`` (B, 1 + C, H, W) = concat(mask, masked x0).

The training data (a dict the Trainer indexes, see ``train/trainer.py``) hold per example:

- ``x``: the image, or the posterior mean s * mu(x) of a VAE (Rombach et al. 2022, Sec. 3.1);
- ``x_std``: the posterior std s * sigma(x) (VAE only): x0 = x + x_std * n, n ~ N(0, I), is a fresh
  posterior draw each step, as Stable Diffusion's training samples ``latent_dist.sample()``;
- ``caption``: the index of the example's prompt in the table of cached text encodings (the text
  encoder is frozen, so each distinct prompt is encoded once);
- ``label``: the example's class in [0, K) (class-conditional models: the network's ``class_labels``,
  K the null label that label dropout puts in, as guided-diffusion's classifier-free variant does).
"""

from __future__ import annotations

from functools import partial

import torch

from kuosan.diffusion.guidance import inpaint_cond_image
from kuosan.losses.objective import Objective

TEXT_KEYS = ("context", "context_mask", "pooled")
COND_KEYS = (*TEXT_KEYS, "class_labels")


def prompt_dropout(cond: dict[str, torch.Tensor], uncond: dict[str, torch.Tensor], drop: torch.Tensor) -> dict:
    """Classifier-free guidance training (Ho & Salimans 2022, Algorithm 1): where ``drop`` (B,) is True the
    prompt's encoding is replaced by the unconditional one (the empty prompt's, batch 1)."""
    out = {}
    for key, value in cond.items():
        u = uncond[key].to(value.dtype).expand_as(value)
        out[key] = torch.where(drop.reshape(-1, *([1] * (value.ndim - 1))), u, value)
    return out


def random_box_masks(
    n: int,
    height: int,
    width: int,
    generator: torch.Generator | None = None,
    *,
    min_frac: float = 0.25,
    max_frac: float = 0.75,
) -> torch.Tensor:
    """n random rectangular inpainting masks (n, 1, H, W), 1 inside the box (to repaint): each side
    uniform in [min_frac, max_frac] of the image side, the box uniformly placed inside the image."""
    sides = torch.rand(n, 2, generator=generator) * (max_frac - min_frac) + min_frac
    h = (sides[:, 0] * height).round().clamp(1, height).long()
    w = (sides[:, 1] * width).round().clamp(1, width).long()
    corner = torch.rand(n, 2, generator=generator)
    top = (corner[:, 0] * (height - h + 1)).floor().long()
    left = (corner[:, 1] * (width - w + 1)).floor().long()
    rows, cols = torch.arange(height)[None, :], torch.arange(width)[None, :]
    in_rows = (rows >= top[:, None]) & (rows < (top + h)[:, None])
    in_cols = (cols >= left[:, None]) & (cols < (left + w)[:, None])
    return (in_rows[:, :, None] & in_cols[:, None, :]).float()[:, None]


class ConditionalObjective(Objective):
    """Wrap an unconditional objective (``draw(x0, g)``, ``loss(net, x0, **drawn)``) for conditional
    training. ``draw(x0, generator, **cond)`` takes the per-example keys of the data dict (``caption``,
    ``x_std``) and returns the inner draw plus the network's conditioning; ``loss`` forms x0 (a posterior
    draw for a VAE), the inpainting input, and calls the inner loss with ``net(x_t, t, **cond)``.

    Args:
        inner: the unconditional objective (e.g. ``DiffusionObjective``).
        prompts: cached encodings of the distinct prompts, {"context": (P, L, D), "context_mask": (P, L),
            "pooled": (P, D)}; None for a model without text.
        uncond: the empty prompt's encoding (batch 1), used for prompt dropout.
        cond_drop: probability of replacing a prompt by the empty one (a label by the null label).
        num_classes: K of a class-conditional model (labels in [0, K), K the null label); None: no labels.
        inpaint_fraction: share of examples given a random box mask and the masked x0 (the others get
            mask = 1 everywhere and nothing known: plain text-to-image); 0 = no ``cond_image`` at all.
    """

    def __init__(
        self,
        inner: Objective,
        *,
        prompts: dict[str, torch.Tensor] | None = None,
        uncond: dict[str, torch.Tensor] | None = None,
        cond_drop: float = 0.1,
        inpaint_fraction: float = 0.0,
        num_classes: int | None = None,
    ):
        if not 0 <= cond_drop <= 1 or not 0 <= inpaint_fraction <= 1:
            raise ValueError(f"cond_drop and inpaint_fraction must be in [0, 1], got {cond_drop}, {inpaint_fraction}")
        if prompts is not None and (uncond is None or set(uncond) != set(prompts)):
            raise ValueError("text conditioning needs the unconditional encoding of every key of the prompts")
        self.inner, self.prompts, self.uncond = inner, prompts, uncond
        self.cond_drop, self.inpaint_fraction = float(cond_drop), float(inpaint_fraction)
        self.num_classes = num_classes

    def draw(
        self,
        x0: torch.Tensor,
        generator: torch.Generator | None = None,
        *,
        caption: torch.Tensor | None = None,
        x_std: torch.Tensor | None = None,
        label: torch.Tensor | None = None,
    ) -> dict[str, torch.Tensor]:
        drawn = dict(self.inner.draw(x0, generator))
        b = x0.shape[0]
        if x_std is not None:
            drawn["x_std"] = x_std
            drawn["posterior_noise"] = torch.randn(x0.shape, generator=generator, dtype=x0.dtype)
        if self.prompts is not None:
            if caption is None:
                raise ValueError("a text-conditional objective needs the data key 'caption'")
            drop = torch.rand(b, generator=generator) < self.cond_drop
            drawn |= prompt_dropout({k: v[caption] for k, v in self.prompts.items()}, self.uncond, drop)
        if self.num_classes is not None:
            if label is None:
                raise ValueError("a class-conditional objective needs the data key 'label'")
            drop = torch.rand(b, generator=generator) < self.cond_drop
            drawn["class_labels"] = torch.where(drop, torch.full_like(label, self.num_classes), label)
        if self.inpaint_fraction > 0:
            boxes = random_box_masks(b, x0.shape[-2], x0.shape[-1], generator)
            chosen = torch.rand(b, generator=generator) < self.inpaint_fraction
            drawn["inpaint_mask"] = torch.where(chosen[:, None, None, None], boxes, torch.ones_like(boxes))
        return drawn

    def to(self, device) -> ConditionalObjective:
        """The inner objective's constants move; the prompt embeddings stay on the CPU, where the draw
        picks each example's (the trainer moves the draw)."""
        self.inner.to(device)
        return self

    def loss(
        self,
        net,
        x0: torch.Tensor,
        *,
        x_std: torch.Tensor | None = None,
        posterior_noise: torch.Tensor | None = None,
        inpaint_mask: torch.Tensor | None = None,
        **drawn,
    ) -> torch.Tensor:
        if posterior_noise is not None:
            x0 = x0 + x_std * posterior_noise
        cond = {k: drawn.pop(k) for k in COND_KEYS if k in drawn}
        if inpaint_mask is not None:
            cond["cond_image"] = inpaint_cond_image(inpaint_mask, x0)
        return self.inner.loss(partial(net, **cond) if cond else net, x0, **drawn)


def latent_scale_from_posterior(mean: torch.Tensor, std: torch.Tensor) -> float:
    r"""Latent diffusion's scale factor s = 1 / std(z) over posterior draws z = mu + sigma n of the
    training set (Rombach et al. 2022, Sec. 4.3.2 and App. G: "rescale the latents by the component-wise
    standard deviation" estimated from a batch; SD's 0.18215), here in closed form:
    Var[z] = Var[mu] + E[sigma^2] (law of total variance), so no draw is needed."""
    var = mean.double().var(unbiased=False) + std.double().pow(2).mean()
    if not var > 0:
        raise ValueError("the latents have zero variance; the autoencoder maps every image to one point")
    return float(var.rsqrt())
