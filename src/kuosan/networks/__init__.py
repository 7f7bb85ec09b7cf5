"""Denoising networks: ``net(x_t, t) -> output``; the output's meaning is set by an adapter.

``networks`` imports only ``kuosan.utils`` (and torch). ``NETWORKS`` maps config names to classes;
every network keeps its constructor arguments in ``net.config`` so ``NETWORKS[name](**config)``
rebuilds it from a checkpoint.
"""
from __future__ import annotations

from .attention import SelfAttention2d
from .blocks import Downsample, ResBlock, Upsample
from .embeddings import TimestepEmbedding, timestep_embedding
from .mlp import MLPDenoiser
from .unet import UNet

NETWORKS = {"unet": UNet, "mlp": MLPDenoiser}

__all__ = [
    "NETWORKS",
    "Downsample",
    "MLPDenoiser",
    "ResBlock",
    "SelfAttention2d",
    "TimestepEmbedding",
    "UNet",
    "Upsample",
    "timestep_embedding",
]
