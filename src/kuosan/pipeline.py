"""Generation: noise -> sampler -> samples, on top of the Denoiser contract and the sampler registry."""
from __future__ import annotations

import torch

from kuosan.diffusion.schedules import make_sigmas
from kuosan.samplers import get_sampler


def prior_noise(shape: tuple[int, ...], sigma_max: float, *, generator=None, prior: str = "vp") -> torch.Tensor:
    """x at the first grid level. ``prior="vp"`` (a VP-trained model): x_T ~ N(0, I) in VP scaling is
    x = x_T / sqrt(abar_T) = x_T sqrt(1 + sigma_max^2) in the Denoiser's VE scaling; ``prior="ve"``
    (NCSN, the VE SDE): x ~ N(0, sigma_max^2 I)."""
    if prior not in ("vp", "ve"):
        raise ValueError(f"prior must be 'vp' or 've', got {prior!r}")
    std = (1 + sigma_max**2) ** 0.5 if prior == "vp" else sigma_max
    return torch.randn(shape, generator=generator) * std


def prior_for(cfg) -> str:
    """The prior of a config's model: "ve" for diffusion.kind=ncsn, else "vp"."""
    return "ve" if getattr(cfg.diffusion, "kind", "vp") == "ncsn" else "vp"


@torch.inference_mode()
def generate(denoiser, schedule, shape: tuple[int, ...], n: int, *, sampler: str = "ddim", steps: int = 20,
             grid: str = "trailing", generator: torch.Generator | None = None, batch_size: int = 1000,
             prior: str = "vp", **sampler_kwargs) -> torch.Tensor:
    """n samples of per-sample ``shape`` from ``denoiser`` with the named sampler and grid, in batches,
    starting from ``prior`` (see :func:`prior_noise`)."""
    fn = get_sampler(sampler)
    sigmas = make_sigmas(schedule, steps, grid)
    out = []
    for start in range(0, n, batch_size):
        b = min(batch_size, n - start)
        x = prior_noise((b, *shape), float(sigmas[0]), generator=generator, prior=prior)
        out.append(fn(denoiser, x, sigmas, generator=generator, **sampler_kwargs))
    return torch.cat(out)


def sample_fn_for(cfg, data_shape: tuple[int, ...]):
    """The picture-drawing callback the Trainer takes: its config's sampler, steps and grid."""
    from kuosan.build import build_denoiser, build_schedule

    schedule = build_schedule(cfg)

    def sample_fn(net, n, generator):
        return generate(build_denoiser(cfg, net), schedule, data_shape, n, sampler=cfg.sample.sampler,
                        steps=cfg.sample.steps, grid=cfg.sample.grid, generator=generator, prior=prior_for(cfg))

    return sample_fn


def sample_run(run_dir, n: int, *, sampler: str | None = None, steps: int | None = None, grid: str | None = None,
               clip: bool | None = None, seed: int = 0, weights: str = "ema", batch_size: int = 1000,
               **sampler_kwargs) -> torch.Tensor:
    """n samples from a trained run directory, images clamped to [-1, 1]. Unset options take the run's
    ``sample`` config; an impossible choice raises ConfigError naming it."""
    from kuosan.build import build_denoiser, build_schedule, load_run, validate
    from kuosan.config import ConfigError

    cfg, net = load_run(run_dir, weights=weights)
    if cfg.text.encoder or cfg.latent.autoencoder:
        raise ConfigError(f"{run_dir} is a text-conditional or latent diffusion run: use kuosan txt2img (or "
                          "kuosan.pipelines.TextToImagePipeline)")
    for key, val in (("sampler", sampler), ("steps", steps), ("grid", grid), ("clip", clip)):
        if val is not None:
            setattr(cfg.sample, key, val)
    validate(cfg)
    g = torch.Generator().manual_seed(seed)
    x = generate(build_denoiser(cfg, net), build_schedule(cfg), net.data_shape, n, sampler=cfg.sample.sampler,
                 steps=cfg.sample.steps, grid=cfg.sample.grid, generator=g, batch_size=batch_size,
                 prior=prior_for(cfg), **sampler_kwargs)
    return (x.clamp(-1, 1) if x.ndim == 4 else x).float()  # images live in [-1, 1]; 2-D toy data do not
