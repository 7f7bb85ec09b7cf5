"""The ``kuosan`` command line: train, sample, info."""
from __future__ import annotations

import argparse
import json
import logging
import re
import sys
from pathlib import Path

EXIT_USAGE = 2
OVERRIDE = re.compile(r"^[A-Za-z_]\w*(\.\w+)+=")


class UserError(Exception):
    """A problem with what the user asked for: printed as one line, exit status 2."""


def _add_train(sub):
    p = sub.add_parser("train", help="train a diffusion model",
                       description="Train a diffusion model; `section.key=value` overrides any config entry.")
    p.add_argument("--preset", help="named preset: digits, toy2d")
    p.add_argument("--config", help="experiment file (TOML or JSON)")
    p.add_argument("--out", required=True, help="run directory (checkpoints, samples, log)")
    p.add_argument("--time-budget", type=float, help="seconds of training")
    p.add_argument("--steps", type=int, help="total optimizer steps")
    p.add_argument("--seed", type=int)
    p.add_argument("--resume", action="store_true", help="continue the run in --out")
    p.add_argument("--no-progress", action="store_true")
    p.epilog = "Overrides look like train.lr=1e-3 or model.params.base_channels=32, anywhere on the line."


def _add_sample(sub):
    from kuosan.diffusion.schedules import GRIDS
    from kuosan.samplers import SAMPLERS

    p = sub.add_parser("sample", help="draw samples from a trained run")
    p.add_argument("run", help="run directory")
    p.add_argument("--sampler", help=f"one of: {', '.join(SAMPLERS)} (default: the run's)")
    p.add_argument("--steps", type=int, help="sampler steps (default: the run's)")
    p.add_argument("--grid", help=f"noise-level grid: {', '.join(GRIDS)} (default: the run's)")
    p.add_argument("--eta", type=float, help="DDIM / Euler-ancestral stochasticity")
    p.add_argument("-n", "--num", type=int, default=64, help="number of samples")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--weights", choices=["ema", "model"], default="ema")
    p.add_argument("--no-clip", action="store_true", help="do not clamp x0_hat to [-1, 1]")
    p.add_argument("--batch-size", type=int, default=1000)
    p.add_argument("--out", required=True, help="FILE.npy (array (N, ...) in [-1, 1]) or FILE.png (grid)")


def cmd_train(args) -> int:
    from kuosan.build import build_trainer
    from kuosan.config import resolve_config
    from kuosan.train import checkpoint as ckpt

    if args.preset is None and args.config is None and not args.resume:
        raise UserError("give --preset NAME or --config FILE (or --resume)")
    out = Path(args.out)
    existing = ckpt.find_checkpoint(out)
    if existing and not args.resume:
        raise UserError(f"{out} already holds a checkpoint; pass --resume to continue it or choose another --out")
    if args.resume and not existing:
        raise UserError(f"--resume: no checkpoint in {out}")
    overrides = list(args.overrides)  # pulled out of argv by main()
    if args.seed is not None:
        overrides.append(f"train.seed={args.seed}")
    if args.resume:
        from kuosan.config import Config, _merge, parse_override

        base = ckpt.read_config(out)
        for item in overrides:
            base = _merge(base, parse_override(item))
        cfg = Config.from_dict(base)
    else:
        cfg = resolve_config(args.preset, args.config, overrides)
    steps = args.steps if args.steps is not None else cfg.train.steps
    budget = args.time_budget if args.time_budget is not None else cfg.train.time_budget
    if steps is None and budget is None:
        raise UserError("give --steps or --time-budget (or train.steps / train.time_budget in the config)")
    if budget is not None and budget <= 0:
        raise UserError(f"--time-budget must be positive, got {budget}")
    from kuosan.train import distributed

    distributed.init_from_env()  # under torchrun: join the process group (gloo on CPU)
    try:
        trainer = build_trainer(cfg, out, progress=not args.no_progress)
        if args.resume:
            trainer.resume()
            if trainer.rank == 0:
                print(f"resuming {out} at step {trainer.step}", file=sys.stderr)
        summary = trainer.fit(steps=steps, time_budget=budget)
    finally:
        distributed.shutdown()
    if trainer.rank == 0:
        print(json.dumps(summary))
    return 130 if summary["interrupted"] else 0


def cmd_sample(args) -> int:
    import numpy as np

    from kuosan.config import ConfigError
    from kuosan.imaging import save_samples_png
    from kuosan.pipeline import sample_run

    out = Path(args.out)
    if out.suffix not in (".npy", ".png"):
        raise UserError(f"--out must end in .npy or .png, got {out.name}")
    if args.num < 1:
        raise UserError(f"-n must be at least 1, got {args.num}")
    kwargs = {"eta": args.eta} if args.eta is not None else {}
    try:
        x = sample_run(args.run, args.num, sampler=args.sampler, steps=args.steps, grid=args.grid,
                       clip=False if args.no_clip else None, seed=args.seed, weights=args.weights,
                       batch_size=args.batch_size, **kwargs)
    except ConfigError as e:
        raise UserError(str(e).replace("sample.sampler=", "--sampler ").replace("sample.steps=", "--steps ")
                        .replace("sample.grid=", "--grid ")) from None
    except TypeError as e:  # an option the chosen sampler does not take (e.g. --eta with heun)
        raise UserError(f"--sampler {args.sampler}: {e}") from None
    out.parent.mkdir(parents=True, exist_ok=True)
    if out.suffix == ".npy":
        np.save(out, x.numpy())
    else:
        save_samples_png(x, out)
    print(json.dumps({"out": str(out), "shape": list(x.shape)}))
    return 0


def cmd_info(args) -> int:
    from kuosan.build import load_run
    from kuosan.train import checkpoint as ckpt

    cfg, net = load_run(args.run)
    state = ckpt.read_state(args.run)
    info = {"run": str(args.run), "step": state["step"], "train_seconds": round(state["train_seconds"], 1),
            "last_loss": state.get("last_loss"), "data_shape": state["data_shape"],
            "parameters": sum(p.numel() for p in net.parameters()), "config": cfg.to_dict()}
    print(json.dumps(info, indent=2))
    return 0


def main(argv: list[str] | None = None) -> int:
    from kuosan.config import ConfigError
    from kuosan.data import DataError
    from kuosan.train import CheckpointError, TrainingDiverged

    parser = argparse.ArgumentParser(prog="kuosan", description="Diffusion models from first principles.")
    parser.add_argument("-v", "--verbose", action="store_true")
    sub = parser.add_subparsers(dest="command", required=True)
    _add_train(sub)
    _add_sample(sub)
    p = sub.add_parser("info", help="describe a trained run")
    p.add_argument("run")
    argv = list(sys.argv[1:] if argv is None else argv)
    overrides = [a for a in argv if OVERRIDE.match(a)]
    args = parser.parse_args([a for a in argv if not OVERRIDE.match(a)])
    args.overrides = overrides
    if overrides and args.command != "train":
        parser.error(f"config overrides ({overrides[0]}) are only for `kuosan train`")
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(message)s")
    commands = {"train": cmd_train, "sample": cmd_sample, "info": cmd_info}
    try:
        return commands[args.command](args)
    except (UserError, ConfigError, DataError, CheckpointError) as e:
        print(f"kuosan {args.command}: error: {e}", file=sys.stderr)
        return EXIT_USAGE
    except TrainingDiverged as e:
        print(f"kuosan {args.command}: error: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
