"""Training losses of the first-stage autoencoders, per sample (shape (B,)).

Notation (Kingma & Welling 2014; seeds 001/002): q(z | x) = N(mu, diag(sigma^2)) the encoder,
x_hat = D(z) the decoder, z = mu + sigma * eps the reparameterised latent, D = C H W pixels.

The VAE's negative ELBO (evidence lower bound) with a Gaussian decoder p(x | z) = N(x; D(z), s^2 I):

    -ELBO(x) = E_q[-log p(x | z)] + KL(q(z | x) || N(0, I))
             = E_q[ ||x - D(z)||^2 / (2 s^2) ] + D/2 log(2 pi s^2) + KL            (in nats)

LDM trains its first stage with a reconstruction term, a small KL weight (1e-6 in the released
configs) and perceptual + patch-GAN terms (Rombach et al. 2022, App. G). Here:

    loss(x) = sum_pixels rho(x - x_hat) + kl_weight * KL(q(z | x) || N(0, I)),   rho = |.| (l1) or (.)^2 (l2)

The reconstruction is *summed* over pixels (of images in [-1, 1]) as LDM does, so kl_weight is the
price of one nat of KL in units of summed pixel error. With l2 this is exactly 2 s^2 times the -ELBO
above (up to a constant) for a decoder variance s^2 = kl_weight / 2: kl_weight = 1e-6 is a very
sharp decoder (s ~ 7e-4), a beta-VAE leaning towards reconstruction, which is what a first stage
wants (the KL only keeps the latent space bounded and smooth). No perceptual or GAN term: on 32x32
shapes the L1/L2 loss alone reaches the PSNR target (benchmarks/shapes_vae.py).
"""

from __future__ import annotations

import math

import torch

from kuosan.losses.objective import Objective
from kuosan.utils import sum_flat

RECON_LOSSES = ("l1", "l2")


def reconstruction_loss(x: torch.Tensor, x_hat: torch.Tensor, kind: str = "l1") -> torch.Tensor:
    """sum_pixels |x - x_hat| (l1) or sum_pixels (x - x_hat)^2 (l2) per sample, shape (B,)."""
    diff = x_hat.float() - x.float()
    if kind == "l1":
        return sum_flat(diff.abs())
    if kind == "l2":
        return sum_flat(diff.pow(2))
    raise ValueError(f"unknown reconstruction loss {kind!r}; choose from {', '.join(RECON_LOSSES)}")


def gaussian_nll(x: torch.Tensor, mean: torch.Tensor, std: float) -> torch.Tensor:
    r"""-log N(x; mean, std^2 I) per sample in nats: :math:`\sum_i (x_i - m_i)^2 / (2 s^2) + \tfrac{D}{2}
    \log(2\pi s^2)`, shape (B,)."""
    d = x[0].numel()
    return sum_flat((x.float() - mean.float()).pow(2)) / (2 * std**2) + 0.5 * d * math.log(2 * math.pi * std**2)


def negative_elbo(vae, x: torch.Tensor, eps: torch.Tensor, *, decoder_std: float) -> torch.Tensor:
    """One-sample estimate of -ELBO(x) in nats per sample (Kingma & Welling 2014, Eq. 7 and 10; seed 002):
    -log p(x | z) with z = mu + sigma * eps and the Gaussian decoder N(D(z), decoder_std^2 I), plus
    KL(q(z | x) || N(0, I)) in closed form. ``vae(x, eps) -> (x_hat, kl)`` (an AutoencoderKL)."""
    x_hat, kl = vae(x, eps)
    return gaussian_nll(x, x_hat, decoder_std) + kl


class AutoencoderObjective(Objective):
    """The first-stage objective (see the module docstring): ``loss = recon + kl_weight * KL`` for the VAE
    (``latent_shape`` given: the reparameterisation noise eps ~ N(0, I) of that per-sample shape is the
    draw), ``loss = recon`` for the plain autoencoder (``latent_shape`` None: nothing is drawn)."""

    def __init__(self, *, recon: str = "l1", kl_weight: float = 1e-6, latent_shape: tuple[int, ...] | None = None):
        if recon not in RECON_LOSSES:
            raise ValueError(f"unknown reconstruction loss {recon!r}; choose from {', '.join(RECON_LOSSES)}")
        if kl_weight < 0:
            raise ValueError(f"kl_weight must be >= 0, got {kl_weight}")
        self.recon, self.kl_weight = recon, kl_weight
        self.latent_shape = None if latent_shape is None else tuple(latent_shape)

    def draw(self, x0: torch.Tensor, generator: torch.Generator | None = None) -> dict[str, torch.Tensor]:
        if self.latent_shape is None:
            return {}
        return {"eps": torch.randn((x0.shape[0], *self.latent_shape), generator=generator)}

    def loss(self, net, x0: torch.Tensor, *, eps: torch.Tensor | None = None) -> torch.Tensor:
        if eps is None:  # plain autoencoder
            return reconstruction_loss(x0, net(x0), self.recon)
        x_hat, kl = net(x0, eps)
        return reconstruction_loss(x0, x_hat, self.recon) + self.kl_weight * kl
