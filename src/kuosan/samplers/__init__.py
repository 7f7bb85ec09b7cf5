"""Samplers are functions ``sample_<name>(denoiser, x, sigmas, *, generator=None, callback=None,
extra_args=None, ...)``: ``sigmas`` is a decreasing 1-D grid ending in 0 and ``x`` starts as noise
at sigmas[0]. ``SAMPLERS`` maps the names the CLI accepts to the functions."""
from kuosan.samplers.ancestral import sample_ddpm, sample_euler_ancestral
from kuosan.samplers.ddim import sample_ddim
from kuosan.samplers.dpm_solver import sample_dpmpp_2m
from kuosan.samplers.ode import sample_euler, sample_heun

SAMPLERS = {
    "ddpm": sample_ddpm,
    "ddim": sample_ddim,
    "euler": sample_euler,
    "euler-ancestral": sample_euler_ancestral,
    "heun": sample_heun,
    "dpmpp-2m": sample_dpmpp_2m,
}

# Network evaluations per step (Heun's last step to sigma = 0 is a single Euler evaluation).
EVALS_PER_STEP = {name: 1 for name in SAMPLERS} | {"heun": 2}


def get_sampler(name: str):
    if name not in SAMPLERS:
        raise ValueError(f"unknown sampler {name!r}; choose from {', '.join(SAMPLERS)}")
    return SAMPLERS[name]


__all__ = ["SAMPLERS", "EVALS_PER_STEP", "get_sampler", "sample_ddim", "sample_ddpm", "sample_dpmpp_2m",
           "sample_euler", "sample_euler_ancestral", "sample_heun"]
