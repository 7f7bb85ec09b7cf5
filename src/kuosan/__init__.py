"""kuosan (扩散, "diffusion"): diffusion models from first principles to practice, on PyTorch.

The Python API in brief::

    import kuosan
    kuosan.train("runs/digits", preset="digits", time_budget=300)
    x = kuosan.sample("runs/digits", 64, sampler="ddim", steps=20, seed=0)   # (64, 1, 8, 8)

    cfg = kuosan.resolve_config("digits", overrides=["train.batch_size=64"])
    kuosan.build_trainer(cfg, "runs/digits-64").fit(steps=1000)

The application functions (``kuosan.app``: train, sample, text_to_image, evaluate, likelihood,
reconstruct) are what the command line runs. Lower layers (``kuosan.diffusion``, ``kuosan.samplers``,
``kuosan.losses``, ``kuosan.networks``, ``kuosan.ops``) are usable on their own: every sampler is a
function of (denoiser, x, sigmas). docs/architecture.md draws the rooms.
"""

__version__ = "0.1.0"

# name -> module; imported on first use, so that `import kuosan.diffusion` stays light
_API = {
    "Config": "kuosan.config",
    "resolve_config": "kuosan.config",
    "build_denoiser": "kuosan.build",
    "build_schedule": "kuosan.build",
    "Run": "kuosan.runs",
    "load_run": "kuosan.runs",
    "generate": "kuosan.samplers.loop",
    "TextToImagePipeline": "kuosan.pipelines",
    "build_trainer": "kuosan.app",
    "train": "kuosan.app",
    "sample": "kuosan.app",
    "text_to_image": "kuosan.app",
    "evaluate": "kuosan.app",
    "likelihood": "kuosan.app",
    "reconstruct": "kuosan.app",
}


def __getattr__(name: str):
    if name in _API:
        import importlib

        return getattr(importlib.import_module(_API[name]), name)
    raise AttributeError(f"module 'kuosan' has no attribute {name!r}")


__all__ = sorted(_API)
