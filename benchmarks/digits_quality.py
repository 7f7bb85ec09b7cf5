"""Digit quality per CPU minute: kuosan's digits preset against a DDPM built from diffusers'
UNet2DModel + DDPMScheduler, each trained for the same wall-clock budget in the same run, both
sampled with 20 DDIM steps (trailing spacing, x0 clipping) and judged by the same digit classifier.

    python benchmarks/digits_quality.py [--budget 300] [--samples 2000] [--seed 0]

Prints JSON lines: one per system (training steps, parameters, Frechet distance in classifier
features to the test split, confident share, class histogram entropy) and the floor (train vs test).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time

import torch
import torch.nn.functional as F

from kuosan.app import build_trainer
from kuosan.build import build_denoiser, build_schedule
from kuosan.config import resolve_config
from kuosan.data import load_digits
from kuosan.devices import resolve_device, resolve_precision
from kuosan.judges import digit_quality
from kuosan.samplers.loop import generate


def machine() -> dict:
    return {
        "cpu": platform.processor() or platform.machine(),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "cores": os.cpu_count(),
    }


def run_kuosan(budget: float, n: int, seed: int, overrides: list[str]) -> dict:
    cfg = resolve_config("digits", None, [f"train.seed={seed}", *overrides])
    with tempfile.TemporaryDirectory() as out:
        trainer = build_trainer(cfg, out, progress=False)
        t0 = time.perf_counter()
        summary = trainer.fit(time_budget=budget)
        train_s = time.perf_counter() - t0
        net = trainer.ema.shadow
        t0 = time.perf_counter()
        x = generate(
            build_denoiser(cfg, net),
            build_schedule(cfg),
            (1, 8, 8),
            n,
            sampler="ddim",
            steps=20,
            grid="trailing",
            generator=torch.Generator().manual_seed(seed + 1),
        )
        sample_s = time.perf_counter() - t0
    return {
        "system": "kuosan",
        "steps": summary["step"],
        "batch_size": cfg.train.batch_size,
        "params": sum(p.numel() for p in net.parameters()),
        "train_seconds": round(train_s, 1),
        "sample_seconds": round(sample_s, 1),
        "precision": resolve_precision(resolve_device(cfg.train.device), cfg.train.precision),
        "schedule": cfg.diffusion.schedule,
        **digit_quality(x.clamp(-1, 1)),
    }


def run_diffusers(budget: float, n: int, seed: int, batch_size: int, lr: float, precision: str) -> dict:
    """The diffusers recipe of its train_unconditional example, sized for 8x8 digits: UNet2DModel
    (64, 128 channels, attention at 4x4), DDPMScheduler (linear betas, T = 1000), AdamW with the
    same batch, learning rate, warmup, clipping and EMA as kuosan's preset; DDIM (trailing) to sample."""
    from diffusers import DDIMScheduler, DDPMScheduler, UNet2DModel
    from diffusers.training_utils import EMAModel

    torch.manual_seed(seed)
    unet = UNet2DModel(
        sample_size=8,
        in_channels=1,
        out_channels=1,
        layers_per_block=2,
        block_out_channels=(64, 128),
        down_block_types=("DownBlock2D", "AttnDownBlock2D"),
        up_block_types=("AttnUpBlock2D", "UpBlock2D"),
        norm_num_groups=32,
    )
    sched = DDPMScheduler(num_train_timesteps=1000)
    opt = torch.optim.AdamW(unet.parameters(), lr=lr, weight_decay=0.0)
    ema = EMAModel(unet.parameters(), decay=0.999, use_ema_warmup=True, inv_gamma=1.0, power=1.0)
    data = load_digits("train")
    g = torch.Generator().manual_seed(seed)
    step, t0 = 0, time.perf_counter()
    unet.train()
    while time.perf_counter() - t0 < budget:
        x0 = data[torch.randint(len(data), (batch_size,), generator=g)]
        noise = torch.randn(x0.shape, generator=g)
        t = torch.randint(1000, (batch_size,), generator=g)
        for group in opt.param_groups:
            group["lr"] = lr * min(1.0, (step + 1) / 100)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"):
            pred = unet(sched.add_noise(x0, noise, t), t).sample
        loss = F.mse_loss(pred.float(), noise)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(unet.parameters(), 1.0)
        opt.step()
        ema.step(unet.parameters())
        step += 1
    train_s = time.perf_counter() - t0
    ema.copy_to(unet.parameters())
    unet.eval()
    ddim = DDIMScheduler.from_config(sched.config, timestep_spacing="trailing")
    ddim.set_timesteps(20)
    gs = torch.Generator().manual_seed(seed + 1)
    t0 = time.perf_counter()
    out = []
    with torch.inference_mode():
        for start in range(0, n, 1000):
            x = torch.randn(min(1000, n - start), 1, 8, 8, generator=gs)
            for t in ddim.timesteps:
                x = ddim.step(unet(x, t).sample, t, x).prev_sample
            out.append(x)
    sample_s = time.perf_counter() - t0
    x = torch.cat(out)
    return {
        "system": "diffusers",
        "steps": step,
        "batch_size": batch_size,
        "params": sum(p.numel() for p in unet.parameters()),
        "train_seconds": round(train_s, 1),
        "sample_seconds": round(sample_s, 1),
        "precision": precision,
        "schedule": "linear",
        **digit_quality(x.clamp(-1, 1)),
    }


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--budget", type=float, default=300.0, help="training seconds per system")
    p.add_argument("--samples", type=int, default=2000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--only", choices=["kuosan", "diffusers"])
    p.add_argument(
        "--diffusers-precision",
        choices=["fp32", "bf16", "both"],
        default="both",
        help="diffusers' training precision (both: report each, its best counts)",
    )
    p.add_argument("overrides", nargs="*", help="kuosan config overrides, e.g. train.lr=1e-3")
    args = p.parse_args()
    base = {
        "bench": "digits_quality",
        "budget_s": args.budget,
        "samples": args.samples,
        "sampler": "ddim-20",
        "machine": machine(),
    }
    results = []
    if args.only != "diffusers":
        results.append(run_kuosan(args.budget, args.samples, args.seed, args.overrides))
        print(json.dumps({**base, **results[-1]}), flush=True)
    if args.only != "kuosan":
        cfg = resolve_config("digits", None, args.overrides)
        precisions = ["fp32", "bf16"] if args.diffusers_precision == "both" else [args.diffusers_precision]
        for precision in precisions:
            results.append(
                run_diffusers(args.budget, args.samples, args.seed, cfg.train.batch_size, cfg.train.lr, precision)
            )
            print(json.dumps({**base, **results[-1]}), flush=True)
    if len({r["system"] for r in results}) == 2:
        ours = next(r for r in results if r["system"] == "kuosan")
        best = min((r for r in results if r["system"] == "diffusers"), key=lambda r: r["fd"])
        print(
            json.dumps(
                {
                    **base,
                    "summary": True,
                    "kuosan_fd": ours["fd"],
                    "diffusers_best_fd": best["fd"],
                    "diffusers_best_precision": best["precision"],
                    "fd_ratio": ours["fd"] / best["fd"],
                    "kuosan_confident": ours["confident"],
                    "diffusers_confident": best["confident"],
                    "fd_floor": ours["fd_floor"],
                }
            ),
            flush=True,
        )


if __name__ == "__main__":
    main()
