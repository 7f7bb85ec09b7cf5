"""The commands of the ``kuosan`` command line: each turns its parsed arguments into one call of an
application function (:mod:`kuosan.app`) and prints the result as one JSON line."""

from __future__ import annotations

import importlib.util
import json
import os
import signal
import sys
from pathlib import Path

from kuosan import app
from kuosan.utils import replaced_whole, unwritable_reason


class UserError(Exception):
    """A problem with what the user asked for: printed as one line, exit status 2."""


def _positive(flag: str, value: int | None) -> None:
    if value is not None and value < 1:
        raise UserError(f"{flag} must be at least 1, got {value}")


def _out_file(path: str, suffixes: tuple[str, ...] | None, flag: str = "--out") -> Path:
    """The file of ``flag`` (--out), checked before any work: its suffix (any when ``suffixes`` is
    None), and a folder it can be written in."""
    out = Path(path)
    if suffixes is not None and out.suffix not in suffixes:
        raise UserError(f"{flag} must end in {' or '.join(suffixes)}, got {out.name}")
    if out.is_dir():
        raise UserError(f"{flag} {out} is a directory")
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UserError(f"{flag}: cannot create {out.parent}: {e.strerror}") from None
    reason = unwritable_reason(out.parent)
    if reason is not None:
        raise UserError(f"{flag}: {out.parent} is not writable ({reason})")
    return out


def _trajectory_file(args) -> Path:
    """The --trajectory file: a .gif or .png other than --out."""
    path = _out_file(args.trajectory, (".gif", ".png"), "--trajectory")
    if path.resolve() == Path(args.out).resolve():
        raise UserError(f"--trajectory and --out are the same file ({path}): the samples would be overwritten")
    return path


def _save_images(x, out: Path, *, captions=None, **png) -> None:
    """FILE.npy (the array) or FILE.png (a grid, each image over its caption where ``captions`` are
    given), written whole: an earlier file there stays as it was if the write fails."""
    import numpy as np

    from kuosan.imaging import save_samples_png
    from kuosan.plots import captioned_grid

    try:
        with replaced_whole(out) as tmp:
            if out.suffix == ".npy":
                np.save(tmp, x.numpy())
            elif captions is not None:
                captioned_grid(x, captions).save(tmp, format="PNG")
            else:
                save_samples_png(x, tmp, **png)
    except OSError as e:  # numpy's short-write error names no file and no cause
        raise OSError(e.errno, f"not written ({e.strerror or e}); an earlier file there is kept", str(out)) from None


def _save_picture(picture, out: Path) -> None:
    """A PIL picture written whole as PNG (an earlier file there is kept if the write fails)."""
    with replaced_whole(out) as tmp:
        picture.save(tmp, format="PNG")


def _save_trajectory(trajectory, path: Path) -> None:
    """The trajectory's animation (.gif) or strip (.png), written whole."""
    with replaced_whole(path) as tmp:
        app.save_trajectory(trajectory, tmp)


def train(args) -> int:
    summary = app.train(
        args.out,
        preset=args.preset,
        config=args.config,
        overrides=args.overrides,
        steps=args.steps,
        time_budget=args.time_budget,
        seed=args.seed,
        resume=args.resume,
        device=args.device,
        progress=not args.no_progress,
        on_resume=lambda step: print(f"resuming {args.out} at step {step}", file=sys.stderr),
    )
    if int(os.environ.get("RANK", "0")) == 0:
        print(json.dumps(summary))
    if not summary["interrupted"]:
        return 0
    # stopped by a signal, checkpoint saved: the shell's status for it (130 SIGINT, 143 SIGTERM)
    return 128 + getattr(signal, str(summary["signal"]), signal.SIGINT)


def sample(args) -> int:
    out = _out_file(args.out, (".npy", ".png"))
    _positive("-n", args.num)
    _positive("--langevin-steps", args.langevin_steps)
    options = {
        key: value
        for key, value in (
            ("eta", args.eta),
            ("langevin_steps", args.langevin_steps),
            ("snr", args.snr),
            ("solver_type", args.solver_type),
            ("form", args.form),
        )
        if value is not None
    }
    trajectory = None
    if args.trajectory:
        path = _trajectory_file(args)
        trajectory = app.trajectory_for(args.run)
    x = app.sample(
        args.run,
        args.num,
        sampler=args.sampler,
        steps=args.steps,
        grid=args.grid,
        clip=False if args.no_clip else None,
        seed=args.seed,
        weights=args.weights,
        batch_size=args.batch_size,
        device=args.device,
        precision=args.precision,
        class_label=args.class_label,
        guidance=args.guidance,
        callback=trajectory,
        **options,
    )
    _save_images(x, out)
    result = {"out": str(out), "shape": list(x.shape)}
    if trajectory is not None:
        trajectory.finish(x)
        _save_trajectory(trajectory, path)
        result["trajectory"] = str(path)
    print(json.dumps(result))
    return 0


