"""Denoising networks: ``net(x_t, t) -> output``; the output's meaning is set by an adapter.

``networks`` imports only ``kuosan.utils`` and ``kuosan.ops`` (and torch). ``NETWORKS`` maps config names to classes;
every network keeps its constructor arguments in ``net.config`` so ``NETWORKS[name](**config)``
rebuilds it from a checkpoint.
"""

from __future__ import annotations

from .attention import CrossAttention, SelfAttention2d, SpatialTransformer
from .autoencoder import Autoencoder, AutoencoderKL, DiagonalGaussian, encode_latents, latent_scale_factor
from .autoencoder_diffusers import autoencoder_from_diffusers, load_diffusers_vae
from .blocks import Downsample, ResBlock, Upsample
from .embeddings import TimestepEmbedding, timestep_embedding
from .mlp import MLPDenoiser
from .text_encoder import TextEncoder
from .unet import UNet

NETWORKS = {"unet": UNet, "mlp": MLPDenoiser, "vae": AutoencoderKL, "ae": Autoencoder}
AUTOENCODERS = ("vae", "ae")  # NETWORKS entries that are first-stage autoencoders, not denoisers

__all__ = [
    "AUTOENCODERS",
    "NETWORKS",
    "Autoencoder",
    "AutoencoderKL",
    "CrossAttention",
    "DiagonalGaussian",
    "Downsample",
    "MLPDenoiser",
    "ResBlock",
    "SelfAttention2d",
    "SpatialTransformer",
    "TextEncoder",
    "TimestepEmbedding",
    "UNet",
    "Upsample",
    "autoencoder_from_diffusers",
    "encode_latents",
    "latent_scale_factor",
    "load_diffusers_vae",
    "timestep_embedding",
]
