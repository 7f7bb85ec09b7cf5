from kuosan.losses.diffusion import diffusion_loss, diffusion_target, l_simple, min_snr_weight

__all__ = ["diffusion_loss", "diffusion_target", "l_simple", "min_snr_weight"]
