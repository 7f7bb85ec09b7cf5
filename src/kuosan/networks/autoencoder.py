"""The first stage of latent diffusion: a KL-regularised variational autoencoder and a plain
autoencoder (Rombach et al. 2022, Sec. 3.1 and App. G; Kingma & Welling 2014).

Notation: ``x`` images (B, C, H, W) in [-1, 1]; ``z`` latents (B, C_lat, H/f, W/f) with the
downsampling factor f = 2**(len(block_out_channels) - 1); the encoder q_phi(z | x) =
N(z; mu, diag(sigma^2)) gives ``mean`` = mu and ``logvar`` = log sigma^2; the decoder maps z to
x_hat = D(z).

Layout (the LDM / Stable Diffusion autoencoder at small scale; module and parameter names follow
diffusers' ``AutoencoderKL`` so Stable Diffusion VAE weights load, see ``autoencoder_diffusers.py``):

    Encoder: conv_in 3x3; per level i: layers_per_block x ResnetBlock, then (not after the last level)
             a stride-2 3x3 conv on the bottom/right padded map; mid_block: ResnetBlock, AttentionBlock,
             ResnetBlock; GroupNorm, SiLU, conv_out 3x3 -> 2 C_lat channels (mean, logvar) for the VAE,
             C_lat for the plain autoencoder
    quant_conv 1x1 (moments -> moments)  ...  post_quant_conv 1x1 (C_lat -> C_lat)
    Decoder: conv_in 3x3; mid_block; per level (reversed): (layers_per_block + 1) x ResnetBlock, then
             (not after level 0) nearest x2 + 3x3 conv; GroupNorm, SiLU, conv_out 3x3 -> C channels

The ResNet blocks carry no time embedding (the autoencoder sees no noise level).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from kuosan import ops
from kuosan.ops import attend

from .blocks import Upsample, normalization

LOGVAR_RANGE = (-30.0, 20.0)  # LDM clamps the encoder's log-variance to this range


class ResnetBlock(nn.Module):
    r"""Residual block without time embedding (the LDM autoencoder's ``ResnetBlock``):

    .. math:: \mathrm{out} = \mathrm{skip}(x) + \mathrm{Conv}(\mathrm{SiLU}(\mathrm{GN}(
              \mathrm{Conv}(\mathrm{SiLU}(\mathrm{GN}(x))))))

    ``skip`` is the identity, or a 1x1 convolution (``conv_shortcut``) when the channels change.
    """

    def __init__(self, *, in_channels: int, out_channels: int, groups: int = 32):
        super().__init__()
        self.norm1 = normalization(in_channels, groups=groups)
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, padding=1)
        self.norm2 = normalization(out_channels, groups=groups)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1)
        self.conv_shortcut = nn.Conv2d(in_channels, out_channels, 1) if in_channels != out_channels else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C_in, H, W) -> (B, C_out, H, W)."""
        h = self.conv1(ops.group_norm_act(x, self.norm1, act=True))
        h = self.conv2(ops.group_norm_act(h, self.norm2, act=True))
        return (x if self.conv_shortcut is None else self.conv_shortcut(x)) + h


class AttentionBlock(nn.Module):
    r"""Single-head residual self-attention over the pixels (the LDM autoencoder's ``AttnBlock``):

    .. math:: \mathrm{out} = x + \mathrm{softmax}(Q K^\top / \sqrt{C})\, V\, W_o, \quad
              Q, K, V = \mathrm{GN}(x) W_q,\ \mathrm{GN}(x) W_k,\ \mathrm{GN}(x) W_v
    """

    def __init__(self, *, channels: int, groups: int = 32):
        super().__init__()
        self.group_norm = normalization(channels, groups=groups)
        self.to_q = nn.Linear(channels, channels)
        self.to_k = nn.Linear(channels, channels)
        self.to_v = nn.Linear(channels, channels)
        self.to_out = nn.Linear(channels, channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) -> (B, C, H, W)."""
        b, c, h, w = x.shape
        tokens = ops.group_norm_act(x, self.group_norm).flatten(2).transpose(1, 2)  # (B, N, C)
        q, k, v = (proj(tokens)[:, None] for proj in (self.to_q, self.to_k, self.to_v))  # (B, 1, N, C)
        out = self.to_out(attend(q, k, v)[:, 0])
        return x + out.transpose(1, 2).reshape(b, c, h, w)


class PaddedDownsample(nn.Module):
    """Halve the resolution as LDM's autoencoder does: pad one zero row/column at the bottom/right,
    then a stride-2 3x3 convolution without padding."""

    def __init__(self, *, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, stride=2, padding=0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) -> (B, C, H/2, W/2) for even H, W."""
        return self.conv(F.pad(x, (0, 1, 0, 1)))


class Level(nn.Module):
    """One resolution of the encoder or decoder: ResNet blocks, then an optional resampling."""

    def __init__(self, c_in: int, c_out: int, num_blocks: int, resample: str | None, groups: int):
        super().__init__()
        self.resnets = nn.ModuleList(
            ResnetBlock(in_channels=c_in if i == 0 else c_out, out_channels=c_out, groups=groups)
            for i in range(num_blocks)
        )
        if resample == "down":
            self.downsamplers = nn.ModuleList([PaddedDownsample(channels=c_out)])
        elif resample == "up":
            self.upsamplers = nn.ModuleList([Upsample(channels=c_out)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for block in self.resnets:
            x = block(x)
        for name in ("downsamplers", "upsamplers"):
            for resample in getattr(self, name, ()):
                x = resample(x)
        return x


class MidBlock(nn.Module):
    """ResnetBlock, AttentionBlock (optional), ResnetBlock at the lowest resolution."""

    def __init__(self, channels: int, groups: int, attention: bool):
        super().__init__()
        self.resnets = nn.ModuleList(
            ResnetBlock(in_channels=channels, out_channels=channels, groups=groups) for _ in range(2)
        )
        self.attentions = nn.ModuleList([AttentionBlock(channels=channels, groups=groups)] if attention else [])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.resnets[0](x)
        for attn in self.attentions:
            x = attn(x)
        return self.resnets[1](x)


class Encoder(nn.Module):
    """x (B, in_channels, H, W) -> features (B, out_channels, H/f, W/f), f = 2**(levels - 1)."""

    def __init__(
        self,
        *,
        in_channels: int,
        out_channels: int,
        block_out_channels: Sequence[int],
        layers_per_block: int,
        groups: int = 32,
        mid_attention: bool = True,
    ):
        super().__init__()
        chans = list(block_out_channels)
        self.conv_in = nn.Conv2d(in_channels, chans[0], 3, padding=1)
        self.down_blocks = nn.ModuleList(
            Level(chans[max(i - 1, 0)], c, layers_per_block, "down" if i < len(chans) - 1 else None, groups)
            for i, c in enumerate(chans)
        )
        self.mid_block = MidBlock(chans[-1], groups, mid_attention)
        self.conv_norm_out = normalization(chans[-1], groups=groups)
        self.conv_out = nn.Conv2d(chans[-1], out_channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv_in(x)
        for level in self.down_blocks:
            h = level(h)
        h = self.mid_block(h)
        return self.conv_out(ops.group_norm_act(h, self.conv_norm_out, act=True))


class Decoder(nn.Module):
    """z (B, in_channels, h, w) -> x_hat (B, out_channels, h f, w f)."""

    def __init__(
        self,
        *,
        in_channels: int,
        out_channels: int,
        block_out_channels: Sequence[int],
        layers_per_block: int,
        groups: int = 32,
        mid_attention: bool = True,
    ):
        super().__init__()
        chans = list(reversed(block_out_channels))
        self.conv_in = nn.Conv2d(in_channels, chans[0], 3, padding=1)
        self.mid_block = MidBlock(chans[0], groups, mid_attention)
        self.up_blocks = nn.ModuleList(
            Level(chans[max(i - 1, 0)], c, layers_per_block + 1, "up" if i < len(chans) - 1 else None, groups)
            for i, c in enumerate(chans)
        )
        self.conv_norm_out = normalization(chans[-1], groups=groups)
        self.conv_out = nn.Conv2d(chans[-1], out_channels, 3, padding=1)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        h = self.mid_block(self.conv_in(z))
        for level in self.up_blocks:
            h = level(h)
        return self.conv_out(ops.group_norm_act(h, self.conv_norm_out, act=True))


class DiagonalGaussian:
    r"""q(z | x) = N(z; mu, diag(sigma^2)), per sample, with log sigma^2 clamped to [-30, 20] as LDM does.

    ``mean``, ``logvar``: (B, ...) tensors (held in float32); ``std`` = exp(logvar / 2).
    """

    def __init__(self, mean: torch.Tensor, logvar: torch.Tensor):
        if mean.shape != logvar.shape:
            raise ValueError(f"mean and logvar must have one shape, got {tuple(mean.shape)} and {tuple(logvar.shape)}")
        self.mean = mean.float()
        self.logvar = logvar.float().clamp(*LOGVAR_RANGE)
        self.std = torch.exp(0.5 * self.logvar)
        self.var = torch.exp(self.logvar)

    @classmethod
    def from_moments(cls, moments: torch.Tensor) -> DiagonalGaussian:
        """Split the encoder's (B, 2 C, h, w) output into mean (first C channels) and logvar."""
        mean, logvar = moments.chunk(2, dim=1)
        return cls(mean, logvar)

    def sample(self, generator: torch.Generator | None = None, *, eps: torch.Tensor | None = None) -> torch.Tensor:
        """The reparameterisation z = mu + sigma * eps, eps ~ N(0, I) (Kingma & Welling 2014, Eq. 10;
        seed 002); ``eps`` may be given (then ``generator`` is unused)."""
        if eps is None:
            where = generator.device if generator is not None else self.mean.device  # drawn where the generator is
            eps = torch.randn(self.mean.shape, generator=generator, dtype=self.mean.dtype, device=where)
            eps = eps.to(self.mean.device)
        return self.mean + self.std * eps

    def mode(self) -> torch.Tensor:
        """The most likely latent, mu."""
        return self.mean

    def kl(self) -> torch.Tensor:
        r"""KL(q || N(0, I)) per sample in nats (Kingma & Welling 2014, App. B):
        :math:`\tfrac12 \sum_j (\mu_j^2 + \sigma_j^2 - 1 - \log \sigma_j^2)`, shape (B,)."""
        return 0.5 * (self.mean.pow(2) + self.var - 1.0 - self.logvar).flatten(1).sum(1)

    def nll(self, z: torch.Tensor) -> torch.Tensor:
        r"""-log q(z) per sample in nats: :math:`\tfrac12 \sum_j (\log 2\pi + \log\sigma_j^2 +
        (z_j - \mu_j)^2 / \sigma_j^2)`, shape (B,)."""
        return 0.5 * (math.log(2 * math.pi) + self.logvar + (z.float() - self.mean).pow(2) / self.var).flatten(1).sum(1)


class _Autoencoder(nn.Module):
    """What the VAE and the plain autoencoder share: encoder, 1x1 convs, decoder, shapes, config."""

    variational = False

    def __init__(
        self,
        *,
        in_channels: int = 3,
        out_channels: int | None = None,
        latent_channels: int = 4,
        block_out_channels: Sequence[int] = (32, 64, 64),
        layers_per_block: int = 1,
        groups: int = 32,
        mid_attention: bool = True,
        quant_conv: bool = True,
        scaling_factor: float | None = None,
        shift_factor: float | None = None,
    ):
        super().__init__()
        out_channels = in_channels if out_channels is None else out_channels
        block_out_channels = tuple(int(c) for c in block_out_channels)
        if not block_out_channels or min(block_out_channels) < 1 or latent_channels < 1 or layers_per_block < 1:
            raise ValueError(
                "block_out_channels must be a non-empty list of positive widths, latent_channels and "
                "layers_per_block at least 1"
            )
        self._config: dict[str, Any] = dict(
            in_channels=in_channels,
            out_channels=out_channels,
            latent_channels=latent_channels,
            block_out_channels=block_out_channels,
            layers_per_block=layers_per_block,
            groups=groups,
            mid_attention=mid_attention,
            quant_conv=quant_conv,
            scaling_factor=scaling_factor,
            shift_factor=shift_factor,
        )
        moments = 2 * latent_channels if self.variational else latent_channels
        common = dict(
            block_out_channels=block_out_channels,
            layers_per_block=layers_per_block,
            groups=groups,
            mid_attention=mid_attention,
        )
        self.encoder = Encoder(in_channels=in_channels, out_channels=moments, **common)
        self.decoder = Decoder(in_channels=latent_channels, out_channels=out_channels, **common)
        self.quant_conv = nn.Conv2d(moments, moments, 1) if quant_conv else None
        self.post_quant_conv = nn.Conv2d(latent_channels, latent_channels, 1) if quant_conv else None

    @property
    def config(self) -> dict[str, Any]:
        """Constructor arguments (a fresh plain dict): ``type(net)(**config)`` rebuilds this net.
        ``scaling_factor``/``shift_factor`` are only recorded (Stable Diffusion's latent scaling,
        z_diffusion = (z - shift) * scale); encode/decode do not apply them."""
        return dict(self._config)

    @property
    def downsampling_factor(self) -> int:
        """f = 2**(levels - 1): the latent is H/f x W/f."""
        return 2 ** (len(self._config["block_out_channels"]) - 1)

    def latent_shape(self, image_shape: Sequence[int]) -> tuple[int, int, int]:
        """(C, H, W) of an image -> (C_lat, H/f, W/f) of its latent."""
        c, h, w = (int(s) for s in image_shape[-3:])
        f = self.downsampling_factor
        if len(image_shape) < 3 or c != self._config["in_channels"] or h % f or w % f:
            raise ValueError(
                f"images of shape {tuple(image_shape)} do not fit this autoencoder: it takes "
                f"{self._config['in_channels']} channels and H, W divisible by {f}"
            )
        return self._config["latent_channels"], h // f, w // f

    def _check(self, x: torch.Tensor) -> None:
        if x.ndim != 4:
            raise ValueError(f"the autoencoder expects images (B, C, H, W), got shape {tuple(x.shape)}")
        self.latent_shape(x.shape)

    def _moments(self, x: torch.Tensor) -> torch.Tensor:
        self._check(x)
        h = self.encoder(x)
        return self.quant_conv(h) if self.quant_conv is not None else h

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """Latents z (B, C_lat, h, w) -> images x_hat (B, C, h f, w f)."""
        if z.ndim != 4 or z.shape[1] != self._config["latent_channels"]:
            raise ValueError(
                f"latents must have shape (B, {self._config['latent_channels']}, h, w), got {tuple(z.shape)}"
            )
        if self.post_quant_conv is not None:
            z = self.post_quant_conv(z)
        return self.decoder(z)


class AutoencoderKL(_Autoencoder):
    """The KL-regularised VAE of latent diffusion: ``encode(x) -> DiagonalGaussian``, ``decode(z) -> x_hat``.

    Args:
        in_channels / out_channels: image channels (out defaults to in).
        latent_channels: C_lat (Stable Diffusion: 4).
        block_out_channels: width per level; L levels downsample L - 1 times (SD: (128, 256, 512, 512), f = 8;
            here (32, 64, 64): 32x32 -> 8x8).
        layers_per_block: ResNet blocks per encoder level (the decoder has one more).
        groups: GroupNorm groups (clamped to a divisor of each width).
        mid_attention: self-attention in the middle blocks.
        quant_conv: the 1x1 ``quant_conv``/``post_quant_conv`` around the latent (SD 1/2 have them).
        scaling_factor, shift_factor: recorded only (see ``config``).
    """

    variational = True

    def encode(self, x: torch.Tensor) -> DiagonalGaussian:
        """x (B, C, H, W) -> q(z | x), a DiagonalGaussian over (B, C_lat, H/f, W/f)."""
        return DiagonalGaussian.from_moments(self._moments(x))

    def forward(self, x: torch.Tensor, eps: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """(x_hat, KL(q(z|x) || N(0, I)) per sample): decode z = mu + sigma * eps (mu if ``eps`` is None)."""
        posterior = self.encode(x)
        z = posterior.mode() if eps is None else posterior.sample(eps=eps)
        return self.decode(z.to(x.dtype)), posterior.kl()


class Autoencoder(_Autoencoder):
    """The plain deterministic autoencoder with the same encoder and decoder: ``encode(x) -> z``.
    Arguments as :class:`AutoencoderKL`."""

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """x (B, C, H, W) -> z (B, C_lat, H/f, W/f)."""
        return self._moments(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x_hat = D(E(x))."""
        return self.decode(self.encode(x))


def encode_latents(
    autoencoder: nn.Module, x: torch.Tensor, *, sample: bool = False, generator: torch.Generator | None = None
) -> torch.Tensor:
    """Latents of images for either autoencoder: the plain one's z; the VAE's posterior mean mu, or a
    reparameterised draw mu + sigma * eps when ``sample`` (eps from ``generator``)."""
    out = autoencoder.encode(x)
    if isinstance(out, DiagonalGaussian):
        return out.sample(generator) if sample else out.mode()
    return out


@torch.no_grad()
def latent_scale_factor(
    autoencoder: nn.Module, images: torch.Tensor, *, batch_size: int = 256, generator: torch.Generator | None = None
) -> float:
    """1 / std of the latents of ``images``, the factor that gives the diffusion model unit-variance
    latents (Rombach et al. 2022, Sec. 4.3.2 and App. G: Stable Diffusion's 0.18215). As LDM's
    ``scale_by_std``: the VAE's latents are posterior draws mu + sigma * eps (eps from ``generator``),
    the std is taken over every element of the sample."""
    if images.shape[0] < 2:
        raise ValueError("latent_scale_factor needs at least 2 images")
    z = torch.cat(
        [
            encode_latents(autoencoder, chunk, sample=True, generator=generator).float()
            for chunk in images.split(batch_size)
        ]
    )
    std = float(z.std())
    if not std > 0:
        raise ValueError(f"the latents have std {std}: no scale factor")
    return 1.0 / std
