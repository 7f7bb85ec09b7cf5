"""Samplers are functions ``sample_<name>(denoiser, x, sigmas, *, generator=None, callback=None,
extra_args=None, ...)``: ``sigmas`` is a decreasing 1-D grid ending in 0 and ``x`` starts as noise
at sigmas[0]. ``SAMPLERS`` maps the names the CLI accepts to the functions."""

from kuosan.samplers.ancestral import sample_ddpm, sample_euler_ancestral
from kuosan.samplers.ddim import sample_ddim
from kuosan.samplers.dpm_solver import (
    sample_dpmpp_2m,
    sample_dpmpp_2m_sde,
    sample_dpmpp_2s,
    sample_dpmpp_3m,
    sample_dpmpp_3m_sde,
)
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

# Network evaluations per step of the samplers that spend more than one (Heun's and DPM++(2S)'s last
# step, to sigma = 0, is a single evaluation); see ``network_evaluations``.
EVALS_PER_STEP = {name: 1 for name in SAMPLERS} | {"heun": 2, "dpmpp-2s": 2}


def network_evaluations(name: str, steps: int, **options) -> int:
    """Denoiser calls of sampler ``name`` on a grid of ``steps`` steps, with its keyword ``options``
    (the figure an NFE budget counts):

    - one-evaluation solvers: ``steps``; Heun and DPM++(2S): 2 per step but the last (heun with
      s_churn evaluates the same);
    - annealed Langevin: ``langevin_steps`` (5) per level, + 1 for the final denoising step;
    - PC: one predictor evaluation per level + ``langevin_steps`` (1) corrector evaluations (none with
      ``corrector="none"``; with ``predictor="none"`` the corrector's last evaluation is reused)."""
    get_sampler(name)
    if name == "annealed-langevin":
        return options.get("langevin_steps", 5) * steps + int(options.get("final_denoise", True))
    if name == "pc":
        corrector = options.get("langevin_steps", 1) if options.get("corrector", "langevin") != "none" else 0
        if options.get("predictor", "ancestral") == "none" and corrector:
            return corrector * steps + 1
        return (corrector + 1) * steps
    return EVALS_PER_STEP[name] * (steps - 1) + 1


def get_sampler(name: str):
    if name not in SAMPLERS:
        raise ValueError(f"unknown sampler {name!r}; choose from {', '.join(SAMPLERS)}")
    return SAMPLERS[name]


__all__ = [
    "SAMPLERS",
    "EVALS_PER_STEP",
    "get_sampler",
    "network_evaluations",
    "sample_ddim",
    "sample_ddpm",
    "sample_dpmpp_2m",
    "sample_dpmpp_2m_sde",
    "sample_dpmpp_2s",
    "sample_dpmpp_3m",
    "sample_dpmpp_3m_sde",
    "sample_euler",
    "sample_euler_ancestral",
    "sample_heun",
    "sample_unipc",
    "sample_unipc_3",
    "sample_annealed_langevin",
    "sample_pc",
]
