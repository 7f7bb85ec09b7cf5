"""Class-conditional digits: does `kuosan sample --class K` draw the digit K?

    python benchmarks/class_conditional.py [--budget 300] [--n 1000] [--guidance 1 2 3] [--runs DIR]

Trains `--preset digits-class` and, as the anchor, the unconditional `--preset digits` for the same
seconds (or reuses them from --runs DIR/{class,plain}), then samples n images with every class in turn
(`--class all`) at each guidance scale and reads them with the shipped digits classifier. JSON lines:
per guidance, the share read as the requested class (overall and per class) and the classifier's
confidence and Frechet distance (the digits suite); then the unconditional run's confidence and FD
from the same classifier in the same run.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

from kuosan import app
from kuosan.judges.digits import _classify, digit_quality, load_digit_classifier


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--budget", type=float, default=300.0, help="training seconds of each run")
    p.add_argument("--n", type=int, default=1000)
    p.add_argument("--guidance", type=float, nargs="+", default=[1.0, 2.0, 3.0])
    p.add_argument("--runs", default="runs/class-bench", help="where the two runs are (trained if absent)")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    root = Path(args.runs)
    for name, preset in (("class", "digits-class"), ("plain", "digits")):
        if not (root / name / "checkpoint").is_dir():
            summary = app.train(root / name, preset=preset, time_budget=args.budget, seed=args.seed, progress=False)
            print(json.dumps({"bench": "class_conditional", "trained": preset, **summary}), flush=True)
    classifier = load_digit_classifier().eval()
    want = torch.arange(args.n) % 10
    for scale in args.guidance:
        x = app.sample(root / "class", args.n, class_label="all", guidance=scale, seed=args.seed)
        with torch.no_grad():
            read = _classify(classifier, x)[1].argmax(1)
        per_class = [round(float((read[want == k] == k).float().mean()), 4) for k in range(10)]
        quality = digit_quality(x, classifier=classifier)
        row = {
            "bench": "class_conditional",
            "guidance": scale,
            "read_as_requested": float((read == want).float().mean()),
        }
        row.update(per_class=per_class, confident=quality["confident"], fd=round(quality["fd"], 3))
        print(json.dumps(row), flush=True)
    plain = digit_quality(app.sample(root / "plain", args.n, seed=args.seed), classifier=classifier)
    anchor = {"bench": "class_conditional", "unconditional": "digits", "confident": plain["confident"]}
    anchor.update(fd=round(plain["fd"], 3), class_entropy=round(plain["class_entropy"], 3))
    print(json.dumps(anchor), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
