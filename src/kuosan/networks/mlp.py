"""Residual MLP denoiser for low-dimensional toy data (2-D mixtures, swiss roll, ...).

Notation: ``x`` is x_t of shape (B, dim) (or (B, *shape) with prod(shape) = dim); ``t`` the
timestep, shape (B,) or scalar, possibly fractional. As for the U-Net, the meaning of the output
(epsilon, x0, score, ...) belongs to the adapter, not to the network.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from .blocks import zero_module
from .embeddings import TimestepEmbedding, broadcast_timesteps


class ResidualMLPBlock(nn.Module):
    r"""Pre-norm residual MLP block with FiLM timestep conditioning.

    .. math::
        [s, b] = \mathrm{Linear}(\mathrm{SiLU}(emb)), \quad
        \mathrm{out} = h + W_2\, \mathrm{Dropout}(\mathrm{SiLU}(W_1 (\mathrm{LN}(h)(1 + s) + b)))

    :math:`W_2` is zero-initialised, so a fresh block is the identity.
    """

    def __init__(self, *, hidden: int, emb_channels: int, dropout: float = 0.0):
        super().__init__()
        self.norm = nn.LayerNorm(hidden)
        self.emb = nn.Sequential(nn.SiLU(), nn.Linear(emb_channels, 2 * hidden))
        self.mlp = nn.Sequential(
            nn.Linear(hidden, hidden),
            nn.SiLU(),
            nn.Dropout(dropout),
            zero_module(nn.Linear(hidden, hidden)),
        )

    def forward(self, h: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        """(B, hidden), (B, E) -> (B, hidden)."""
        scale, shift = self.emb(emb).to(h.dtype).chunk(2, dim=-1)
        return h + self.mlp(self.norm(h) * (1 + scale) + shift)


class MLPDenoiser(nn.Module):
    """Timestep-conditioned residual MLP: ``forward(x, t) -> tensor shaped like x``.

    in Linear -> depth x ResidualMLPBlock -> LayerNorm, SiLU, Linear (zero-initialised, so a fresh
    net outputs exactly 0). The timestep enters through the sinusoidal embedding
    (:func:`~kuosan.networks.embeddings.timestep_embedding`), which resolves timesteps on the scale
    of 0..1000; a continuous-time model with t in [0, 1] should pass ``1000 * t``.

    Args:
        dim: data dimension (2 for 2-D toy data).
        hidden: width of the residual stream.
        depth: number of residual blocks.
        time_dim: width of the sinusoidal timestep embedding.
        dropout: dropout inside every block.

    ``self.config`` holds these arguments, so ``MLPDenoiser(**net.config)`` rebuilds the net.
    """

    def __init__(
        self,
        *,
        dim: int = 2,
        hidden: int = 256,
        depth: int = 4,
        time_dim: int = 64,
        dropout: float = 0.0,
    ):
        super().__init__()
        self._config: dict[str, Any] = dict(dim=dim, hidden=hidden, depth=depth, time_dim=time_dim, dropout=dropout)
        self.time_embed = TimestepEmbedding(freq_dim=time_dim, embed_dim=hidden)
        self.input_proj = nn.Linear(dim, hidden)
        self.blocks = nn.ModuleList(
            ResidualMLPBlock(hidden=hidden, emb_channels=hidden, dropout=dropout) for _ in range(depth)
        )
        self.out = nn.Sequential(nn.LayerNorm(hidden), nn.SiLU(), zero_module(nn.Linear(hidden, dim)))

    @property
    def config(self) -> dict[str, Any]:
        """Constructor arguments (a fresh plain dict): ``MLPDenoiser(**config)`` rebuilds this net."""
        return dict(self._config)

    def forward(self, x: torch.Tensor, t: torch.Tensor | float) -> torch.Tensor:
        """x_t (B, dim), timesteps t (B,) or scalar -> (B, dim)."""
        dim = self._config["dim"]
        if x.ndim < 2 or x[0].numel() != dim:
            raise ValueError(f"MLPDenoiser(dim={dim}) expects x of shape (B, {dim}), got {tuple(x.shape)}")
        emb = self.time_embed(broadcast_timesteps(t, x))
        h = self.input_proj(x.flatten(1))
        for block in self.blocks:
            h = block(h, emb)
        return self.out(h).reshape(x.shape)
