"""Train the shapes attribute classifier behind ``kuosan.judges.prompt_accuracy``; write its weights.

    python scripts/train_shapes_classifier.py [--steps 3000] [--out PATH]

Seed 0: fresh batches from ``shapes_stream(batch_size, seed=0)`` (never the evaluation seeds), the loss
the sum over the four attributes of the cross-entropy. Mild augmentation so slightly imperfect
generated images are still read right: per image a random Gaussian blur (sigma up to 0.8 px, half
the images), a colour jitter (per-channel gain 1 +- 0.08 and offset +- 0.08) and Gaussian pixel noise
(std up to 0.1). Evaluated on 5000 images of ``SHAPES_EVAL_SEEDS["val"]``, clean and augmented.
Writes safetensors (the constructor config in the metadata) and prints one JSON line with the
per-attribute accuracies. A few minutes on one CPU core.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import save_file

from kuosan.data.shapes import ATTRIBUTES, SHAPES_EVAL_SEEDS, make_shapes, shapes_stream
from kuosan.judges.shapes import WEIGHTS_PATH, ShapesClassifier, predict_attributes

TRAIN_SEED = 0


def gaussian_blur(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """Blur each image of (B, C, H, W) with its own Gaussian sigma (B,) in pixels (5x5 kernel)."""
    offsets = torch.arange(-2, 3, dtype=x.dtype)
    k = torch.exp(-(offsets[None] ** 2) / (2 * sigma.clamp_min(1e-3)[:, None] ** 2))
    k = k / k.sum(1, keepdim=True)  # (B, 5)
    b, c, h, w = x.shape
    y = F.pad(x, (2, 2, 2, 2), mode="replicate").reshape(1, b * c, h + 4, w + 4)
    kc = k.repeat_interleave(c, 0)  # (B*C, 5)
    y = F.conv2d(y, kc[:, None, None, :], groups=b * c)  # along W
    y = F.conv2d(y, kc[:, None, :, None], groups=b * c)  # along H
    return y.reshape(b, c, h, w)


def augment(x: torch.Tensor) -> torch.Tensor:
    """Blur (half the images), per-channel colour jitter and pixel noise; stays in [-1, 1]."""
    b = len(x)
    sigma = torch.rand(b) * 0.8 * (torch.rand(b) < 0.5)
    x = torch.where(sigma[:, None, None, None] > 0.05, gaussian_blur(x, sigma), x)
    u = (x + 1) / 2
    u = u * (1 + 0.08 * (2 * torch.rand(b, 3, 1, 1) - 1)) + 0.08 * (2 * torch.rand(b, 3, 1, 1) - 1)
    x = u * 2 - 1
    return (x + 0.1 * torch.rand(b, 1, 1, 1) * torch.randn_like(x)).clamp(-1.0, 1.0)


def accuracies(model: ShapesClassifier, images: torch.Tensor, attributes: dict) -> dict[str, float]:
    pred = predict_attributes(images, classifier=model)
    return {key: round(float((pred[key] == attributes[key]).float().mean()), 4) for key in ATTRIBUTES}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=3000)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--eval-n", type=int, default=5000)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path, default=WEIGHTS_PATH)
    args = parser.parse_args()

    torch.manual_seed(TRAIN_SEED)
    torch.set_num_threads(args.threads)
    start = time.perf_counter()
    model = ShapesClassifier()
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=args.lr, total_steps=args.steps, pct_start=0.1)
    stream = shapes_stream(args.batch_size, seed=TRAIN_SEED)
    model.train()
    for step in range(args.steps):
        batch = next(stream)
        logits = model(augment(batch.images))
        loss = sum(F.cross_entropy(logits[key], batch.attributes[key]) for key in ATTRIBUTES)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        if step % 500 == 0 or step == args.steps - 1:
            print(json.dumps({"step": step, "loss": round(loss.item(), 4)}), flush=True)

    model.eval()
    val = make_shapes(args.eval_n, SHAPES_EVAL_SEEDS["val"])
    torch.manual_seed(TRAIN_SEED + 1)
    clean = accuracies(model, val.images, val.attributes)
    augmented = accuracies(model, augment(val.images), val.attributes)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    metadata = {
        "config": json.dumps(model.config),
        "seed": str(TRAIN_SEED),
        "steps": str(args.steps),
        "batch_size": str(args.batch_size),
        "val_accuracy": json.dumps(clean),
    }
    save_file(state, str(args.out), metadata=metadata)
    print(
        json.dumps(
            {
                "val_accuracy": clean,
                "val_accuracy_augmented": augmented,
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
