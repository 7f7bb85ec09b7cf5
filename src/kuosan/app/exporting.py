"""A trained run written out for other libraries (``kuosan export``)."""

from __future__ import annotations

import json
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
    ``AutoencoderKL`` folder, an unconditional DDPM run as a ``DDPMPipeline`` folder, a text/latent
    run as unet/ (``UNet2DConditionModel``) + scheduler/ + vae/ + kuosan_conditioning.json (module
    doc of :mod:`kuosan.interop.export` says what maps); a class-conditional run's U-Net with
    class_labels.json (classes, null label, ``id2label``: the class names). A kuosan VAE records no
    latent scale factor; the export writes 1 / std of its training latents (:func:`scale_of`) into the
    config, where diffusers' pipelines read it. Returns what was written; ConfigError (one line) for a run that
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
            cfg, net = run.config, run.network
            latent = tuple(run.network.data_shape)
            conditioning = {
                "text_encoder": cfg.text.encoder or None,
                "max_length": cfg.text.max_length if cfg.text.encoder else None,
                "unet_inputs": {
                    "encoder_hidden_states": "the text encoder's last hidden states (B, L, D)",
                    "encoder_attention_mask": "its padding mask (B, L), 1 for real tokens",
                    **({"class_labels": "the pooled prompt vector (B, D)"} if net.config.get("pooled_dim") else {}),
                    **({"concat": "mask + masked latents after x_t"} if net.config.get("cond_channels") else {}),
                },
                "latent_shape": list(latent),
                "scaling_factor": cfg.latent.scale_factor if run.autoencoder is not None else None,
            }
            path = hf_export.export_conditional(
                net, cfg, latent[-1], Path(out), vae=run.autoencoder, conditioning=conditioning
            )
            kind, loads_with = "UNet2DConditionModel", "diffusers.UNet2DConditionModel.from_pretrained(OUT/unet)"
        else:
            shape = tuple(run.network.data_shape)
            if len(shape) != 3 or shape[1] != shape[2]:
                raise DiffusersError(f"a network on data of shape {shape} is not a square-image UNet2DModel")
            path = hf_export.export_ddpm(run.network, run.config, shape[-1], Path(out))
            kind, loads_with = "DDPMPipeline", "diffusers.DDPMPipeline.from_pretrained"
            if run.config.label.classes:  # DDPMPipeline passes no labels: the U-Net itself takes them
                kind, loads_with = "UNet2DModel", "diffusers.UNet2DModel.from_pretrained(OUT/unet)"
                lab = run.config.label
                names = list(lab.names) or [str(k) for k in range(lab.classes)]
                # DiTPipeline's id2label convention, in a file of its own beside the folder's model_index.json
                labels = {"classes": lab.classes, "null_label": lab.classes, "id2label": dict(enumerate(names))}
                (path / "class_labels.json").write_text(json.dumps(labels, indent=2) + "\n")
                extra["class_labels"] = labels
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
