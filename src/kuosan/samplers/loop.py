"""Generation: prior noise -> sampler -> samples, in batches: the one loop that unconditional
sampling (:func:`generate`) and the text-to-image pipelines
(:class:`kuosan.pipelines.TextToImagePipeline`) both run."""

from __future__ import annotations

from collections.abc import Callable

import torch

from kuosan.diffusion.schedules import make_sigmas
from kuosan.samplers import get_sampler

PRIORS = ("vp", "ve")


def prior_noise(shape: tuple[int, ...], sigma_max: float, *, generator=None, prior: str = "vp") -> torch.Tensor:
    """x at the first grid level. ``prior="vp"`` (a VP-trained model): x_T ~ N(0, I) in VP scaling is
    x = x_T / sqrt(abar_T) = x_T sqrt(1 + sigma_max^2) in the Denoiser's VE scaling; ``prior="ve"``
    (NCSN, the VE SDE): x ~ N(0, sigma_max^2 I)."""
    if prior not in PRIORS:
        raise ValueError(f"prior must be 'vp' or 've', got {prior!r}")
    std = (1 + sigma_max**2) ** 0.5 if prior == "vp" else sigma_max
    return torch.randn(shape, generator=generator) * std


@torch.inference_mode()
def sample_batches(
    denoiser,
    sigmas: torch.Tensor,
    shape: tuple[int, ...],
    n: int,
    *,
    sampler: str,
    generator: torch.Generator | None = None,
    batch_size: int = 1000,
    prior: str = "vp",
    wrap: Callable | None = None,
    start: Callable | None = None,
    extra_args: dict[str, torch.Tensor] | None = None,
    device: torch.device | str | None = None,
    **sampler_kwargs,
) -> torch.Tensor:
    """n samples of per-sample ``shape`` (B, *shape) by the named sampler on the grid ``sigmas``, in
    batches of ``batch_size``, computed on ``device`` (default the CPU; the noise is drawn on the
    CPU generator and moved, and the samples come back on the CPU). Per batch [i0, i1), in this order
    (the order of the generator's draws):

    - ``wrap(i0, i1, generator) -> denoiser`` gives the batch's Denoiser (guidance, inpainting; default
      ``denoiser``);
    - ``start(i0, i1, sigmas, generator) -> (x, sigmas)`` gives its starting point and grid
      (img2img; default: prior noise at sigmas[0] and the whole grid);
    - the sampler runs with the rows [i0, i1) of every ``extra_args`` tensor (a one-level grid: no step).
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    fn = get_sampler(sampler)
    extra_args = extra_args or {}
    out = []
    for i0 in range(0, n, batch_size):
        i1 = min(i0 + batch_size, n)
        den = wrap(i0, i1, generator) if wrap is not None else denoiser
        if start is None:
            x, grid = prior_noise((i1 - i0, *shape), float(sigmas[0]), generator=generator, prior=prior), sigmas
        else:
            x, grid = start(i0, i1, sigmas, generator)
        x = x.to(device) if device is not None else x
        if len(grid) > 1:
            kwargs = dict(sampler_kwargs)
            if extra_args:
                kwargs["extra_args"] = {k: v[i0:i1] for k, v in extra_args.items()}
            x = fn(den, x, grid, generator=generator, **kwargs)
        out.append(x.cpu())
    return torch.cat(out)


def generate(
    denoiser,
    schedule,
    shape: tuple[int, ...],
    n: int,
    *,
    sampler: str = "ddim",
    steps: int = 20,
    grid: str = "trailing",
    generator: torch.Generator | None = None,
    batch_size: int = 1000,
    prior: str = "vp",
    device: torch.device | str | None = None,
    **sampler_kwargs,
) -> torch.Tensor:
    """n samples of per-sample ``shape`` from ``denoiser`` with the named sampler on a ``steps``-step
    ``grid`` of ``schedule``'s noise levels, starting from ``prior`` (see :func:`prior_noise`), on
    ``device`` (see :func:`sample_batches`)."""
    sigmas = make_sigmas(schedule, steps, grid)
    return sample_batches(
        denoiser,
        sigmas,
        shape,
        n,
        sampler=sampler,
        generator=generator,
        batch_size=batch_size,
        prior=prior,
        device=device,
        **sampler_kwargs,
    )
