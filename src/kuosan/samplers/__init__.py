"""Samplers are functions ``sample_<name>(denoiser, x, sigmas, *, generator=None, callback=None,
extra_args=None, ...)``: ``sigmas`` is a decreasing 1-D grid ending in 0 and ``x`` starts as noise
at sigmas[0]. ``SAMPLERS`` maps the names the CLI accepts to the functions."""
from kuosan.samplers.ancestral import sample_ddpm, sample_euler_ancestral
from kuosan.samplers.ddim import sample_ddim
from kuosan.samplers.dpm_solver import (sample_dpmpp_2m, sample_dpmpp_2m_sde, sample_dpmpp_2s, sample_dpmpp_3m,
                                        sample_dpmpp_3m_sde)
from kuosan.samplers.langevin import sample_annealed_langevin, sample_pc
from kuosan.samplers.ode import sample_euler, sample_heun
from kuosan.samplers.unipc import sample_unipc, sample_unipc_3

SAMPLERS = {
    "ddpm": sample_ddpm,
    "ddim": sample_ddim,
    "euler": sample_euler,
    "euler-ancestral": sample_euler_ancestral,
    "heun": sample_heun,
    "dpmpp-2m": sample_dpmpp_2m,
    "dpmpp-3m": sample_dpmpp_3m,
    "dpmpp-2s": sample_dpmpp_2s,
    "dpmpp-2m-sde": sample_dpmpp_2m_sde,
    "dpmpp-3m-sde": sample_dpmpp_3m_sde,
    "unipc": sample_unipc,
    "unipc-3": sample_unipc_3,
    "annealed-langevin": sample_annealed_langevin,
    "pc": sample_pc,
}

# Network evaluations per step (Heun's last step to sigma = 0 is a single Euler evaluation).
# Annealed Langevin: langevin_steps (5) per level, +1 final denoising; PC: 1 corrector + 1 predictor.
EVALS_PER_STEP = {name: 1 for name in SAMPLERS} | {"heun": 2, "dpmpp-2s": 2, "annealed-langevin": 5, "pc": 2}


def get_sampler(name: str):
    if name not in SAMPLERS:
        raise ValueError(f"unknown sampler {name!r}; choose from {', '.join(SAMPLERS)}")
    return SAMPLERS[name]


__all__ = ["SAMPLERS", "EVALS_PER_STEP", "get_sampler", "sample_ddim", "sample_ddpm", "sample_dpmpp_2m",
           "sample_dpmpp_2m_sde", "sample_dpmpp_2s", "sample_dpmpp_3m", "sample_dpmpp_3m_sde", "sample_euler",
           "sample_euler_ancestral", "sample_heun", "sample_unipc", "sample_unipc_3", "sample_annealed_langevin",
           "sample_pc"]