def info(args) -> int:
    print(json.dumps(app.run_info(args.run), indent=2))
    return 0


def evaluate(args) -> int:
    out = _out_file(args.out, None) if args.out else None
    report = app.evaluate(
        args.samples,
        args.dataset,
        reference=args.ref,
        inception_weights=args.inception_weights,
        resize=args.resize,
        stats_cache=args.stats_cache,
        prompts=args.prompts,
        clip=args.clip,
        device=args.device,
        progress=True,
    )
    if args.ref:
        against = {"ref": str(args.ref)}
    elif args.prompts and not args.dataset:  # the CLIP score alone
        against = {"prompts": str(args.prompts)}
    else:
        against = {"dataset": args.dataset or "digits"}
    text = json.dumps({"samples": str(args.samples), **against, **report})
    if out is not None:
        with replaced_whole(out) as tmp:
            tmp.write_text(text + "\n")
    print(text)
    return 0


def nll(args) -> int:
    out = _out_file(args.out, (".npy",)) if args.out else None
    _positive("-n", args.num)
    _positive("--batch-size", args.batch_size)
    result, bpd = app.likelihood(
        args.run,
        split=args.split,
        method=args.method,
        n=args.num,
        batch_size=args.batch_size,
        seed=args.seed,
        weights=args.weights,
        variance=args.variance,
        clip=not args.no_clip,
        dequantize=args.dequantize,
        steps=args.steps,
        rtol=args.rtol,
        atol=args.atol,
        trace=args.trace,
        probe=args.probe,
        device=args.device,
    )
    if out is not None:
        _save_images(bpd, out)
    print(json.dumps(result))
    return 0


def reconstruct(args) -> int:
    out = _out_file(args.out, (".png",)) if args.out is not None else None
    for flag, value in (("-n", args.num), ("--eval-n", args.eval_n), ("--batch-size", args.batch_size)):
        _positive(flag, value)
    result, picture = app.reconstruct(
        args.run,
        split=args.split,
        eval_n=args.eval_n,
        weights=args.weights,
        sample=args.sample,
        batch_size=args.batch_size,
        seed=args.seed,
        pairs=args.num if out is not None else 0,
        device=args.device,
    )
    if out is not None:
        _save_images(picture, out, nrow=8)
        result["out"] = args.out
    print(json.dumps(result))
    return 0


def text_to_image(args) -> int:
    out = _out_file(args.out, (".npy", ".png"))
    if args.caption and out.suffix != ".png":
        raise UserError(f"--caption writes the prompt beneath each image of a .png grid; --out is {out.name}")
    _positive("-n", args.num)
    _positive("--steps", args.steps)
    _quiet_transformers()
    run, trajectory = args.run, None
    if args.trajectory:
        path = _trajectory_file(args)
        run = app.load_pipeline(args.run, args.weights, args.device, args.precision)
        trajectory = app.Trajectory(decode=run.decode)
    x = app.text_to_image(
        run,
        args.prompt,
        task=args.command,
        n=args.num,
        image=getattr(args, "image", None),
        mask=getattr(args, "mask", None),
        strength=getattr(args, "strength", None),
        method=getattr(args, "method", "auto"),
        guidance=args.guidance,
        negative=args.negative,
        steps=args.steps,
        sampler=args.sampler,
        grid=args.grid,
        height=getattr(args, "height", None),
        width=getattr(args, "width", None),
        seed=args.seed,
        weights=args.weights,
        device=args.device,
        precision=args.precision,
        callback=trajectory,
    )
    _save_images(x, out, captions=[args.prompt] * len(x) if args.caption else None)
    result = {"out": str(out), "shape": list(x.shape), "prompt": args.prompt}
    if trajectory is not None:
        trajectory.finish(x)
        _save_trajectory(trajectory, path)
        result["trajectory"] = str(path)
    print(json.dumps(result))
    return 0


