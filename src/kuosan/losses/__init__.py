from kuosan.losses.diffusion import DiffusionObjective, diffusion_loss, diffusion_target, l_simple, min_snr_weight

__all__ = ["DiffusionObjective", "diffusion_loss", "diffusion_target", "l_simple", "min_snr_weight"]
