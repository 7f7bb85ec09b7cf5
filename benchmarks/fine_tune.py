"""Fine-tuning from pretrained weights: does a digits run fine-tuned on 0s and 1s draw 0s and 1s?

    python benchmarks/fine_tune.py [--base RUN] [--budget 60] [--classes 0 1] [--n 1000] [--out DIR]
                                   [--lora RANK --lora-lr 0.01]

Starts a new run from the base run's weights (`train.init_from`, a fresh optimizer) on only the
given classes (`data.keep_classes`) for --budget seconds, then samples n images from the base and
from the fine-tuned run with one seed and reads them with the shipped digits classifier. Without
--base, the unconditional digits preset is trained for 300 s first. JSON lines: the training
summaries, then the share of samples read as each class before and after. With --lora, a second
fine-tune trains only a rank-RANK LoRA adapter on the attention projections (`lora.rank`, at its own
learning rate, as LoRA scripts use a higher one than full fine-tuning), and the adapter's size is
printed beside the base weights'.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from kuosan import app
from kuosan.judges.digits import digit_quality, load_digit_classifier


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--base", help="a trained digits run (default: train the digits preset for 300 s)")
    p.add_argument("--budget", type=float, default=60.0, help="seconds of fine-tuning")
    p.add_argument("--classes", type=int, nargs="+", default=[0, 1])
    p.add_argument("--n", type=int, default=1000)
    p.add_argument("--out", default="runs/fine-tune-bench")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--lora", type=int, default=0, help="also fine-tune a LoRA adapter of this rank")
    p.add_argument("--lora-lr", type=float, default=0.01)
    args = p.parse_args()
    out = Path(args.out)
    base = Path(args.base) if args.base else out / "base"
    if not args.base and not (base / "checkpoint").is_dir():
        summary = app.train(base, preset="digits", time_budget=300, seed=args.seed, progress=False)
        print(json.dumps({"bench": "fine_tune", "trained": "base", **summary}), flush=True)
    keep = f"data.keep_classes=[{','.join(map(str, args.classes))}]"
    tuned = {"tuned": [f"train.init_from={base}", keep]}
    if args.lora:
        tuned["lora"] = [*tuned["tuned"], f"lora.rank={args.lora}", f"train.lr={args.lora_lr}"]
    for name, overrides in tuned.items():
        summary = app.train(out / name, preset="digits", overrides=overrides, time_budget=args.budget,
                            seed=args.seed, progress=False)  # fmt: skip
        print(json.dumps({"bench": "fine_tune", "trained": name, **summary}), flush=True)
    if args.lora:
        size = {name: (run / "checkpoint" / "ema.safetensors").stat().st_size for name, run in
                (("base", base), ("adapter", out / "lora"))}  # fmt: skip
        print(json.dumps({"bench": "fine_tune", "bytes": size, "adapter_share": size["adapter"] / size["base"]}))
    classifier = load_digit_classifier().eval()
    shares = {}
    for name, run in [("base", base), *((name, out / name) for name in tuned)]:
        hist = digit_quality(app.sample(run, args.n, seed=args.seed), classifier=classifier)["class_hist"]
        shares[name] = {"hist": [round(h, 4) for h in hist], "kept": round(sum(hist[k] for k in args.classes), 4)}
    row = {"bench": "fine_tune", "classes": args.classes, "budget": args.budget, **shares}
    print(json.dumps(row), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
