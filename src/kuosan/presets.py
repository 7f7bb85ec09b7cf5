"""Named experiment presets (partial config dicts layered on the Config defaults).

The digits preset is chosen for a 2-core CPU: 8x8 images are small enough that a compact U-Net at
two resolutions (8x8, 4x4 with attention) trains to recognisable digits in a few minutes; bf16
autocast uses the CPU's matrix units where they exist (see benchmarks/digits_quality.py).
"""

from copy import deepcopy

_DIGITS = {
    "data": {"name": "digits"},
    "model": {
        "network": "unet",
        "params": {
            "in_channels": 1,
            "base_channels": 64,
            "channel_mult": [1, 2],
            "num_res_blocks": 2,
            "attention_levels": [1],
            "num_heads": 4,
            "dropout": 0.0,
        },
    },
    "diffusion": {"schedule": "cosine", "T": 1000, "prediction": "eps"},
    "train": {
        "batch_size": 128,
        "lr": 2e-3,
        "warmup_steps": 100,
        "ema_decay": 0.999,
        "precision": "auto",
        "sample_every": 0,
    },
    "sample": {"sampler": "ddim", "steps": 20, "grid": "trailing"},
}

_TOY2D = {
    "data": {"name": "toy2d:moons", "n": 50_000},
    "model": {"network": "mlp", "params": {"dim": 2, "hidden": 256, "depth": 4}},
    "diffusion": {"schedule": "cosine", "T": 1000, "prediction": "eps"},
    "train": {"batch_size": 512, "lr": 1e-3, "warmup_steps": 100, "ema_decay": 0.999},
    "sample": {"sampler": "ddim", "steps": 50, "grid": "trailing", "clip": False},
}

PRESETS: dict[str, dict] = {
    "digits": deepcopy(_DIGITS),
    "toy2d": deepcopy(_TOY2D),
    # NCSN (Song & Ermon 2019/2020) with the digits preset's U-Net and training recipe: annealed DSM
    # over L = 25 geometric levels; sigma_max = 10 ~ the largest distance between two training digits
    # (9.6; NCSNv2 Technique 1), ratio gamma = 1.33 from Technique 2 for D = 64; sampled by annealed
    # Langevin dynamics over the same levels (docs/score_models.md).
    "digits-ncsn": {
        **deepcopy(_DIGITS),
        "diffusion": {"kind": "ncsn", "sigma_min": 0.01, "sigma_max": 10.0, "num_scales": 25},
        "sample": {"sampler": "annealed-langevin", "steps": 25, "grid": "trailing"},
    },
    # NCSN on 2-D data: sigma_max = 5 ~ the diameter of the standardised moons; in 2-D neighbouring
    # levels overlap for any ratio, so L = 50 is chosen for the sampler (finer annealing), not Technique 2.
    "toy2d-ncsn": {
        **deepcopy(_TOY2D),
        "diffusion": {"kind": "ncsn", "sigma_min": 0.01, "sigma_max": 5.0, "num_scales": 50},
        "sample": {"sampler": "annealed-langevin", "steps": 50, "grid": "trailing", "clip": False},
    },
    # The first stage of latent diffusion on the captioned shapes (docs/latent_diffusion.md, "Autoencoders"):
    # a KL-regularised VAE 32x32x3 -> 8x8x4 (widths 32, 64, 64; f = 4), L2 summed over pixels + 1e-6 KL
    # (LDM's weight; L2 reached 25.9 dB test PSNR after 300 steps where L1 had 19.7), bf16 autocast where
    # the CPU has bf16 units (benchmarks/shapes_vae.py measures it).
    "shapes-vae": {
        "data": {"name": "shapes", "n": 20_000},
        "model": {
            "network": "vae",
            "params": {
                "in_channels": 3,
                "latent_channels": 4,
                "block_out_channels": [32, 64, 64],
                "layers_per_block": 1,
                "groups": 32,
                "mid_attention": True,
            },
        },
        "autoencoder": {"recon": "l2", "kl_weight": 1e-6},
        "train": {
            "batch_size": 32,
            "lr": 3e-3,
            "warmup_steps": 100,
            "ema_decay": 0.999,
            "grad_clip": 0.0,
            "precision": "auto",
            "sample_every": 0,
        },
    },
    # Text-to-image latent diffusion on the captioned shapes (docs/latent_diffusion.md, "Latent diffusion"):
    # the shapes-vae's 8x8x4 latents (train it first: kuosan train --preset shapes-vae --out runs/shapes-vae),
    # frozen all-MiniLM-L6-v2 prompts (16 tokens cover every caption), cross-attention at 4x4, 10%
    # prompt dropout for classifier-free guidance, a quarter of the examples masked so one model also inpaints
    # (benchmarks/shapes_ldm.py measures prompt accuracy against guidance).
    "shapes-ldm": {
        "data": {"name": "shapes", "n": 20_000},
        "model": {
            "network": "unet",
            "params": {
                "base_channels": 64,
                "channel_mult": [1, 2],
                "num_res_blocks": 1,
                "attention_levels": [1],
                "num_heads": 4,
                "dropout": 0.0,
            },
        },
        # v-prediction: latents are not clamped, and an eps-model's x0_hat = x - sigma eps_hat at the cosine
        # schedule's sigma_max = 2e4 amplifies any error 2e4-fold (pixel models are rescued by x0 clipping)
        "diffusion": {"schedule": "cosine", "T": 1000, "prediction": "v"},
        "latent": {"autoencoder": "runs/shapes-vae", "scale_factor": 0.0},
        "text": {"encoder": "minilm", "max_length": 16, "cond_drop": 0.1, "inpaint_fraction": 0.25},
        "train": {
            "batch_size": 128,
            "lr": 1e-3,
            "warmup_steps": 200,
            "ema_decay": 0.999,
            "precision": "auto",
            "sample_every": 0,
        },
        "sample": {"sampler": "ddim", "steps": 20, "grid": "trailing", "clip": False},
    },
    # The same text-to-image model in pixel space (32x32x3, three levels 32/16/8): the anchor that
    # benchmarks/shapes_ldm.py compares latent diffusion's cost with.
    "shapes-pixel": {
        "data": {"name": "shapes", "n": 20_000},
        "model": {
            "network": "unet",
            "params": {
                "base_channels": 64,
                "channel_mult": [1, 2, 2],
                "num_res_blocks": 2,
                "attention_levels": [1, 2],
                "num_heads": 4,
                "dropout": 0.0,
            },
        },
        "diffusion": {"schedule": "cosine", "T": 1000, "prediction": "eps"},
        "text": {"encoder": "minilm", "max_length": 16, "cond_drop": 0.1, "inpaint_fraction": 0.0},
        "train": {
            "batch_size": 128,
            "lr": 1e-3,
            "warmup_steps": 200,
            "ema_decay": 0.999,
            "precision": "auto",
            "sample_every": 0,
        },
        "sample": {"sampler": "ddim", "steps": 20, "grid": "trailing", "clip": True},
    },
}
