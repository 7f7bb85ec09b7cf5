"""Text-to-image latent diffusion on the captioned shapes: does the image show what the prompt says?

Trains (or takes) the shapes VAE and the text-conditional latent diffusion model (presets shapes-vae and
shapes-ldm), then on held-out captions (``SHAPES_EVAL_SEEDS["test"]``) with a fixed sampler and step
count measures, as read by the shapes attribute classifier:

- prompt accuracy (all named attributes right, and per attribute) against the guidance scale, plus a
  plot of it (PNG, drawn with Pillow);
- the VAE's reconstruction PSNR on the same images;
- inpainting: each test image's shape is masked out (its quadrant, or the centre box) and repainted
  after a new prompt at the same position; the error outside the hole and the prompt accuracy;
- the cost of latent against pixel-space diffusion (preset shapes-pixel, the same training budget):
  training seconds and steps, sampling images/s and the accuracy each reaches.

    python benchmarks/shapes_ldm.py --work-dir runs/bench [--vae-run DIR] [--ldm-run DIR] [--pixel-run DIR]
        [--vae-budget 900] [--ldm-budget 900] [--pixel-budget 900] [--no-pixel] [--n 200] [--steps 20]
        [--scales 1,2,3,5,7.5] [--pixel-scales 3] [--sampler ddim] [--plot FILE.png] [--ldm-set key=value ...]

Prints JSON lines. Runs are kept in --work-dir (given runs are only read).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import time
from pathlib import Path

import torch

from kuosan.app import build_trainer
from kuosan.config import resolve_config
from kuosan.data.shapes import ATTRIBUTES, SHAPES_EVAL_SEEDS, make_caption, make_shapes
from kuosan.devices import resolve_device, resolve_precision
from kuosan.judges.shapes import load_shapes_classifier, prompt_accuracy
from kuosan.pipelines import TextToImagePipeline
from kuosan.runs import load_autoencoder
from kuosan.train import checkpoint as ckpt


def emit(record: dict) -> None:
    print(json.dumps(record), flush=True)


def machine() -> dict:
    return {
        "cpu": platform.processor() or platform.machine(),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "cores": os.cpu_count(),
        "load_avg_1min": os.getloadavg()[0],
    }


def train(preset: str, out: Path, budget: float, overrides: list[str]) -> Path:
    """Train a preset for ``budget`` seconds into ``out`` (resumed if a checkpoint is there)."""
    cfg = resolve_config(preset, None, overrides)
    trainer = build_trainer(cfg, out, progress=False)
    if ckpt.find_checkpoint(out):
        trainer.resume()
    remaining = budget - trainer.train_seconds
    if remaining > 1:
        trainer.fit(time_budget=remaining)
    return out


def run_info(run: Path) -> dict:
    state, cfg = ckpt.read_state(run), ckpt.read_config(run)
    return {
        "run": str(run),
        "steps": state["step"],
        "train_seconds": round(state["train_seconds"], 1),
        "batch_size": cfg["train"]["batch_size"],
        "precision": resolve_precision(resolve_device(cfg["train"].get("device", "auto")), cfg["train"]["precision"]),
    }


def vae_psnr(vae_run: Path, images: torch.Tensor) -> dict:
    """Mean PSNR (dB, images in [-1, 1] with range 2) of the VAE's reconstructions from the posterior mean."""
    from kuosan.metrics.reconstruction import psnr, reconstruct

    _, vae = load_autoencoder(vae_run)
    return {"vae_psnr_db": round(float(psnr(images, reconstruct(vae, images)).mean()), 2), "n": len(images)}


def accuracy_vs_guidance(
    pipe: TextToImagePipeline,
    batch,
    scales,
    *,
    steps,
    sampler,
    seed,
    classifier,
    label: str,
    grid_path: Path | None = None,
) -> list[dict]:
    """Prompt accuracy of one image per caption at each guidance scale; the best scale's first 64 images
    go to ``grid_path``."""
    from kuosan.imaging import save_samples_png

    rows, best = [], -1.0
    for scale in scales:
        t0 = time.perf_counter()
        x = pipe.txt2img(
            batch.captions, guidance=scale, steps=steps, sampler=sampler, generator=torch.Generator().manual_seed(seed)
        )
        seconds = time.perf_counter() - t0
        acc = prompt_accuracy(x, batch.attributes, batch.named, classifier=classifier)
        rows.append(
            {
                "bench": "txt2img",
                "model": label,
                "guidance": scale,
                "steps": steps,
                "sampler": sampler,
                "sample_seconds": round(seconds, 1),
                "images_per_s": round(len(x) / seconds, 2),
                **{k: (round(v, 4) if isinstance(v, float) else v) for k, v in acc.items()},
            }
        )
        emit(rows[-1])
        if grid_path is not None and acc["all_named"] > best:
            best = acc["all_named"]
            save_samples_png(x[:64], grid_path)
    return rows


