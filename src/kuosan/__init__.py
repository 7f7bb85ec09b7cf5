"""kuosan (扩散, "diffusion"): diffusion models from first principles to practice, on PyTorch.

The Python API in brief::

    import kuosan
    cfg = kuosan.resolve_config("digits", overrides=["train.batch_size=64"])
    kuosan.build_trainer(cfg, "runs/digits").fit(time_budget=300)
    x = kuosan.sample_run("runs/digits", 64, sampler="ddim", steps=20, seed=0)   # (64, 1, 8, 8)

Lower layers (``kuosan.diffusion``, ``kuosan.samplers``, ``kuosan.losses``, ``kuosan.networks``) are
usable on their own: every sampler is a function of (denoiser, x, sigmas).
"""
__version__ = "0.1.0"

from kuosan.build import build_denoiser, build_schedule, build_trainer, load_run  # noqa: E402
from kuosan.config import Config, resolve_config  # noqa: E402
from kuosan.pipeline import generate, sample_run  # noqa: E402

__all__ = ["Config", "build_denoiser", "build_schedule", "build_trainer", "generate", "load_run",
           "resolve_config", "sample_run"]
