"""The diffusion process: schedules, Gaussian formulas, adapters to the Denoiser contract, oracles."""

from kuosan.diffusion.guidance import CFGDenoiser, ClampDenoiser, ConcatInpaintDenoiser, ReplaceInpaintDenoiser
from kuosan.diffusion.oracle import GaussianMixtureDenoiser, gaussian_denoiser
from kuosan.diffusion.parameterization import EpsFromDenoiser, VPDenoiser, score_from_denoiser
from kuosan.diffusion.schedules import DiscreteSchedule, make_sigmas

__all__ = [
    "CFGDenoiser",
    "ClampDenoiser",
    "ConcatInpaintDenoiser",
    "ReplaceInpaintDenoiser",
    "DiscreteSchedule",
    "EpsFromDenoiser",
    "GaussianMixtureDenoiser",
    "VPDenoiser",
    "gaussian_denoiser",
    "make_sigmas",
    "score_from_denoiser",
]
