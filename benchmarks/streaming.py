"""Throughput of the streaming loader against the in-memory path, on the 32x32 shapes exported as PNGs.

    python benchmarks/streaming.py [--n 5000] [--steps 40] [--rounds 2] [--workers 2] [--out DIR]

Writes n shapes images (``make_shapes``, seed 0) as PNG files, then trains the shapes-pixel U-Net
(unconditional here: ``text.encoder=``) on that folder for --steps steps with ``data.loader=memory``
(decoded once into one tensor) and with ``data.loader=stream`` (decoded as batches draw them, by
--workers DataLoader processes), alternating over --rounds rounds so neither path gets the warmer
machine. Prints one JSON line per run (steps/s over the run, the first step excluded) and a summary:
the median steps/s of each path and their ratio, stream / memory.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from kuosan.app import build_trainer
from kuosan.config import resolve_config
from kuosan.data.shapes import make_shapes


def export_pngs(folder: Path, n: int) -> Path:
    """The shapes images as 8-bit PNGs (already written: kept)."""
    folder.mkdir(parents=True, exist_ok=True)
    if len(list(folder.glob("*.png"))) == n:
        return folder
    images = make_shapes(n, 0).images
    pixels = ((images + 1) * 127.5).round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).numpy()
    for k, image in enumerate(pixels):
        Image.fromarray(np.ascontiguousarray(image), "RGB").save(folder / f"{k:05d}.png")
    return folder


def steps_per_second(out: Path, overrides: list[str], steps: int) -> float:
    """Steps/s of ``steps`` training steps after a first one (whose one-off costs, kernel builds, are
    left out; the decoding workers' start is counted, as a run pays it once), by the trainer's own
    clock (checkpoint writing left out); no pictures are drawn."""
    cfg = resolve_config("shapes-pixel", None, overrides)
    trainer = build_trainer(cfg, out, progress=False)
    trainer.sample_fn = None
    first = trainer.fit(steps=1)["train_seconds"]
    return steps / (trainer.fit(steps=1 + steps)["train_seconds"] - first)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=5000)
    p.add_argument("--steps", type=int, default=40)
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--out", default="runs/streaming-bench")
    args = p.parse_args()
    out = Path(args.out)
    folder = export_pngs(out / "png", args.n)
    common = [
        f"data.name=folder:{folder}",
        "data.size=32",
        "data.channels=3",
        "text.encoder=",
        f"train.batch_size={args.batch_size}",
        "train.checkpoint_every=100000",
        "train.log_every=100000",
    ]
    rates: dict[str, list[float]] = {"memory": [], "stream": []}
    for r in range(args.rounds):
        for loader in ("memory", "stream"):
            run = out / f"{loader}-{r}"
            for old in run.glob("**/*"):
                old.unlink() if old.is_file() else None
            overrides = [*common, f"data.loader={loader}", f"data.workers={args.workers}"]
            rate = steps_per_second(run, overrides, args.steps)
            rates[loader].append(rate)
            row = {"bench": "streaming", "loader": loader, "round": r, "steps_per_s": round(rate, 4)}
            print(json.dumps({**row, "workers": args.workers, "images": args.n}), flush=True)
    memory, stream = (statistics.median(rates[k]) for k in ("memory", "stream"))
    summary = {
        "bench": "streaming",
        "date": time.strftime("%Y-%m-%d"),
        "images": args.n,
        "batch_size": args.batch_size,
        "workers": args.workers,
        "threads": torch.get_num_threads(),
        "memory_steps_per_s": round(memory, 4),
        "stream_steps_per_s": round(stream, 4),
        "stream_over_memory": round(stream / memory, 4),
    }
    print(json.dumps(summary), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
