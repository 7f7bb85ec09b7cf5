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


def load_images(path: str | Path, *, what: str = "samples") -> torch.Tensor | tuple[np.ndarray, np.ndarray]:
    """Images (N, C, H, W) in [-1, 1] from a folder of image files, a .npy array, or a .npz archive (its
    one array, or ``arr_0`` / ``images`` / ``samples``); float arrays are (N, C, H, W) in [-1, 1] (what
    ``kuosan sample`` writes), uint8 arrays 0..255 in (N, H, W, C) or (N, C, H, W). A .npz with ``mu``
    and ``sigma`` is Gaussian statistics (a reference for the FID alone), returned as (mu, sigma).
    ConfigError or DataError (one line) naming the file otherwise."""
    from kuosan.data.image_folder import load_image_folder

    path = Path(path)
    if path.is_dir():
        return load_image_folder(path, channels=3)
    if not path.is_file():
        raise ConfigError(f"{what} not found: {path}")
    try:
        loaded = np.load(path, allow_pickle=False)
        if isinstance(loaded, np.ndarray):
            x = loaded
        else:
            with loaded as f:
                if {"mu", "sigma"} <= set(f.files):
                    return f["mu"].astype(np.float64), f["sigma"].astype(np.float64)
                keys = [k for k in ("arr_0", "images", "samples") if k in f.files] or list(f.files)
                if len(keys) != 1:
                    raise ConfigError(f"{path} holds several arrays ({', '.join(f.files)}): which are the images?")
                x = f[keys[0]]
    except (ValueError, OSError, EOFError) as e:
        raise ConfigError(f"cannot read {path} as a .npy/.npz array: {str(e).splitlines()[0]}") from None
    if x.ndim != 4:
        raise ConfigError(f"{path}: expected images (N, C, H, W) or (N, H, W, C), got an array of shape {x.shape}")
    if x.dtype == np.uint8:
        if x.shape[-1] in (1, 3) and x.shape[1] not in (1, 3):
            x = x.transpose(0, 3, 1, 2)
        return torch.from_numpy(np.ascontiguousarray(x)).float() / 127.5 - 1
    if x.dtype.kind != "f" or x.shape[1] not in (1, 3):
        raise ConfigError(f"{path}: expected float (N, C, H, W) in [-1, 1] or uint8 images, got {x.dtype} {x.shape}")
    if not np.isfinite(x).all() or x.min() < -1.001 or x.max() > 1.001:
        raise ConfigError(f"{path}: float images must be finite and in [-1, 1] (got {x.min():.3g}..{x.max():.3g})")
    return torch.from_numpy(x.astype(np.float32)).clamp(-1, 1)


def evaluate(
    samples: str | Path | torch.Tensor,
    dataset: str | None = None,
    *,
    reference=None,
    inception_weights=None,
    resize: str = "tf1-bilinear",
    stats_cache=None,
    prompts=None,
    clip=None,
    device: str | None = None,
    progress: bool = False,
) -> dict:
    """The sample-quality report of ``samples`` (a tensor, a .npy/.npz file or a folder of images).

    Without ``reference``: the suite of a bundled data set (``dataset``, default digits: its own
    classifier's FD, KID, precision/recall, IS and memorisation; :func:`load_samples`), with the
    Inception FID too when ``inception_weights`` is given. With ``reference`` (images, a folder, an
    array file, or a statistics .npz): FID, KID, precision/recall and IS in the FID Inception-v3's
    features (``inception_weights``: a local file; nothing is downloaded), the reference's features
    cached in ``stats_cache``; see :mod:`kuosan.metrics.report`. ``prompts`` (a list, a text file
    with one prompt per line, or one for all, or a captioned folder: :func:`folder_captions`) with
    ``clip`` (a local transformers CLIP directory) add the CLIP score (and are the whole report when
    neither a reference nor a data set is named). The networks run on ``device`` (default auto)."""
    where = devices.resolve_device(device)
    if inception_weights and not Path(inception_weights).is_file():
        raise ConfigError(f"Inception weights: file not found: {inception_weights}")
    if reference is None and dataset is None and prompts is not None:  # the CLIP score alone, of any images
        x = samples if isinstance(samples, torch.Tensor) else load_images(samples)
        if isinstance(x, tuple):
            raise ConfigError(f"{samples} holds statistics, not images")
        return {"n": int(len(x)), **clip_report(x, prompts, clip)}
    if reference is None:
        dataset = dataset or "digits"
        x = load_samples(samples, dataset) if not isinstance(samples, torch.Tensor) else samples
        try:
            report = evaluate_samples(
                x, dataset, inception_weights=inception_weights, resize=resize, stats_cache=stats_cache, device=where
            )
        except ValueError as e:
            raise ConfigError(str(e)) from None
    else:
        if dataset:
            raise ConfigError("give --dataset (a bundled data set's judges) or --ref (any reference), not both")
        if not inception_weights:
            raise ConfigError(
                "--ref needs --inception-weights FILE: the FID Inception-v3 weights (e.g. pytorch-fid's "
                "pt_inception-2015-12-05-6726825d.pth); nothing is downloaded"
            )
        x = samples if isinstance(samples, torch.Tensor) else load_images(samples)
        if isinstance(x, tuple):
            raise ConfigError(f"{samples} holds statistics, not images: it can be a reference, not the samples")
        ref = reference if isinstance(reference, (torch.Tensor, tuple)) else load_images(reference, what="reference")
        from kuosan.metrics.inception import InceptionFeatureExtractor
        from kuosan.metrics.report import image_report

        try:
            extractor = InceptionFeatureExtractor(inception_weights, resize=resize, device=where)
            report = image_report(x, ref, extractor, cache=stats_cache, progress=progress)
        except ValueError as e:
            raise ConfigError(str(e).splitlines()[0]) from None
    if prompts is not None:
        report.update(clip_report(x, prompts, clip))
    return report


