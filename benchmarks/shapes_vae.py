"""Reconstruction quality per CPU minute of the first-stage autoencoders on the captioned shapes: the
shapes-vae preset (KL-regularised VAE) and the same network as a plain autoencoder, each trained for
``--budget`` seconds ``--rounds`` times in a row (e.g. 2 x 300 s: the figures after 5 and 10 minutes),
evaluated after every round on the fixed shapes test set (SHAPES_EVAL_SEEDS["test"]) with the EMA
weights: PSNR (images in [-1, 1] mapped to [0, 1]), the VAE's KL per latent dimension, the latent std
and scale factor 1/std (Rombach et al. 2022, Sec. 4.3.2).

    OMP_NUM_THREADS=1 python benchmarks/shapes_vae.py [--budget 300] [--rounds 2] [--systems vae,ae]
        [--eval-n 2000] [--speed] [override ...]

``--speed`` first measures training throughput (images/s) of the preset's network in fp32 and in bf16
autocast (the choice of precision "auto"). Prints JSON lines. The machine may be shared: each line
carries the load average, which bounds what the wall-clock budgets mean.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time

import torch

from kuosan.app import build_trainer
from kuosan.config import resolve_config
from kuosan.data import load_dataset
from kuosan.data.shapes import SHAPES_EVAL_SEEDS
from kuosan.devices import resolve_device, resolve_precision
from kuosan.metrics.reconstruction import reconstruction_report


def machine() -> dict:
    return {
        "cpu": platform.processor() or platform.machine(),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "cores": os.cpu_count(),
        "load_avg_1min": round(os.getloadavg()[0], 2),
    }


def system_config(system: str, overrides: list[str]):
    extra = ["model.network=ae", "autoencoder.kl_weight=0"] if system == "ae" else []
    return resolve_config("shapes-vae", None, extra + overrides)


def speed(overrides: list[str], steps: int = 15) -> list[dict]:
    """Training images per second of the preset in fp32 and bf16 autocast (after 3 warm-up steps)."""
    out = []
    for precision in ("fp32", "bf16"):
        cfg = system_config("vae", [*overrides, f"train.precision={precision}", "data.n=512"])
        with tempfile.TemporaryDirectory() as tmp:
            trainer = build_trainer(cfg, tmp, progress=False)
            for _ in range(3):
                trainer.train_step()
            t0 = time.perf_counter()
            for _ in range(steps):
                trainer.train_step()
            seconds = time.perf_counter() - t0
        out.append(
            {
                "bench": "shapes_vae_speed",
                "precision": precision,
                "images_per_s": round(steps * cfg.train.batch_size / seconds, 1),
                **machine(),
            }
        )
    return out


def run(system: str, budget: float, rounds: int, test: torch.Tensor, overrides: list[str]):
    cfg = system_config(system, overrides)
    with tempfile.TemporaryDirectory() as tmp:
        trainer = build_trainer(cfg, tmp, progress=False)
        net = trainer.ema.shadow
        for r in range(1, rounds + 1):
            summary = trainer.fit(time_budget=budget)
            t0 = time.perf_counter()
            net.eval()
            with torch.inference_mode():
                report = reconstruction_report(net, test, batch_size=250)
            yield {
                "bench": "shapes_vae",
                "system": system,
                "minutes": round(r * budget / 60, 2),
                "steps": summary["step"],
                "batch_size": cfg.train.batch_size,
                "train_seconds": round(summary["train_seconds"], 1),
                "params": sum(p.numel() for p in net.parameters()),
                "precision": resolve_precision(resolve_device(cfg.train.device), cfg.train.precision),
                "recon": cfg.autoencoder.recon,
                "kl_weight": cfg.autoencoder.kl_weight,
                "last_loss": round(summary["last_loss"], 2),
                "eval_seconds": round(time.perf_counter() - t0, 1),
                **report,
                **machine(),
            }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--budget", type=float, default=300.0, help="seconds of training per round")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--systems", default="vae,ae")
    ap.add_argument("--eval-n", type=int, default=2000)
    ap.add_argument("--speed", action="store_true")
    ap.add_argument("overrides", nargs="*", help="config overrides for both systems, e.g. train.lr=2e-3")
    args = ap.parse_args()
    if args.speed:
        for line in speed(args.overrides):
            print(json.dumps(line), flush=True)
    test = load_dataset("shapes", n=args.eval_n, seed=SHAPES_EVAL_SEEDS["test"])
    for system in args.systems.split(","):
        for line in run(system, args.budget, args.rounds, test, args.overrides):
            print(json.dumps(line), flush=True)


if __name__ == "__main__":
    main()
