"""How well a first-stage autoencoder reconstructs images: PSNR, the KL per latent dimension, the
latents' spread and scale factor (the figures of Rombach et al. 2022, Table 8 / App. G).

Notation: ``x`` images (N, C, H, W) in [-1, 1]; ``x_hat`` their reconstructions D(E(x)) (the VAE
decodes its posterior mean mu unless ``sample``), clamped to [-1, 1] as a saved image would be.
"""

from __future__ import annotations

import math

import torch

from kuosan.networks.autoencoder import DiagonalGaussian, latent_scale_factor


def psnr(x: torch.Tensor, x_hat: torch.Tensor, *, data_range: float = 2.0) -> torch.Tensor:
    r"""Peak signal-to-noise ratio per image in dB: :math:`10 \log_{10}(R^2 / \mathrm{MSE})`, with R the
    data range (2 for images in [-1, 1], the same number as for the images mapped to [0, 1] with R = 1)."""
    mse = (x.double() - x_hat.double()).pow(2).flatten(1).mean(1)
    return 10 * torch.log10(data_range**2 / mse)


@torch.no_grad()
def reconstruct(
    autoencoder,
    x: torch.Tensor,
    *,
    batch_size: int = 256,
    sample: bool = False,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """x_hat = D(z) clamped to [-1, 1], z = E(x) (the VAE's mean, or a posterior draw when ``sample``)."""
    from kuosan.networks.autoencoder import encode_latents

    out = [
        autoencoder.decode(encode_latents(autoencoder, chunk, sample=sample, generator=generator)).clamp(-1, 1)
        for chunk in x.split(batch_size)
    ]
    return torch.cat(out).float()


def reconstruction_pairs(autoencoder, x: torch.Tensor, *, nrow: int = 8) -> torch.Tensor:
    """Originals over reconstructions, for a picture: rows of ``nrow`` originals, each followed by the row
    of their reconstructions (so an image grid with ``nrow`` columns shows them in pairs of rows)."""
    x_hat = reconstruct(autoencoder, x)
    rows = [t for pair in zip(x.split(nrow), x_hat.split(nrow)) for t in pair]
    return torch.cat(rows)


@torch.no_grad()
def reconstruction_report(
    autoencoder, x: torch.Tensor, *, batch_size: int = 256, sample: bool = False, seed: int = 0
) -> dict:
    """PSNR of the reconstructions of ``x`` (mean of the per-image PSNR, and the PSNR of the mean squared
    error), the VAE's KL(q(z|x) || N(0, I)) per latent dimension in nats, the latents' std and the latent
    scale factor 1/std (posterior draws from a generator seeded by ``seed``)."""
    g = torch.Generator().manual_seed(seed)
    x_hat = reconstruct(autoencoder, x, batch_size=batch_size, sample=sample, generator=g)
    per_image = psnr(x, x_hat)
    mse = float((x.double() - x_hat.double()).pow(2).mean())
    report = {
        "n": int(x.shape[0]),
        "psnr_db": float(per_image.mean()),
        "psnr_db_stderr": float(per_image.std() / math.sqrt(len(per_image))) if len(per_image) > 1 else None,
        "psnr_db_of_mean_mse": 10 * math.log10(4.0 / mse),
    }
    posteriors = [autoencoder.encode(chunk) for chunk in x.split(batch_size)]
    if isinstance(posteriors[0], DiagonalGaussian):
        kl = torch.cat([q.kl() for q in posteriors])
        dims = posteriors[0].mean[0].numel()
        report["kl_per_latent_dim"] = float(kl.mean()) / dims
        report["posterior_std_mean"] = float(torch.cat([q.std.flatten(1) for q in posteriors]).mean())
    scale = latent_scale_factor(autoencoder, x, batch_size=batch_size, generator=torch.Generator().manual_seed(seed))
    report["latent_std"] = 1.0 / scale
    report["latent_scale_factor"] = scale
    return report