def folder_captions(folder: Path) -> list[str]:
    """The captions of a captioned image folder, in the order its images load (sorted paths): from
    ``metadata.jsonl`` (``file_name`` and ``text`` per line, the Hugging Face imagefolder layout) or
    ``NAME.txt`` beside each ``NAME.png`` (kohya-style). ConfigError naming an image without one."""
    import json

    from kuosan.data.image_folder import find_images

    images = find_images(folder)
    captions: dict[str, str] = {}
    meta = folder / "metadata.jsonl"
    if meta.is_file():
        for number, line in enumerate(meta.read_text().splitlines(), 1):
            if line.strip():
                try:
                    row = json.loads(line)
                    captions[str(row["file_name"])] = str(row["text"])
                except (json.JSONDecodeError, KeyError, TypeError):
                    raise ConfigError(f"{meta}:{number}: expected a JSON object with file_name and text") from None
    out = []
    for image in images:
        name = image.relative_to(folder).as_posix()
        text = image.with_suffix(".txt")
        if name in captions:
            out.append(captions[name])
        elif text.is_file():
            out.append(text.read_text().strip())
        else:
            raise ConfigError(f"{image} has no caption (no metadata.jsonl entry, no {text.name})")
    return out


def clip_report(images: torch.Tensor, prompts, clip) -> dict:
    """The CLIP score of images and their prompts (one per image, or one for all): the mean cosine and
    torchmetrics' 100 max(cos, 0), with a local CLIP (``clip``: a transformers directory)."""
    from kuosan.metrics.clip_score import clip_score, load_clip

    if clip is None:
        raise ConfigError("--prompts needs --clip DIR: a local transformers CLIP model directory")
    if not isinstance(prompts, (list, tuple)):
        path = Path(prompts)
        if path.is_dir():
            prompts = folder_captions(path)
        elif not path.is_file():
            raise ConfigError(f"prompts file not found: {path}")
        else:
            prompts = [line.strip() for line in path.read_text().splitlines() if line.strip()]
    prompts = list(prompts) * len(images) if len(prompts) == 1 else list(prompts)
    if len(prompts) != len(images):
        raise ConfigError(f"{len(prompts)} prompts for {len(images)} images (give one per image, or one for all)")
    if images.shape[1] != 3:
        images = images.expand(-1, 3, -1, -1)
    try:
        scorer = load_clip(clip)
    except (OSError, ValueError, ImportError) as e:
        raise ConfigError(f"cannot load the CLIP model in {clip}: {str(e).splitlines()[0]}") from None
    s = clip_score(images, prompts, scorer)
    return {"clip_score": float(s.mean()), "clip_score_torchmetrics": float((100 * s.clamp(min=0)).mean())}


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
    if cfg.label.classes:
        raise ConfigError(f"{run_dir} is class-conditional: kuosan nll measures unconditional runs")
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
