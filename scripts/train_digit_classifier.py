"""Train the digits classifier behind ``kuosan.judges.digit_quality`` and write its shipped weights.

    python scripts/train_digit_classifier.py [--epochs 40] [--out PATH]

Seed 0, the fixed digits train split (1437 images) with light augmentation (a random shift of up to
one pixel in each direction, background-filled, and small Gaussian pixel noise); evaluated on the test
split (360 images). Outlier exposure (Hendrycks et al. 2019): each batch also carries as many pure-noise
images (uniform or Gaussian, clamped to [-1, 1]) whose target is the uniform distribution over the 10
classes, so the classifier is not confident on noise and ``digit_quality``'s "confident" share means
"looks like a digit". Writes safetensors (the constructor config in the metadata) and prints one JSON
line with the test accuracy. Takes a few seconds on one CPU core.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import save_file

from kuosan.data import load_digits_with_labels
from kuosan.judges.digits import WEIGHTS_PATH, DigitClassifier


def random_shift(x: torch.Tensor, max_shift: int = 1) -> torch.Tensor:
    """Shift each image of (B, 1, H, W) by a random offset in [-max_shift, max_shift]^2, filling with -1."""
    b, _, h, w = x.shape
    padded = F.pad(x, (max_shift,) * 4, value=-1.0)
    oy = torch.randint(0, 2 * max_shift + 1, (b,))
    ox = torch.randint(0, 2 * max_shift + 1, (b,))
    rows = (oy[:, None] + torch.arange(h))[:, :, None]  # (B, H, 1)
    cols = (ox[:, None] + torch.arange(w))[:, None, :]  # (B, 1, W)
    return padded[torch.arange(b)[:, None, None], 0, rows, cols].unsqueeze(1)


def noise_images(b: int) -> torch.Tensor:
    """(B, 1, 8, 8) pure noise in [-1, 1]: half uniform, half Gaussian with a random scale."""
    uniform = torch.rand(b // 2, 1, 8, 8) * 2 - 1
    gauss = torch.randn(b - b // 2, 1, 8, 8) * torch.rand(b - b // 2, 1, 1, 1) * 1.5
    return torch.cat([uniform, gauss]).clamp(-1.0, 1.0)


def augment(x: torch.Tensor, noise_std: float) -> torch.Tensor:
    x = random_shift(x)
    return (x + noise_std * torch.randn_like(x)).clamp(-1.0, 1.0)


@torch.no_grad()
def evaluate(model: DigitClassifier, x: torch.Tensor, y: torch.Tensor) -> tuple[float, float]:
    model.eval()
    logits = model(x)
    return float((logits.argmax(1) == y).float().mean()), float(F.cross_entropy(logits, y))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=40)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--noise-std", type=float, default=0.05)
    parser.add_argument(
        "--outlier-weight", type=float, default=0.5, help="weight of the outlier-exposure loss (0 disables it)"
    )
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path, default=WEIGHTS_PATH)
    args = parser.parse_args()

    torch.manual_seed(0)
    torch.set_num_threads(args.threads)
    start = time.perf_counter()
    x_train, y_train = load_digits_with_labels("train")
    x_test, y_test = load_digits_with_labels("test")

    model = DigitClassifier()
    steps_per_epoch = math.ceil(len(x_train) / args.batch_size)
    total = args.epochs * steps_per_epoch
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=args.lr, total_steps=total, pct_start=0.1)
    for _ in range(args.epochs):
        model.train()
        for idx in torch.randperm(len(x_train)).split(args.batch_size):
            loss = F.cross_entropy(model(augment(x_train[idx], args.noise_std)), y_train[idx])
            if args.outlier_weight > 0:
                # cross-entropy to the uniform distribution: mean over classes of -log_softmax
                outlier_logits = model(noise_images(len(idx)))
                loss = loss - args.outlier_weight * outlier_logits.log_softmax(1).mean(1).mean()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()

    model.eval()
    train_acc, _ = evaluate(model, x_train, y_train)
    test_acc, test_loss = evaluate(model, x_test, y_test)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    metadata = {
        "config": json.dumps(model.config),
        "seed": "0",
        "epochs": str(args.epochs),
        "outlier_weight": str(args.outlier_weight),
        "test_accuracy": f"{test_acc:.4f}",
    }
    save_file(state, str(args.out), metadata=metadata)
    print(
        json.dumps(
            {
                "test_accuracy": round(test_acc, 4),
                "test_loss": round(test_loss, 4),
                "train_accuracy": round(train_acc, 4),
                "epochs": args.epochs,
                "outlier_weight": args.outlier_weight,
                "parameters": sum(p.numel() for p in model.parameters()),
                "file_bytes": args.out.stat().st_size,
                "out": str(args.out),
                "seconds": round(time.perf_counter() - start, 1),
            }
        )
    )


if __name__ == "__main__":
    main()