def hole_masks(position: torch.Tensor, size: int = 32) -> torch.Tensor:
    """(N, 1, H, W) masks that cover a shape at each position: its quadrant, or the centre box
    [6, 26)^2 (every shape of the data set lies inside the box of its position)."""
    m = torch.zeros(len(position), 1, size, size)
    half = size // 2
    boxes = {
        "top left": (0, half, 0, half),
        "top right": (0, half, half, size),
        "bottom left": (half, size, 0, half),
        "bottom right": (half, size, half, size),
        "center": (6, 26, 6, 26),
    }
    for i, p in enumerate(position.tolist()):
        r0, r1, c0, c1 = boxes[ATTRIBUTES["position"][p]]
        m[i, :, r0:r1, c0:c1] = 1
    return m


def inpainting(
    pipe: TextToImagePipeline, batch, *, scale, steps, sampler, seed, classifier, method, grid_path: Path | None = None
) -> dict:
    """Remove each image's shape (mask its position's box) and paint a new one there after a prompt with
    another shape and colour (size drawn anew, position kept). ``grid_path``: 16 inputs, the masked
    inputs and the results, row by row."""
    g = torch.Generator().manual_seed(seed)
    n = len(batch)
    a = batch.attributes
    new = {
        "shape": (a["shape"] + torch.randint(1, 3, (n,), generator=g)) % 3,
        "colour": (a["colour"] + torch.randint(1, 7, (n,), generator=g)) % 7,
        "size": torch.randint(0, 2, (n,), generator=g),
        "position": a["position"],
    }
    prompts = [
        make_caption(*(ATTRIBUTES[k][int(new[k][i])] for k in ("shape", "colour", "size", "position")))
        for i in range(n)
    ]
    masks = hole_masks(a["position"])
    t0 = time.perf_counter()
    x = pipe.inpaint(
        batch.images,
        masks,
        prompts,
        method=method,
        guidance=scale,
        steps=steps,
        sampler=sampler,
        generator=torch.Generator().manual_seed(seed),
    )
    seconds = time.perf_counter() - t0
    keep = 1 - masks
    recon = pipe.decode(pipe.encode_images(batch.images))
    err = ((x - batch.images).abs() * keep).sum() / (keep.sum() * 3)
    err_recon = ((x - recon).abs() * keep).sum() / (keep.sum() * 3)
    acc = prompt_accuracy(x, new, classifier=classifier)
    if grid_path is not None:
        from kuosan.imaging import save_samples_png

        k = min(16, n)
        shown = torch.cat([batch.images[:k], batch.images[:k] * keep[:k] + masks[:k], x[:k]])
        save_samples_png(shown, grid_path, nrow=k)
    return {
        "bench": "inpaint",
        "method": method,
        "guidance": scale,
        "steps": steps,
        "n": n,
        "known_mae_vs_input": round(float(err), 4),
        "known_mae_vs_vae_recon": round(float(err_recon), 4),
        "known_mae_of_vae_recon": round(float(((recon - batch.images).abs() * keep).sum() / (keep.sum() * 3)), 4),
        "hole_all_named": round(acc["all_named"], 4),
        **{f"hole_{k}": round(acc[k], 4) for k in ATTRIBUTES},
        "seconds": round(seconds, 1),
    }


