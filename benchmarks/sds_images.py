"""`kuosan sds` (image score distillation) on prompts with a position, judged by the shipped shapes
classifier: does each optimised image show the colour, shape and position the prompt names?

    python benchmarks/sds_images.py RUN [--steps 200] [--guidance 7.5] [--seed 0] [--out grid.png]

RUN is a trained text run on the shapes (shapes-ldm or shapes-pixel). JSON lines: one per prompt
(what the classifier reads, the seconds, the final residual and the KL form's change), then the
share of prompts read exactly as asked.
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import torch

from kuosan import app
from kuosan.data.shapes import ATTRIBUTES, parse_caption
from kuosan.judges.shapes import predict_attributes

PROMPTS = [
    "a red circle in the top left",
    "a blue square in the bottom right",
    "a green triangle in the top right",
    "a yellow circle in the bottom left",
]


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("run")
    p.add_argument("--steps", type=int, default=200)
    p.add_argument("--guidance", type=float, default=7.5)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", help="also write the images as one PNG row")
    args = p.parse_args()
    images, hits = [], 0
    for prompt in PROMPTS:
        t0 = time.perf_counter()
        x, report = app.score_distillation(args.run, prompt, steps=args.steps, guidance=args.guidance, seed=args.seed)
        pred, want = predict_attributes(x), parse_caption(prompt)
        as_prompted = {k: want[k] is None or int(pred[k][0]) == want[k] for k in ATTRIBUTES}
        hits += all(as_prompted.values())
        images.append(x)
        row = {"bench": "sds_images", "prompt": prompt, "read": {k: ATTRIBUTES[k][int(pred[k][0])] for k in ATTRIBUTES}}
        row.update(as_prompted=as_prompted, seconds=round(time.perf_counter() - t0, 1))
        row.update({k: report[k] for k in ("residual_sq", "kl_form_change", "optimised")})
        print(json.dumps(row), flush=True)
    if args.out:
        from kuosan.imaging import save_samples_png

        save_samples_png(torch.cat(images), args.out, nrow=len(images))
    print(
        json.dumps(
            {
                "bench": "sds_images",
                "steps": args.steps,
                "guidance": args.guidance,
                "read_as_prompted": hits / len(PROMPTS),
            }
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
