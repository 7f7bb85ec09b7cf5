"""Train the small contrastive image-text model of the captioned shapes and write its shipped weights.

    python scripts/train_shapes_clip.py [--steps 2000] [--out PATH]

Seed 0: fresh batches from ``shapes_stream(batch_size, seed=0)`` (never the evaluation seeds), the
symmetric InfoNCE loss of CLIP (Radford et al. 2021; ``kuosan.metrics.clip_score.info_nce_loss``) with
a learned temperature, AdamW with a one-cycle schedule; the images get mild Gaussian pixel noise
(std up to 0.05) so slightly imperfect generated images still score sensibly. Evaluated on 1000
images of ``SHAPES_EVAL_SEEDS["test"]`` (``retrieval_report``: image->text and text->image top-1
retrieval, zero-shot attribute reading, mean cosine of matched and shuffled captions). Writes
safetensors (config and word vocabulary in the metadata) and prints one JSON line.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from kuosan.data.shapes import SHAPES_EVAL_SEEDS, make_shapes, shapes_stream
from kuosan.judges.shapes_clip import (
    WEIGHTS_PATH,
    ShapesCLIP,
    build_vocabulary,
    retrieval_report,
    save_shapes_clip,
)
from kuosan.metrics.clip_score import info_nce_loss

TRAIN_SEED = 0
MAX_LOGIT_SCALE = 4.6052  # log(100), CLIP's clamp of the learned temperature


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=2000)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--eval-n", type=int, default=1000)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path, default=WEIGHTS_PATH)
    args = parser.parse_args()

    torch.manual_seed(TRAIN_SEED)
    torch.set_num_threads(args.threads)
    start = time.perf_counter()
    model = ShapesCLIP(build_vocabulary())
    decay = [p for n, p in model.named_parameters() if p.ndim >= 2 and "embedding" not in n]
    no_decay = [p for n, p in model.named_parameters() if not (p.ndim >= 2 and "embedding" not in n)]
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": 1e-4}, {"params": no_decay, "weight_decay": 0.0}], lr=args.lr
    )
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=args.lr, total_steps=args.steps, pct_start=0.1)
    stream = shapes_stream(args.batch_size, seed=TRAIN_SEED)
    model.train()
    for step in range(args.steps):
        batch = next(stream)
        x = batch.images
        x = (x + 0.05 * torch.rand(len(x), 1, 1, 1) * torch.randn_like(x)).clamp(-1.0, 1.0)
        loss = info_nce_loss(model.encode_images(x), model.encode_texts(batch.captions), model.logit_scale).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        with torch.no_grad():
            model.logit_scale.clamp_(0.0, MAX_LOGIT_SCALE)
        if step % 250 == 0 or step == args.steps - 1:
            print(
                json.dumps(
                    {"step": step, "loss": round(loss.item(), 4), "logit_scale": round(model.logit_scale.item(), 3)}
                ),
                flush=True,
            )

    model.eval()
    test = make_shapes(args.eval_n, SHAPES_EVAL_SEEDS["test"])
    report = retrieval_report(model, test.images, test.captions, test.attributes, test.named)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    save_shapes_clip(
        model,
        args.out,
        seed=str(TRAIN_SEED),
        steps=str(args.steps),
        batch_size=str(args.batch_size),
        test_report=json.dumps(report),
    )
    print(
        json.dumps(
            {
                "test": report,
                "eval_n": args.eval_n,
                "steps": args.steps,
                "batch_size": args.batch_size,
                "parameters": sum(p.numel() for p in model.parameters()),
                "file_bytes": args.out.stat().st_size,
                "out": str(args.out),
                "seconds": round(time.perf_counter() - start, 1),
            }
        )
    )


if __name__ == "__main__":
    main()
