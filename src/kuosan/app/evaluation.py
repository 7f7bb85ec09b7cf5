"""Evaluation of trained runs and of their samples, as the CLI and the Python API run it: every
sample-quality metric of a samples file, the likelihood of a data split in bits/dim, an
autoencoder's reconstructions."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import torch

from kuosan import devices
from kuosan.app.sampling import refuse_autoencoder
from kuosan.build import build_data, data_bin_width, data_options
from kuosan.config import ConfigError
from kuosan.data.registry import load_split
from kuosan.diffusion.likelihood import ode_bpd, respaced_schedule, vlb_bpd
from kuosan.judges.evaluate import DATASETS, SAMPLE_SHAPES, evaluate_samples
from kuosan.metrics.reconstruction import reconstruction_pairs, reconstruction_report
from kuosan.runs import Run, load_autoencoder

VARIANCES = ("auto", "fixed_small", "fixed_large", "learned_range")


def load_samples(path: str | Path, dataset: str = "digits") -> torch.Tensor:
    """A samples file (.npy, what ``kuosan sample`` writes) checked against ``dataset``'s sample shape:
    a float array (N >= 10, *shape), finite. ConfigError (one line) otherwise."""
    if dataset not in DATASETS:
        raise ConfigError(f"dataset {dataset!r}: available: {', '.join(DATASETS)}")
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"samples file not found: {path}")
    try:
        x = np.load(path, allow_pickle=False)
    except (ValueError, OSError) as e:
        raise ConfigError(f"cannot read {path} as a .npy array: {e}") from None
    shape = SAMPLE_SHAPES[dataset]
    if x.dtype.kind != "f" or x.shape[1:] != shape or len(x) < 10:
        raise ConfigError(
            f"{path}: expected {dataset} samples, a float array (N >= 10, {', '.join(map(str, shape))}) "
            f"in [-1, 1]; got {x.dtype} {x.shape}"
        )
    if not np.isfinite(x).all():
        raise ConfigError(f"{path} holds non-finite values")
    return torch.from_numpy(x.astype(np.float32))


def evaluate(
    samples: str | Path | torch.Tensor,
    dataset: str = "digits",
    *,
    inception_weights=None,
    resize: str = "tf1-bilinear",
    stats_cache=None,
    device: str | None = None,
) -> dict:
    """Every metric of ``metrics.evaluate`` for samples (a tensor, or a .npy file: :func:`load_samples`);
    the feature networks run on ``device`` (default auto)."""
    where = devices.resolve_device(device)
    x = load_samples(samples, dataset) if not isinstance(samples, torch.Tensor) else samples
    if inception_weights and not Path(inception_weights).is_file():
        raise ConfigError(f"Inception weights: file not found: {inception_weights}")
    try:
        return evaluate_samples(
            x, dataset, inception_weights=inception_weights, resize=resize, stats_cache=stats_cache, device=where
        )
    except ValueError as e:
        raise ConfigError(str(e)) from None


def likelihood(
    run_dir: str | Path,
    *,
    split: str = "test",
    method: str = "vlb",
    n: int | None = None,
    batch_size: int = 500,
    seed: int = 0,
    weights: str = "ema",
    variance: str = "auto",
    clip: bool = True,
    dequantize: str = "auto",
    steps: int | None = None,
    rtol: float = 1e-5,
    atol: float = 1e-5,
    trace: str = "hutchinson",
    probe: str = "rademacher",
    device: str | None = None,
) -> tuple[dict, torch.Tensor]:
    """(report, per-image bits/dim) of a split of the run's data: the variational bound (``method="vlb"``,
    improved-diffusion's calc_bpd_loop, respaced to ``steps`` if given) or the probability-flow ODE on
    dequantized data (``"ode"``, RK45 with ``rtol``/``atol``, Hutchinson or exact divergence).
    docs/evaluation.md says what each number means. The network runs on ``device`` (default the run's
    ``sample.device``, auto) in float32; the noise is drawn on the CPU, so a seed gives the same figure
    on every device up to floating-point error."""
    if method not in ("vlb", "ode"):
        raise ConfigError(f"method {method!r} is not one of vlb, ode")
    if variance not in VARIANCES:
        raise ConfigError(f"variance {variance!r} is not one of {', '.join(VARIANCES)}")
    if dequantize not in ("auto", "yes", "no"):
        raise ConfigError(f"dequantize {dequantize!r} is not one of auto, yes, no")
    if n is not None and n < 1:
        raise ConfigError(f"the number of images must be at least 1, got {n}")
    if batch_size < 1:
        raise ConfigError(f"the batch size must be at least 1, got {batch_size}")
    run = Run.open(run_dir, weights=weights)
    refuse_autoencoder(run)
    cfg = run.config
    where = devices.resolve_device(cfg.sample.device if device is None else device)
    run.network.to(where)
    x = build_data(cfg, split=split)  # digits: train, test, all; toy 2-D: train, test (a fresh draw); ...
    if n is not None:
        x = x[:n]
    schedule = run.schedule
    denoiser = run.denoiser(clip=False)  # no clamping: the ODE needs the model's own vector field
    if method == "vlb" and cfg.diffusion.kind != "vp":
        raise ConfigError("method vlb needs a DDPM (VP) run; use method ode")
    bin_width = data_bin_width(cfg)
    if variance == "auto":
        variance = "learned_range" if cfg.diffusion.learn_sigma else "fixed_small"
    if variance == "learned_range" and not cfg.diffusion.learn_sigma:
        raise ConfigError("variance learned_range: this run's network has no learned variance")
    dequantized = cfg.diffusion.dequantize if dequantize == "auto" else dequantize == "yes"
    if dequantized and bin_width is None:
        raise ConfigError("dequantize: this run's data are continuous")
    vlb_schedule = schedule
    if steps is not None:
        if not 2 <= steps <= schedule.T:
            raise ConfigError(f"steps must be between 2 and T={schedule.T}, got {steps}")
        vlb_schedule = respaced_schedule(schedule, steps)
    g = torch.Generator().manual_seed(seed)
    t0, parts, extra = time.perf_counter(), [], {}
    for chunk in x.split(batch_size):
        chunk = chunk.to(where)
        if method == "vlb":
            out = vlb_bpd(
                denoiser,
                chunk,
                vlb_schedule,
                variance=variance,
                bin_width=bin_width,
                clip_denoised=clip,
                dequantized=dequantized,
                generator=g,
            )
            extra.setdefault("prior_bpd", []).append(out["prior_bpd"].cpu())
            extra.setdefault("decoder_bpd", []).append(out["terms"][:, 0].cpu())
        else:
            out = ode_bpd(
                denoiser,
                chunk,
                bin_width=bin_width,
                generator=g,
                rtol=rtol,
                atol=atol,
                trace=trace,
                probe=probe,
                sigma_min=schedule.sigma_min,
                sigma_max=schedule.sigma_max,
            )
            extra.setdefault("nfe", []).append(out["nfe"])
        parts.append(out["bpd"].cpu())
    bpd = torch.cat(parts)
    result = {
        "run": str(run_dir),
        "split": split,
        "method": method,
        "n": len(bpd),
        "bpd": float(bpd.mean()),
        "bpd_stderr": float(bpd.std() / len(bpd) ** 0.5) if len(bpd) > 1 else None,
        "bin_width": bin_width,
        "seconds": round(time.perf_counter() - t0, 1),
        "seed": seed,
    }
    if method == "vlb":
        result.update(
            variance=variance,
            clip_denoised=clip,
            dequantized=dequantized,
            steps=vlb_schedule.T,
            prior_bpd=float(torch.cat(extra["prior_bpd"]).mean()),
            decoder_bpd=float(torch.cat(extra["decoder_bpd"]).mean()),
        )
    else:
        result.update(
            rtol=rtol,
            atol=atol,
            trace=trace,
            probe=probe,
            nfe_per_batch=extra["nfe"],
            sigma_min=schedule.sigma_min,
            sigma_max=schedule.sigma_max,
        )
    return result, bpd


def reconstruct(
    run_dir: str | Path,
    *,
    split: str = "test",
    eval_n: int = 2000,
    weights: str = "ema",
    sample: bool = False,
    batch_size: int = 250,
    seed: int = 0,
    pairs: int = 0,
    device: str | None = None,
):
    """(report, picture) of a trained autoencoder on its data set's evaluation split (shapes: the fixed
    test or val set of ``eval_n`` images; digits: a split): PSNR, KL per latent dimension, the latent
    scale factor; ``pairs`` > 0 also returns the first ``pairs`` originals over their reconstructions
    (rows of 8), else None. ``sample`` decodes posterior draws instead of the posterior mean. The
    autoencoder runs on ``device`` (default the run's ``sample.device``, auto)."""
    for name, value in (("eval_n", eval_n), ("batch_size", batch_size)):
        if value < 1:
            raise ConfigError(f"{name} must be at least 1, got {value}")
    cfg, net = load_autoencoder(run_dir, weights=weights)
    where = devices.resolve_device(cfg.sample.device if device is None else device)
    net.to(where)
    x = load_split(cfg.data.name, split, data_options(cfg, n=eval_n))  # shapes: eval_n images of the fixed set
    x = x.to(where)
    with torch.inference_mode():
        report = reconstruction_report(net, x, batch_size=batch_size, sample=sample, seed=seed)
        picture = reconstruction_pairs(net, x[:pairs], nrow=8).cpu() if pairs else None
    return {"run": str(run_dir), "split": split, "weights": weights, "sample": sample, **report}, picture
