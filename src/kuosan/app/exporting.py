"""A trained run written out for other libraries (``kuosan export``)."""

from __future__ import annotations

from pathlib import Path

import torch

from kuosan.build import build_data
from kuosan.config import ConfigError
from kuosan.interop import export as hf_export
from kuosan.interop.diffusers import DiffusersError
from kuosan.runs import Run

FORMATS = ("diffusers",)


def export(run_dir: str | Path, out: str | Path, *, format: str = "diffusers", weights: str = "ema") -> dict:
    """Write the run in ``run_dir`` to the folder ``out`` in ``format`` (diffusers): a VAE run as an
    ``AutoencoderKL`` folder, an unconditional DDPM run as a ``DDPMPipeline`` folder (module doc of
    :mod:`kuosan.interop.export` says what maps). A kuosan VAE records no latent scale factor; the
    export writes 1 / std of its training latents (:func:`scale_of`) into the config, where
    diffusers' pipelines read it. Returns what was written; ConfigError (one line) for a run that
    does not map, naming why."""
    if format not in FORMATS:
        raise ConfigError(f"format {format!r} is not one of {', '.join(FORMATS)}")
    run = Run.open(run_dir, weights=weights)
    try:
        extra = {}
        if run.is_autoencoder:
            vae = run.network
            if vae.config.get("scaling_factor") is None and getattr(vae, "variational", False):
                extra = {
                    "scaling_factor": scale_of(run),
                    "scaling_factor_from": f"1/std of {SCALE_IMAGES} training latents",
                }
            path = hf_export.export_vae(vae, Path(out), scaling_factor=extra.get("scaling_factor"))
            kind, loads_with = "AutoencoderKL", "diffusers.AutoencoderKL.from_pretrained"
        elif run.is_conditional:
            raise DiffusersError(
                f"{run_dir} is a text-conditional or latent run: its U-Net corresponds to UNet2DConditionModel, "
                "whose export kuosan does not write yet; export its autoencoder run (latent.autoencoder)"
            )
        else:
            shape = tuple(run.network.data_shape)
            if len(shape) != 3 or shape[1] != shape[2]:
                raise DiffusersError(f"a network on data of shape {shape} is not a square-image UNet2DModel")
            path = hf_export.export_ddpm(run.network, run.config, shape[-1], Path(out))
            kind, loads_with = "DDPMPipeline", "diffusers.DDPMPipeline.from_pretrained"
    except DiffusersError as e:
        raise ConfigError(str(e)) from None
    return {"run": str(run_dir), "out": str(path), "format": format, "class": kind, "loads_with": loads_with, **extra}


SCALE_IMAGES = 512


def scale_of(run: Run) -> float:
    """The latent scale factor a diffusers user needs in the VAE's config (Stable Diffusion's 0.18215
    is this for its VAE): 1 / std of posterior draws of the first SCALE_IMAGES training images."""
    from kuosan.networks.autoencoder import latent_scale_factor

    images = build_data(run.config)[:SCALE_IMAGES]
    with torch.inference_mode():
        return latent_scale_factor(run.network, images, generator=torch.Generator().manual_seed(0))
