"""The diffusion U-Net of DDPM (Ho et al. 2020, App. B) in improved-diffusion's form (Nichol &
Dhariwal 2021).

Notation: ``x`` is the noisy image x_t of shape (B, C, H, W); ``t`` the timestep, shape (B,), possibly
fractional. What the output means (epsilon, x0, v, ...) is decided by the adapter in
``kuosan.diffusion.parameterization``, not here.

Layout, with L = len(channel_mult) levels; level ``i`` works at resolution (H / 2**i, W / 2**i) with
``base_channels * channel_mult[i]`` channels:

    input conv 3x3
    down:   per level, num_res_blocks x [ResBlock (+ SelfAttention2d)], then Downsample (not after
            the last level); every output is kept as a skip
    middle: ResBlock, SelfAttention2d, ResBlock
    up:     per level (reversed), (num_res_blocks + 1) x [concat(skip), ResBlock (+ SelfAttention2d)],
            then Upsample (not after level 0)
    out:    GroupNorm, SiLU, conv 3x3 (zero-initialised: a fresh net outputs exactly 0)

Conditioning (all optional; without it the net is DDPM's unconditional U-Net, unchanged):

- text tokens (Rombach et al. 2022, Sec. 3.3): with ``context_dim`` set, every attention layer is
  a :class:`SpatialTransformer` (self-attention, cross-attention to ``context`` (B, L, context_dim)
  with padding mask ``context_mask`` (B, L), GEGLU feed-forward) instead of ``SelfAttention2d``;
- a pooled vector (B, pooled_dim) (SDXL's ``add_embedding``): Linear, SiLU, Linear to the time
  embedding's width, added to it;
- spatial conditions by concatenation (SD's inpainting U-Net: 4 latent + 1 mask + 4 masked-image
  latent channels): the input conv sees concat(x_t, cond_image) with ``cond_channels`` extra
  channels; the output still has ``out_channels``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.utils.checkpoint
from torch import nn

from kuosan import ops

from .attention import SelfAttention2d, SpatialTransformer
from .blocks import Downsample, ResBlock, Upsample, normalization, zero_module
from .embeddings import TimestepEmbedding, broadcast_timesteps


class EmbedSequential(nn.Sequential):
    """A Sequential that passes the timestep embedding to the layers that take one (ResBlocks) and
    the context tokens to the SpatialTransformers."""

    def forward(
        self,
        x: torch.Tensor,
        emb: torch.Tensor,
        context: torch.Tensor | None = None,  # type: ignore[override]
        context_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        for layer in self:
            if isinstance(layer, ResBlock):
                x = layer(x, emb)
            elif isinstance(layer, SpatialTransformer):
                x = layer(x, context, context_mask)
            else:
                x = layer(x)
        return x


def _call(block, *args):
    return block(*args)


class UNet(nn.Module):
    """Timestep-conditioned U-Net: ``forward(x, t) -> (B, out_channels, H, W)``.

    Args:
        in_channels: image channels.
        out_channels: output channels (default ``in_channels``; 2x for a learned variance).
        base_channels: channels at level 0 (improved-diffusion's ``model_channels``); the time
            embedding is ``4 * base_channels`` wide.
        channel_mult: channel multiplier per level; L = len(channel_mult) levels, so H and W must
            be divisible by 2**(L - 1). DDPM CIFAR-10 uses (1, 2, 2, 2); 8x8 digits use (1, 2) or
            (1, 2, 2) (8 -> 4 -> 2).
        num_res_blocks: ResBlocks per level on the down path (the up path has one more).
        attention_levels: indices into ``channel_mult`` of the levels with self-attention; level
            ``i`` is at resolution H / 2**i, so (1,) means 16x16 for 32x32 inputs (DDPM's choice)
            and 4x4 for 8x8 inputs. The middle block always has attention.
        num_heads: attention heads; must divide the channel count of every attention level.
        dropout: dropout in every ResBlock.
        scale_shift: FiLM (scale-shift) timestep conditioning in the ResBlocks.
        groups: GroupNorm groups, clamped to a divisor of each channel count.
        context_dim: width of the text tokens for cross-attention (None: no cross-attention).
        pooled_dim: width of a pooled conditioning vector added to the time embedding (None: none).
        cond_channels: extra input channels concatenated to x_t (0: none).
        num_classes: class-conditional (improved/guided-diffusion's ``class_cond``): an embedding of
            ``class_labels`` in [0, num_classes] added to the time embedding, index ``num_classes``
            the null label that classifier-free guidance trains with (None: no labels).

    ``self.config`` holds these arguments as a plain dict, so ``UNet(**net.config)`` rebuilds the
    same architecture (also after a JSON round trip).
    """

    def __init__(
        self,
        *,
        in_channels: int = 1,
        out_channels: int | None = None,
        base_channels: int = 64,
        channel_mult: Sequence[int] = (1, 2, 2),
        num_res_blocks: int = 2,
        attention_levels: Sequence[int] = (1,),
        num_heads: int = 4,
        dropout: float = 0.0,
        scale_shift: bool = True,
        groups: int = 32,
        context_dim: int | None = None,
        pooled_dim: int | None = None,
        cond_channels: int = 0,
        num_classes: int | None = None,
    ):
        super().__init__()
        self.gradient_checkpointing = False  # a training option (enable_gradient_checkpointing), not architecture
        out_channels = in_channels if out_channels is None else out_channels
        channel_mult = tuple(int(m) for m in channel_mult)
        attention_levels = tuple(sorted({int(i) for i in attention_levels}))
        if not channel_mult:
            raise ValueError("channel_mult must have at least one level")
        bad = [i for i in attention_levels if not 0 <= i < len(channel_mult)]
        if bad:
            raise ValueError(f"attention_levels {bad} out of range for {len(channel_mult)} levels")
        self._config: dict[str, Any] = dict(
            in_channels=in_channels,
            out_channels=out_channels,
            base_channels=base_channels,
            channel_mult=channel_mult,
            num_res_blocks=num_res_blocks,
            attention_levels=attention_levels,
            num_heads=num_heads,
            dropout=dropout,
            scale_shift=scale_shift,
            groups=groups,
        )
        if cond_channels < 0:
            raise ValueError(f"cond_channels must be >= 0, got {cond_channels}")
        # conditioning keys only when used, so an unconditional net's config is what it always was
        if num_classes is not None and num_classes < 1:
            raise ValueError(f"num_classes must be >= 1 (or None), got {num_classes}")
        for key, value in (
            ("context_dim", context_dim), ("pooled_dim", pooled_dim), ("cond_channels", cond_channels),
            ("num_classes", num_classes),
        ):  # fmt: skip
            if value:
                self._config[key] = int(value)
        self.context_dim, self.pooled_dim, self.cond_channels = context_dim, pooled_dim, int(cond_channels)
        self.num_classes = int(num_classes) if num_classes else None
        emb_channels = 4 * base_channels
        self.num_levels = len(channel_mult)
        self.time_embed = TimestepEmbedding(freq_dim=base_channels, embed_dim=emb_channels)
        if pooled_dim:
            self.pooled_embed = nn.Sequential(
                nn.Linear(pooled_dim, emb_channels), nn.SiLU(), nn.Linear(emb_channels, emb_channels)
            )
        if self.num_classes:
            self.label_embed = nn.Embedding(self.num_classes + 1, emb_channels)  # + the null label

        def res(c_in: int, c_out: int) -> ResBlock:
            return ResBlock(
                in_channels=c_in,
                out_channels=c_out,
                emb_channels=emb_channels,
                dropout=dropout,
                scale_shift=scale_shift,
                groups=groups,
            )

        def attn(c: int) -> nn.Module:
            if context_dim:
                return SpatialTransformer(
                    channels=c, context_dim=context_dim, num_heads=num_heads, groups=groups, dropout=dropout
                )
            return SelfAttention2d(channels=c, num_heads=num_heads, groups=groups)

        self.input_conv = nn.Conv2d(in_channels + cond_channels, base_channels, 3, padding=1)
        ch = base_channels
        skip_channels = [ch]
        self.down = nn.ModuleList()
        for level, mult in enumerate(channel_mult):
            for _ in range(num_res_blocks):
                layers: list[nn.Module] = [res(ch, base_channels * mult)]
                ch = base_channels * mult
                if level in attention_levels:
                    layers.append(attn(ch))
                self.down.append(EmbedSequential(*layers))
                skip_channels.append(ch)
            if level != len(channel_mult) - 1:
                self.down.append(EmbedSequential(Downsample(channels=ch)))
                skip_channels.append(ch)

        self.middle = EmbedSequential(res(ch, ch), attn(ch), res(ch, ch))

        self.up = nn.ModuleList()
        for level, mult in reversed(list(enumerate(channel_mult))):
            for i in range(num_res_blocks + 1):
                layers = [res(ch + skip_channels.pop(), base_channels * mult)]
                ch = base_channels * mult
                if level in attention_levels:
                    layers.append(attn(ch))
                if level != 0 and i == num_res_blocks:
                    layers.append(Upsample(channels=ch))
                self.up.append(EmbedSequential(*layers))

        self.out = nn.Sequential(
            normalization(ch, groups=groups),
            nn.SiLU(),
            zero_module(nn.Conv2d(ch, out_channels, 3, padding=1)),
        )

    @property
    def config(self) -> dict[str, Any]:
        """Constructor arguments (a fresh plain dict): ``UNet(**config)`` rebuilds this net."""
        return dict(self._config)

    def forward(
        self,
        x: torch.Tensor,
        t: torch.Tensor | float,
        *,
        context: torch.Tensor | None = None,
        context_mask: torch.Tensor | None = None,
        pooled: torch.Tensor | None = None,
        cond_image: torch.Tensor | None = None,
        class_labels: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """x_t (B, C, H, W), timesteps t (B,) or scalar -> (B, out_channels, H, W); the conditioning
        inputs the net was built for: ``context`` (B, L, context_dim) with ``context_mask`` (B, L),
        ``pooled`` (B, pooled_dim), ``cond_image`` (B, cond_channels, H, W), ``class_labels`` (B,)
        integers in [0, num_classes] (num_classes: the null label)."""
        if x.ndim != 4:
            raise ValueError(f"UNet expects x of shape (B, C, H, W), got {tuple(x.shape)}")
        self._check_conditioning(x, context, pooled, cond_image, class_labels)
        factor = 2 ** (self.num_levels - 1)
        if x.shape[-2] % factor or x.shape[-1] % factor:
            raise ValueError(
                f"H and W must be divisible by {factor} for {self.num_levels} levels, got {tuple(x.shape[-2:])}"
            )
        emb = self.time_embed(broadcast_timesteps(t, x))
        if self.pooled_dim:
            emb = emb + self.pooled_embed(pooled.to(emb.dtype))
        if self.num_classes:
            emb = emb + self.label_embed(class_labels.long()).to(emb.dtype)
        h = ops.conv2d(torch.cat([x, cond_image.to(x.dtype)], dim=1) if self.cond_channels else x, self.input_conv)
        skips = [h]
        run = self._recomputed if self.gradient_checkpointing and torch.is_grad_enabled() else _call
        for block in self.down:
            h = run(block, h, emb, context, context_mask)
            skips.append(h)
        h = run(self.middle, h, emb, context, context_mask)
        for block in self.up:
            h = run(block, torch.cat([h, skips.pop()], dim=1), emb, context, context_mask)
        norm, _, conv = self.out  # (GN, SiLU, conv), the SiLU applied by the norm (ops.group_norm_act)
        return ops.conv2d(ops.group_norm_act(h, norm, act=True), conv)

    def enable_gradient_checkpointing(self, enabled: bool = True) -> None:
        """Recompute each block's activations in the backward pass instead of keeping them (less
        memory for large models on small GPUs, about a third more compute; the same gradients)."""
        self.gradient_checkpointing = enabled

    @staticmethod
    def _recomputed(block, *args):
        return torch.utils.checkpoint.checkpoint(block, *args, use_reentrant=False)

    def _check_conditioning(self, x, context, pooled, cond_image, class_labels=None) -> None:
        """ValueError naming a missing, unexpected or misshapen conditioning input."""
        b = x.shape[0]
        wanted = (
            ("context", context, self.context_dim, (b, None, self.context_dim)),
            ("pooled", pooled, self.pooled_dim, (b, self.pooled_dim)),
            ("cond_image", cond_image, self.cond_channels, (b, self.cond_channels, *x.shape[2:])),
            ("class_labels", class_labels, self.num_classes, (b,)),
        )
        for name, value, used, shape in wanted:
            if not used and value is not None:
                raise ValueError(f"this UNet was built without {name} conditioning but got {name}=")
            if used and value is None:
                raise ValueError(f"this UNet needs {name}= (built with {name} conditioning)")
            if used and (value.ndim != len(shape) or any(s is not None and s != v for s, v in zip(shape, value.shape))):
                raise ValueError(
                    f"{name} must have shape {tuple('L' if s is None else s for s in shape)}, got {tuple(value.shape)}"
                )
