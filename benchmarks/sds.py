"""DreamFusion on kuosan's shapes models: do the NeRF's views show what the prompt says, next to the
2-D ceiling of the same model's own samples?

    python benchmarks/sds.py RUN [--steps S] [--prompts 12] [--out DIR] [--seed 0]

For each of 12 centred prompts ("a large {colour} {shape} in the center", 4 colours x 3 shapes)
`kuosan dreamfusion` (its defaults, unless --steps) writes 8 views at evenly spaced azimuths; the
shipped shapes classifier reads each view's colour and shape and the shipped shapes CLIP ranks the
12 prompts for it (CLIP R-precision, DreamFusion's metric: the prompt itself ranks first). The same
figures on 8 images per prompt that `kuosan txt2img` samples from the same model are the 2-D ceiling.
JSON lines: one per prompt (per-view reads, colour-in-the-middle, the seconds per step split into
rendering, VAE encoding, denoiser, decoding and backward), then the summary.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from kuosan import app
from kuosan.data.shapes import ATTRIBUTES
from kuosan.judges.shapes import predict_attributes
from kuosan.judges.shapes_clip import load_shapes_clip
from kuosan.metrics.clip_score import similarity_matrix

COLOURS = ("red", "green", "blue", "yellow")
SHAPES = ("circle", "square", "triangle")
PROMPTS = [f"a large {c} {s} in the center" for s in SHAPES for c in COLOURS]


def judge(images: torch.Tensor, prompt: str, clip, prompt_features: torch.Tensor) -> dict:
    """Per-image reads of the classifier and the CLIP rank-1 check against the 12 prompts."""
    colour, shape = prompt.split()[2], prompt.split()[3]
    pred = predict_attributes(images)
    colours = [ATTRIBUTES["colour"][i] for i in pred["colour"].tolist()]
    shapes = [ATTRIBUTES["shape"][i] for i in pred["shape"].tolist()]
    positions = [ATTRIBUTES["position"][i] for i in pred["position"].tolist()]
    with torch.no_grad():
        sim = similarity_matrix(clip.encode_images(images.clamp(-1, 1)), prompt_features)
    top = sim.argmax(1).tolist()
    return {
        "colour": sum(c == colour for c in colours) / len(images),
        "shape": sum(s == shape for s in shapes) / len(images),
        "colour_and_shape": sum(c == colour and s == shape for c, s in zip(colours, shapes)) / len(images),
        "colour_in_middle": sum(c == colour and p == "center" for c, p in zip(colours, positions)) / len(images),
        "clip_r_precision": sum(PROMPTS[j] == prompt for j in top) / len(images),
        "read": [f"{c} {s} {p}" for c, s, p in zip(colours, shapes, positions)],
    }


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("run", help="a shapes text run (shapes-ldm or shapes-pixel)")
    p.add_argument("--steps", type=int, help="dreamfusion steps (default: the command's)")
    p.add_argument("--prompts", type=int, default=len(PROMPTS), help="the first N of the 12 prompts")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", help="keep every dreamfusion folder here (default: a temporary folder)")
    p.add_argument("--picture", help="also write a PNG: per prompt, its 8 views then 8 txt2img samples")
    args = p.parse_args()
    clip = load_shapes_clip().eval()
    with torch.no_grad():
        prompt_features = clip.encode_texts(PROMPTS)
    root = Path(args.out) if args.out else Path(tempfile.mkdtemp(prefix="kuosan-sds-"))
    totals: dict[str, list[float]] = {}
    rows = []
    split: dict[str, float] = {}
    for k, prompt in enumerate(PROMPTS[: args.prompts]):
        t0 = time.perf_counter()
        kw = {"steps": args.steps} if args.steps else {}
        out = root / f"{k:02d}"
        report = app.dreamfusion(args.run, prompt, out, seed=args.seed, **kw)
        views = torch.from_numpy(np.load(out / "views.npy"))
        seconds = time.perf_counter() - t0
        ceiling_images = app.text_to_image(args.run, prompt, n=len(views), seed=args.seed)
        nerf, ceiling = (
            judge(views, prompt, clip, prompt_features),
            judge(ceiling_images, prompt, clip, prompt_features),
        )
        rows += [views, ceiling_images]
        row = {"bench": "sds", "prompt": prompt, "views": nerf, "txt2img": ceiling, "seconds": round(seconds, 1)}
        row["seconds_per_step"] = report["seconds_per_step"]
        print(json.dumps(row), flush=True)
        for name, res in (("views", nerf), ("txt2img", ceiling)):
            for key, value in res.items():
                if key != "read":
                    totals.setdefault(f"{name}_{key}", []).append(value)
        for key, value in report["seconds_per_step"].items():
            split[key] = split.get(key, 0.0) + value / len(PROMPTS[: args.prompts])
    if args.picture:
        from kuosan.imaging import save_samples_png

        save_samples_png(torch.cat(rows), args.picture, nrow=len(rows[0]))
    summary = {"bench": "sds", "prompts": args.prompts, "steps": args.steps or "default", "folder": str(root)}
    summary.update({k: round(sum(v) / len(v), 4) for k, v in totals.items()})
    summary["seconds_per_step"] = {k: round(v, 4) for k, v in split.items()}
    print(json.dumps(summary), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
