"""Named experiment presets (partial config dicts layered on the Config defaults).

The digits preset is chosen for a 2-core CPU: 8x8 images are small enough that a compact U-Net at
two resolutions (8x8, 4x4 with attention) trains to recognisable digits in a few minutes; bf16
autocast uses the CPU's matrix units where they exist (see benchmarks/digits_quality.py).
"""

PRESETS: dict[str, dict] = {
    "digits": {
        "data": {"name": "digits"},
        "model": {"network": "unet", "params": {
            "in_channels": 1, "base_channels": 64, "channel_mult": [1, 2], "num_res_blocks": 2,
            "attention_levels": [1], "num_heads": 4, "dropout": 0.0}},
        "diffusion": {"schedule": "cosine", "T": 1000, "prediction": "eps"},
        "train": {"batch_size": 128, "lr": 2e-3, "warmup_steps": 100, "ema_decay": 0.999,
                  "precision": "auto", "sample_every": 0},
        "sample": {"sampler": "ddim", "steps": 20, "grid": "trailing"},
    },
    "toy2d": {
        "data": {"name": "toy2d:moons", "n": 50_000},
        "model": {"network": "mlp", "params": {"dim": 2, "hidden": 256, "depth": 4}},
        "diffusion": {"schedule": "cosine", "T": 1000, "prediction": "eps"},
        "train": {"batch_size": 512, "lr": 1e-3, "warmup_steps": 100, "ema_decay": 0.999},
        "sample": {"sampler": "ddim", "steps": 50, "grid": "trailing", "clip": False},
    },
    # NCSN (Song & Ermon 2019/2020) with the digits preset's U-Net and training recipe: annealed DSM
    # over L = 25 geometric levels; sigma_max = 10 ~ the largest distance between two training digits
    # (9.6; NCSNv2 Technique 1), ratio gamma = 1.33 from Technique 2 for D = 64; sampled by annealed
    # Langevin dynamics over the same levels (docs/score_models.md).
    "digits-ncsn": {
        "data": {"name": "digits"},
        "model": {"network": "unet", "params": {
            "in_channels": 1, "base_channels": 64, "channel_mult": [1, 2], "num_res_blocks": 2,
            "attention_levels": [1], "num_heads": 4, "dropout": 0.0}},
        "diffusion": {"kind": "ncsn", "sigma_min": 0.01, "sigma_max": 10.0, "num_scales": 25},
        "train": {"batch_size": 128, "lr": 2e-3, "warmup_steps": 100, "ema_decay": 0.999,
                  "precision": "auto", "sample_every": 0},
        "sample": {"sampler": "annealed-langevin", "steps": 25, "grid": "trailing"},
    },
    # NCSN on 2-D data: sigma_max = 5 ~ the diameter of the standardised moons; in 2-D neighbouring
    # levels overlap for any ratio, so L = 50 is chosen for the sampler (finer annealing), not Technique 2.
    "toy2d-ncsn": {
        "data": {"name": "toy2d:moons", "n": 50_000},
        "model": {"network": "mlp", "params": {"dim": 2, "hidden": 256, "depth": 4}},
        "diffusion": {"kind": "ncsn", "sigma_min": 0.01, "sigma_max": 5.0, "num_scales": 50},
        "train": {"batch_size": 512, "lr": 1e-3, "warmup_steps": 100, "ema_decay": 0.999},
        "sample": {"sampler": "annealed-langevin", "steps": 50, "grid": "trailing", "clip": False},
    },
}