def plot(curves: dict[str, list[tuple[float, float]]], path: Path, *, title: str) -> None:
    """Accuracy (0..1) against guidance scale, one polyline per curve (Pillow only)."""
    from PIL import Image, ImageDraw

    w, h, left, bottom, top, right = 560, 380, 60, 50, 40, 20
    img = Image.new("RGB", (w, h), "white")
    d = ImageDraw.Draw(img)
    xs = sorted({x for c in curves.values() for x, _ in c})
    x_lo, x_hi = min(xs), max(xs) if max(xs) > min(xs) else min(xs) + 1

    def px(x, y):
        return (left + (x - x_lo) / (x_hi - x_lo) * (w - left - right), h - bottom - y * (h - top - bottom))

    d.rectangle((left, top, w - right, h - bottom), outline="black")
    for y in (0, 0.25, 0.5, 0.75, 0.9, 1.0):
        yy = px(x_lo, y)[1]
        d.line((left, yy, w - right, yy), fill=(225, 225, 225) if y != 0.9 else (250, 180, 180))
        d.text((left - 40, yy - 6), f"{y:.2f}", fill="black")
    for x in xs:
        xx = px(x, 0)[0]
        d.text((xx - 8, h - bottom + 6), f"{x:g}", fill="black")
    d.text((w // 2 - 50, h - 22), "guidance scale", fill="black")
    d.text((left, 12), title, fill="black")
    colours = [(20, 60, 200), (200, 60, 20), (20, 150, 60)]
    for k, (name, pts) in enumerate(curves.items()):
        pts = sorted(pts)
        c = colours[k % len(colours)]
        d.line([px(x, y) for x, y in pts], fill=c, width=2)
        for x, y in pts:
            X, Y = px(x, y)
            d.ellipse((X - 3, Y - 3, X + 3, Y + 3), fill=c)
        d.text((w - right - 150, top + 8 + 14 * k), name, fill=c)
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--work-dir", default="runs/shapes-ldm-bench")
    p.add_argument("--vae-run"), p.add_argument("--ldm-run"), p.add_argument("--pixel-run")
    p.add_argument("--vae-budget", type=float, default=900.0)
    p.add_argument("--ldm-budget", type=float, default=900.0)
    p.add_argument("--pixel-budget", type=float, default=None, help="default: the LDM's training seconds")
    p.add_argument("--no-pixel", action="store_true", help="skip the pixel-space comparison")
    p.add_argument("--n", type=int, default=200, help="held-out captions")
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--sampler", default="ddim")
    p.add_argument("--scales", default="1,2,3,5,7.5")
    p.add_argument("--pixel-scales", help="guidance scales of the pixel model (default: --scales)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--plot", help="PNG of accuracy against guidance (default: WORK_DIR/accuracy_vs_guidance.png)")
    p.add_argument("--ldm-set", nargs="*", default=[], help="config overrides of the LDM (section.key=value)")
    p.add_argument("--pixel-set", nargs="*", default=[], help="config overrides of the pixel model")
    args = p.parse_args()
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    work = Path(args.work_dir)
    scales = [float(s) for s in args.scales.split(",")]
    emit({"bench": "shapes_ldm", "machine": machine(), "n": args.n, "steps": args.steps, "sampler": args.sampler})
    classifier = load_shapes_classifier()
    batch = make_shapes(args.n, SHAPES_EVAL_SEEDS["test"])

    vae_run = Path(args.vae_run) if args.vae_run else train("shapes-vae", work / "vae", args.vae_budget, [])
    emit({"bench": "vae", **run_info(vae_run), **vae_psnr(vae_run, batch.images)})
    ldm_run = (
        Path(args.ldm_run)
        if args.ldm_run
        else train("shapes-ldm", work / "ldm", args.ldm_budget, [f"latent.autoencoder={vae_run}", *args.ldm_set])
    )
    ldm_info = run_info(ldm_run)
    emit({"bench": "ldm_run", **ldm_info})
    pipe = TextToImagePipeline.from_run(ldm_run)
    rows = accuracy_vs_guidance(
        pipe,
        batch,
        scales,
        steps=args.steps,
        sampler=args.sampler,
        seed=args.seed,
        classifier=classifier,
        label="latent",
        grid_path=work / "latent_samples.png",
    )
    best = max(rows, key=lambda r: r["all_named"])
    curves = {"latent (8x8x4)": [(r["guidance"], r["all_named"]) for r in rows]}
    method = "concat" if pipe.inpaint_model else "replace"  # what the model was trained for
    emit(
        inpainting(
            pipe,
            batch,
            scale=best["guidance"],
            steps=args.steps,
            sampler=args.sampler,
            seed=args.seed,
            classifier=classifier,
            method=method,
            grid_path=work / "inpaint_samples.png",
        )
    )
    summary = {
        "bench": "latent_vs_pixel",
        "latent": {
            **ldm_info,
            "best_guidance": best["guidance"],
            "all_named": best["all_named"],
            "images_per_s": best["images_per_s"],
        },
    }
    if not args.no_pixel:
        budget = args.pixel_budget if args.pixel_budget is not None else ldm_info["train_seconds"]
        pixel_run = (
            Path(args.pixel_run)
            if args.pixel_run
            else train("shapes-pixel", work / "pixel", budget, list(args.pixel_set))
        )
        pixel_info = run_info(pixel_run)
        px_scales = [float(s) for s in args.pixel_scales.split(",")] if args.pixel_scales else scales
        px_rows = accuracy_vs_guidance(
            TextToImagePipeline.from_run(pixel_run),
            batch,
            px_scales,
            steps=args.steps,
            sampler=args.sampler,
            seed=args.seed,
            classifier=classifier,
            label="pixel",
            grid_path=work / "pixel_samples.png",
        )
        px_best = max(px_rows, key=lambda r: r["all_named"])
        curves["pixel (32x32x3)"] = [(r["guidance"], r["all_named"]) for r in px_rows]
        summary["pixel"] = {
            **pixel_info,
            "best_guidance": px_best["guidance"],
            "all_named": px_best["all_named"],
            "images_per_s": px_best["images_per_s"],
        }
        summary["sampling_speedup_latent_over_pixel"] = round(best["images_per_s"] / px_best["images_per_s"], 2)
    summary["target_all_named"] = 0.9
    summary["target_met"] = best["all_named"] >= 0.9
    emit(summary)
    plot_path = Path(args.plot) if args.plot else work / "accuracy_vs_guidance.png"
    plot(
        curves,
        plot_path,
        title=f"shapes: all-named prompt accuracy, {args.n} held-out captions, {args.sampler} {args.steps} steps",
    )
    emit({"bench": "plot", "path": str(plot_path)})
    if any(math.isnan(r["all_named"]) for r in rows):
        raise SystemExit("NaN accuracy")


if __name__ == "__main__":
    main()