def sds(args) -> int:
    out = _out_file(args.out, (".npy", ".png"))
    _quiet_transformers()
    x, report = app.score_distillation(
        args.run,
        args.prompt,
        n=args.num,
        steps=args.steps,
        lr=args.lr,
        guidance=args.guidance,
        negative=args.negative,
        t_min=args.t_min,
        t_max=args.t_max,
        weighting=args.weighting,
        t_schedule=args.t_schedule,
        t_max_end=args.t_max_end,
        seed=args.seed,
        device=args.device,
        through_encoder=args.through_encoder,
        progress=True,
    )
    _save_images(x, out)
    print(json.dumps({"out": str(out), "shape": list(x.shape), **report}))
    return 0


def dreamfusion(args) -> int:
    _quiet_transformers()
    report = app.dreamfusion(
        args.run,
        args.prompt,
        args.out,
        steps=args.steps,
        seed=args.seed,
        guidance=args.guidance,
        negative=args.negative,
        lr=args.lr,
        batch_size=args.batch_size,
        t_min=args.t_min,
        t_max=args.t_max,
        weighting=args.weighting,
        t_schedule=args.t_schedule,
        t_max_end=args.t_max_end,
        azimuth=tuple(args.azimuth),
        elevation=tuple(args.elevation),
        radius=tuple(args.radius),
        fov=tuple(args.fov),
        view_prompts=args.view_prompts,
        perp_neg=args.perp_neg,
        perp_neg_weight=args.perp_neg_weight,
        grad_clip=args.grad_clip,
        albedo_warmup=args.albedo_warmup,
        textureless=args.textureless,
        min_ambient=args.min_ambient,
        decoded_target=args.decoded_target,
        lambda_orientation=args.lambda_orientation,
        lambda_entropy=args.lambda_entropy,
        n_samples=args.samples,
        render_size=args.render_size,
        encoding=args.encoding,
        n_frequencies=args.frequencies,
        background=args.background,
        init=args.init,
        mesh=args.save_mesh,
        mesh_level=args.mesh_level,
        device=args.device,
        progress=True,
    )
    print(json.dumps(report))
    return 0


def plot(args) -> int:
    picture = app.plot_training(args.run)  # first: a missing run folder is an error, not created
    out = _out_file(args.out or str(Path(args.run) / "training.png"), (".png",))
    _save_picture(picture, out)
    print(json.dumps({"out": str(out), "size": list(picture.size)}))
    return 0


def show(args) -> int:
    out = _out_file(args.out, (".png",))
    report = {}
    if args.what == "forward":
        _positive("-n", args.num)
        picture = app.forward_picture(args.dataset, show=args.schedule, n=args.num, seed=args.seed)
    elif args.what == "score":
        picture, report = app.score_picture(args.run, sigmas=args.sigma, points=args.points, seed=args.seed)
    else:
        _positive("-n", args.num)
        _positive("--steps", args.steps)
        picture, report = app.langevin_picture(n=args.num, steps=args.steps, seed=args.seed)
    _save_picture(picture, out)
    print(json.dumps({"out": str(out), "size": list(picture.size), **report}))
    return 0


def serve(args) -> int:
    if not 0 < args.port < 65536:
        raise UserError(f"--port must be in 1..65535, got {args.port}")
    if importlib.util.find_spec("gradio") is None:  # looked up, not imported: web.serve sets it up first
        raise UserError("kuosan serve needs gradio: pip install 'kuosan[web]'")
    from kuosan import web

    def announce(url):
        print(json.dumps({"url": url, "runs": args.runs, "out": args.out}), flush=True)

    web.serve(args.runs, host=args.host, port=args.port, out=args.out, on_start=announce)
    return 0


def export(args) -> int:
    print(json.dumps(app.export(args.run, args.out, format=args.format, weights=args.weights)))
    return 0


def _quiet_transformers() -> None:
    """No progress bars from transformers' weight loading on the command line."""
    try:
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
    except ImportError:
        pass


COMMANDS = {
    "train": train,
    "sample": sample,
    "info": info,
    "eval": evaluate,
    "nll": nll,
    "reconstruct": reconstruct,
    "txt2img": text_to_image,
    "img2img": text_to_image,
    "inpaint": text_to_image,
    "export": export,
    "plot": plot,
    "show": show,
    "serve": serve,
    "sds": sds,
    "dreamfusion": dreamfusion,
}

__all__ = ["COMMANDS", "UserError"]
