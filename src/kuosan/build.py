"""Where an experiment Config becomes objects: data, network, schedule, objective, Denoiser, text
encoder (the trainer on top of them: :func:`kuosan.app.build_trainer`). Every invalid combination
fails here with a ConfigError before anything is written."""

from __future__ import annotations

import hashlib
import inspect
import logging
import math
from dataclasses import replace
from pathlib import Path

import torch
from torch import nn

from kuosan.config import Config, ConfigError
from kuosan.data import DataError
from kuosan.data.image_folder import CROP_MODES
from kuosan.data.registry import Options, dataset_spec, load_labelled_split, load_split
from kuosan.data.streaming import LOADERS, ImageFiles
from kuosan.devices import PRECISIONS
from kuosan.diffusion import ClampDenoiser, DiscreteSchedule, VPDenoiser
from kuosan.diffusion.parameterization import ScoreDenoiser
from kuosan.diffusion.schedules import BETA_SCHEDULES, GRIDS
from kuosan.diffusion.sde import VESDE, geometric_sigmas
from kuosan.losses.autoencoder import RECON_LOSSES, AutoencoderObjective
from kuosan.losses.diffusion import TARGETS, WEIGHTINGS, DiffusionObjective
from kuosan.losses.score_matching import AnnealedDSMObjective
from kuosan.losses.vlb import LOSSES, TIMESTEP_SAMPLERS, VLBObjective
from kuosan.networks import AUTOENCODERS, NETWORKS
from kuosan.samplers import SAMPLERS
from kuosan.utils import replaced_whole

logger = logging.getLogger(__name__)

KINDS = ("vp", "ncsn")  # diffusion.kind: DDPM on a beta schedule, or a noise-conditional score network
MAX_T = 1_000_000  # diffusion.T: more training timesteps than any published schedule uses


def _validate_ncsn(cfg: Config) -> None:
    d = cfg.diffusion
    if not 0 < d.sigma_min < d.sigma_max:
        raise ConfigError(
            f"diffusion.sigma_min and sigma_max must satisfy 0 < sigma_min < sigma_max, got "
            f"{d.sigma_min} and {d.sigma_max}"
        )
    if d.num_scales < 2:
        raise ConfigError(f"diffusion.num_scales must be at least 2, got {d.num_scales}")
    if d.loss != "simple" or d.learn_sigma or d.timestep_sampler != "uniform" or d.weighting != "none":
        raise ConfigError(
            "diffusion.kind=ncsn trains with annealed DSM: diffusion.loss, learn_sigma, "
            "timestep_sampler and weighting must keep their defaults"
        )


def validate(cfg: Config) -> Config:
    """Check every named choice and number of a config; raise ConfigError naming the key."""
    d, tr = cfg.diffusion, cfg.train
    checks = [
        (d.kind in KINDS, "diffusion.kind", d.kind, list(KINDS)),
        (cfg.model.network in NETWORKS, "model.network", cfg.model.network, list(NETWORKS)),
        (d.schedule in BETA_SCHEDULES, "diffusion.schedule", d.schedule, list(BETA_SCHEDULES)),
        (d.prediction in TARGETS, "diffusion.prediction", d.prediction, list(TARGETS)),
        (d.weighting in WEIGHTINGS, "diffusion.weighting", d.weighting, list(WEIGHTINGS)),
        (d.loss in LOSSES, "diffusion.loss", d.loss, list(LOSSES)),
        (
            d.timestep_sampler in TIMESTEP_SAMPLERS,
            "diffusion.timestep_sampler",
            d.timestep_sampler,
            list(TIMESTEP_SAMPLERS),
        ),
        (tr.precision in PRECISIONS, "train.precision", tr.precision, list(PRECISIONS)),
    ]
    for ok, key, val, choices in checks:
        if not ok:
            raise ConfigError(f"{key}={val!r} is not one of {', '.join(choices)}")
    for key, val, lo in [
        ("diffusion.T", d.T, 2),
        ("train.batch_size", tr.batch_size, 1),
        ("train.warmup_steps", tr.warmup_steps, 0),
        ("train.grad_accum", tr.grad_accum, 1),
        ("train.log_every", tr.log_every, 1),
        ("train.sample_every", tr.sample_every, 0),
        ("data.n", cfg.data.n, 1),
    ]:
        if val < lo:
            raise ConfigError(f"{key} must be at least {lo}, got {val}")
    if d.T > MAX_T:  # the schedule keeps ~16 float64 tables of T entries, and the VLB loops over them
        raise ConfigError(
            f"diffusion.T={d.T} is more than {MAX_T:,} (its tables alone would need {16 * 8 * d.T / 2**30:.1f} GiB)"
        )
    if not tr.checkpoint_every > 0:
        raise ConfigError(f"train.checkpoint_every must be a positive number of seconds, got {tr.checkpoint_every}")
    if len(tr.betas) != 2 or not all(0 <= b < 1 for b in tr.betas):
        raise ConfigError(f"train.betas must be two numbers in [0, 1) (Adam's beta1, beta2), got {list(tr.betas)}")
    if not tr.weight_decay >= 0 or not tr.grad_clip >= 0:
        raise ConfigError("train.weight_decay and train.grad_clip must be >= 0")
    if d.kind == "ncsn":
        _validate_ncsn(cfg)
    validate_sampling(cfg)
    if d.learn_sigma and d.loss == "simple":
        raise ConfigError(
            "diffusion.learn_sigma=true needs diffusion.loss=hybrid or vlb (L_simple does not train the variance)"
        )
    if d.loss == "hybrid" and not d.learn_sigma:
        raise ConfigError("diffusion.loss=hybrid trains a learned variance: set diffusion.learn_sigma=true")
    if d.learn_sigma and cfg.model.network != "unet":
        raise ConfigError("diffusion.learn_sigma=true needs model.network=unet (2x output channels)")
    if d.dequantize and data_bin_width(cfg) is None:
        raise ConfigError(
            f"diffusion.dequantize=true needs data on a grid (digits or an image folder); "
            f"data.name={cfg.data.name!r} is continuous"
        )
    if not tr.lr > 0 or not 0 <= tr.ema_decay < 1:
        raise ConfigError("train.lr must be positive and train.ema_decay in [0, 1)")
    if cfg.data.keep_classes and (
        not isinstance(cfg.data.keep_classes, list) or dataset_spec(cfg.data.name)[0].load_labelled is None
    ):
        raise ConfigError(f"data.keep_classes is a list of classes of a labelled data set, not for {cfg.data.name!r}")
    if cfg.model.params.get("num_classes") and not cfg.label.classes:
        raise ConfigError("model.params.num_classes is set by label.classes (the number of classes)")
    _validate_reading(cfg)
    if tr.init_from:
        _validate_init_from(cfg)
    if cfg.lora.rank:
        _validate_lora(cfg)
    if cfg.text.encoder or cfg.latent.autoencoder or cfg.label.classes:
        _validate_conditional(cfg)
    if cfg.model.network in AUTOENCODERS:
        _validate_autoencoder(cfg)
    return cfg


def validate_sampling(cfg: Config, *, prefix: str = "sample.") -> None:
    """Check the sampler, grid and steps of ``cfg.sample`` against the run's noise levels; the
    ConfigError names the key as ``prefix`` + name (``prefix=""``: as a function's argument)."""
    d, s = cfg.diffusion, cfg.sample
    for key, val, choices in (
        ("sampler", s.sampler, SAMPLERS),
        ("grid", s.grid, GRIDS),
        ("precision", s.precision, PRECISIONS[1:]),
    ):
        if val not in choices:
            raise ConfigError(f"{prefix}{key}={val!r} is not one of {', '.join(choices)}")
    if s.steps < 1:
        raise ConfigError(f"{prefix}steps must be at least 1, got {s.steps}")
    levels, what = (d.num_scales, "noise levels") if d.kind == "ncsn" else (d.T, "training timesteps")
    if s.steps > levels and s.grid in ("leading", "linspace", "trailing"):
        raise ConfigError(f"{prefix}steps={s.steps} is more than the {levels} {what}")


def _validate_autoencoder(cfg: Config) -> None:
    """An autoencoder run (model.network vae or ae) trains the first stage on images; the diffusion
    and sample sections are unused."""
    a, net = cfg.autoencoder, cfg.model.network
    if a.recon not in RECON_LOSSES:
        raise ConfigError(f"autoencoder.recon={a.recon!r} is not one of {', '.join(RECON_LOSSES)}")
    if not a.kl_weight >= 0:
        raise ConfigError(f"autoencoder.kl_weight must be >= 0, got {a.kl_weight}")
    if net == "ae" and a.kl_weight != 0:
        raise ConfigError(
            f"model.network=ae has no KL term: set autoencoder.kl_weight=0 (got {a.kl_weight}) or use model.network=vae"
        )
    if not dataset_spec(cfg.data.name)[0].images:
        raise ConfigError(f"model.network={net} is an image autoencoder; data.name={cfg.data.name!r} is not images")
    if cfg.diffusion.dequantize:
        raise ConfigError(f"diffusion.dequantize=true: model.network={net} trains an autoencoder, not a diffusion")


def data_options(cfg: Config, *, training: bool = False, **changes) -> Options:
    """The loader options of the config's data section and training seed (``changes`` replace some).
    Only ``training`` data follow ``data.loader`` and draw random crops and flips; other readings
    (evaluation, pictures) are one tensor, centre-cropped."""
    d = cfg.data
    options = Options(n=d.n, size=d.size, channels=d.channels, seed=cfg.train.seed, skip_bad=d.skip_bad)
    if training:
        options = replace(options, crop=d.crop, flip=d.flip, loader=d.loader, memory_mb=d.memory_mb, workers=d.workers)
    elif d.crop != "random":
        options = replace(options, crop=d.crop)
    return replace(options, **changes)


def build_data(cfg: Config, *, split: str = "train", training: bool = False) -> torch.Tensor | ImageFiles:
    """The ``split`` (N, ...) of the config's data set (``data/registry.py`` says which it has); with
    ``data.keep_classes`` only the examples of those classes. ``training`` data of image files may be a
    stream (``data.loader``)."""
    if cfg.data.keep_classes:
        return build_labelled_data(cfg, split=split, training=training)[0]
    return load_split(cfg.data.name, split, data_options(cfg, training=training))


def build_labelled_data(
    cfg: Config, *, split: str = "train", training: bool = False
) -> tuple[torch.Tensor | ImageFiles, torch.Tensor, list[str]]:
    """(images, labels, class names) of a labelled data set's ``split``, only the examples of
    ``data.keep_classes`` when it is set (the labels keep their numbers)."""
    images, labels, names = load_labelled_split(cfg.data.name, split, data_options(cfg, training=training))
    keep = cfg.data.keep_classes
    if keep:
        bad = [k for k in keep if isinstance(k, bool) or not isinstance(k, int) or not 0 <= k < len(names)]
        if bad:
            raise ConfigError(f"data.keep_classes: {bad[0]!r} is not a class of {cfg.data.name} (0..{len(names) - 1})")
        mask = torch.isin(labels, torch.tensor(keep))
        images = images.subset(mask.nonzero()[:, 0]) if isinstance(images, ImageFiles) else images[mask]
        labels = labels[mask]
    return images, labels, names


def build_network(cfg: Config, data_shape: tuple[int, ...]) -> nn.Module:
    params = dict(cfg.model.params)
    if cfg.model.network == "unet":
        if len(data_shape) != 3:
            raise ConfigError(f"the unet needs image data (C, H, W), got samples of shape {tuple(data_shape)}")
        params.setdefault("in_channels", data_shape[0])
        if params["in_channels"] != data_shape[0]:
            raise ConfigError(
                f"model.params.in_channels={params['in_channels']} but the data have {data_shape[0]} channels"
            )
        if cfg.diffusion.learn_sigma:  # the prediction's channels, then the variance's
            params.setdefault("out_channels", 2 * data_shape[0])
            if params["out_channels"] != 2 * data_shape[0]:
                raise ConfigError(f"diffusion.learn_sigma needs model.params.out_channels={2 * data_shape[0]}")
        levels = len(params.get("channel_mult", (1, 2, 2)))
        if data_shape[1] % 2 ** (levels - 1) or data_shape[2] % 2 ** (levels - 1):
            raise ConfigError(
                f"images of size {data_shape[1]}x{data_shape[2]} do not halve {levels - 1} times "
                f"(model.params.channel_mult has {levels} levels)"
            )
    elif cfg.model.network in AUTOENCODERS:
        _check_autoencoder_shape(params, data_shape)
    else:
        if len(data_shape) != 1:
            raise ConfigError(f"the mlp needs vector data (D,), got samples of shape {tuple(data_shape)}")
        params.setdefault("dim", data_shape[0])
    cls = NETWORKS[cfg.model.network]
    accepted = inspect.signature(cls).parameters
    unknown = sorted(set(params) - set(accepted))
    if unknown:
        raise ConfigError(
            f"model.params.{unknown[0]} is not a parameter of model.network={cfg.model.network} "
            f"(it takes: {', '.join(accepted)})"
        )
    try:
        return cls(**params)
    except (TypeError, ValueError) as e:  # a value the constructor refuses, e.g. heads not dividing channels
        raise ConfigError(f"model.params: {str(e).splitlines()[0]}") from None


def _check_autoencoder_shape(params: dict, data_shape: tuple[int, ...]) -> None:
    """Fill in and check the image channels of an autoencoder's params; H, W must halve L - 1 times."""
    if len(data_shape) != 3:
        raise ConfigError(f"an autoencoder needs image data (C, H, W), got samples of shape {tuple(data_shape)}")
    params.setdefault("in_channels", data_shape[0])
    if params["in_channels"] != data_shape[0]:
        raise ConfigError(
            f"model.params.in_channels={params['in_channels']} but the data have {data_shape[0]} channels"
        )
    levels = len(params.get("block_out_channels", (32, 64, 64)))
    if data_shape[1] % 2 ** (levels - 1) or data_shape[2] % 2 ** (levels - 1):
        raise ConfigError(
            f"images of size {data_shape[1]}x{data_shape[2]} do not halve {levels - 1} times "
            f"(model.params.block_out_channels has {levels} levels)"
        )


def build_schedule(cfg: Config) -> DiscreteSchedule:
    """The discrete schedule of the run's noise levels: a beta schedule, or for ncsn the L geometric
    levels sigma_min .. sigma_max as a schedule whose ``sigmas`` they are (so every sampling grid works)."""
    d = cfg.diffusion
    if d.kind == "ncsn":
        return VESDE(d.sigma_min, d.sigma_max, d.num_scales).discrete_schedule()
    return DiscreteSchedule.from_name(d.schedule, d.T)


def data_bin_width(cfg: Config) -> float | None:
    """Width of the data's grid in [-1, 1] (for discretized likelihoods): digits 2/16, 8-bit image
    folders 2/255; None for continuous data (``data/registry.py``)."""
    return dataset_spec(cfg.data.name)[0].bin_width


def build_objective(cfg: Config):
    """The training objective: objective(net, x0, generator) -> per-sample loss (B,). DDPM's
    L_simple (DiffusionObjective), or, for a hybrid/VLB loss, a learned variance, importance-sampled
    timesteps or dequantized data, the likelihood-aware VLBObjective (losses/vlb.py)."""
    d = cfg.diffusion
    if d.kind == "ncsn":  # NCSN's annealed DSM over the geometric levels, lambda(sigma) = sigma^2
        return AnnealedDSMObjective(geometric_sigmas(d.num_scales, d.sigma_min, d.sigma_max))
    if d.loss != "simple" or d.learn_sigma or d.timestep_sampler != "uniform" or d.dequantize:
        if d.weighting != "none":
            raise ConfigError("diffusion.weighting applies to diffusion.loss=simple on uniform timesteps only")
        bin_width = data_bin_width(cfg)
        return VLBObjective(
            build_schedule(cfg),
            prediction=d.prediction,
            loss=d.loss,
            learn_sigma=d.learn_sigma,
            vlb_weight=d.vlb_weight,
            timestep_sampler=d.timestep_sampler,
            bin_width=bin_width,
            dequantize_bin_width=bin_width if d.dequantize else None,
        )
    return DiffusionObjective(
        build_schedule(cfg).abar, prediction=d.prediction, weighting=d.weighting, snr_gamma=d.snr_gamma
    )


def prior_for(cfg: Config) -> str:
    """The prior of a config's model (``samplers.loop.prior_noise``): "ve" for diffusion.kind=ncsn, else "vp"."""
    return "ve" if cfg.diffusion.kind == "ncsn" else "vp"


def build_denoiser(cfg: Config, net: nn.Module, *, clip: bool | None = None):
    """The network as a Denoiser D(x, sigma) -> x0_hat, with x0 clamping if ``clip`` (default: the
    config's sample.clip)."""
    if cfg.diffusion.kind == "ncsn":
        den = ScoreDenoiser(net)
    else:
        den = VPDenoiser(net, build_schedule(cfg), cfg.diffusion.prediction, learn_sigma=cfg.diffusion.learn_sigma)
    return ClampDenoiser(den) if (cfg.sample.clip if clip is None else clip) else den


# --- text-conditional and latent diffusion (docs/latent_diffusion.md) -------------------------------------


def _validate_reading(cfg: Config) -> None:
    """data.loader, memory_mb, workers, crop, flip: how training reads image files."""
    d = cfg.data
    if d.loader not in LOADERS:
        raise ConfigError(f"data.loader must be one of {', '.join(LOADERS)}, got {d.loader!r}")
    if isinstance(d.memory_mb, bool) or not isinstance(d.memory_mb, int | float) or not d.memory_mb >= 0:
        raise ConfigError(f"data.memory_mb must be a number of MiB >= 0, got {d.memory_mb!r}")
    if isinstance(d.workers, bool) or not isinstance(d.workers, int) or d.workers < 0:
        raise ConfigError(f"data.workers must be an integer >= 0, got {d.workers!r}")
    if d.crop not in CROP_MODES:
        raise ConfigError(f"data.crop must be one of {', '.join(CROP_MODES)}, got {d.crop!r}")
    random = d.flip or d.crop == "random"
    if not isinstance(d.flip, bool):
        raise ConfigError(f"data.flip must be true or false, got {d.flip!r}")
    if (random or d.loader == "stream") and not cfg.data.name.startswith("folder:"):
        raise ConfigError("data.loader=stream, data.flip and data.crop=random read image files: data.name=folder:PATH")
    if random and d.loader == "memory":
        raise ConfigError("data.flip and data.crop=random draw anew at each reading: they need data.loader=stream")
    if d.crop == "random" and d.size is None:
        raise ConfigError("data.crop=random needs the size to crop to: data.size")
    if d.cache and not cfg.latent.autoencoder:
        raise ConfigError("data.cache keeps a latent run's encoded latents: it needs latent.autoencoder")
    if random and cfg.latent.autoencoder:
        raise ConfigError(
            "data.flip and data.crop=random: a latent run encodes its images once, so it draws no new crops or flips"
        )


def _validate_init_from(cfg: Config) -> None:
    """train.init_from=diffusers:DIR names a folder and is for a U-Net (whether the source exists is
    asked only when a new run starts: a resumed run has its own weights)."""
    spec = cfg.train.init_from
    if spec.startswith("diffusers:") and (cfg.model.network != "unet" or not spec[len("diffusers:") :]):
        raise ConfigError("train.init_from=diffusers:DIR needs a folder and model.network=unet")


def _validate_lora(cfg: Config) -> None:
    """lora.rank adapts the attention of a U-Net loaded from train.init_from (``networks/lora.py``)."""
    lora = cfg.lora
    if lora.rank < 0:
        raise ConfigError(f"lora.rank must be the adapter's rank (or 0: no LoRA), got {lora.rank}")
    if not cfg.train.init_from:
        raise ConfigError("lora.rank adapts pretrained weights: set train.init_from=RUN or diffusers:DIR")
    if cfg.model.network != "unet":
        raise ConfigError(f"lora.rank adapts a U-Net's attention, not model.network={cfg.model.network}")
    if not lora.alpha >= 0 or not 0 <= lora.dropout < 1:
        raise ConfigError(f"lora.alpha must be >= 0 and lora.dropout in [0, 1), got {lora.alpha}, {lora.dropout}")


def _validate_conditional(cfg: Config) -> None:
    """Checks of the ``text``, ``latent`` and ``label`` sections (text, latent, class-conditional diffusion)."""
    t, d, lab = cfg.text, cfg.diffusion, cfg.label
    if cfg.model.network != "unet":
        raise ConfigError("text.encoder / latent.autoencoder / label.classes need model.network=unet")
    if lab.classes:
        if lab.classes < 1:
            raise ConfigError(f"label.classes must be the number of classes (or 0: no labels), got {lab.classes}")
        if dataset_spec(cfg.data.name)[0].load_labelled is None:
            raise ConfigError(
                "label.classes needs a data set with class labels (digits, folder:PATH), got "
                f"data.name={cfg.data.name!r}"
            )
        if t.encoder or cfg.latent.autoencoder:
            raise ConfigError("label.classes conditions a pixel-space model; it does not combine with text or latents")
        if cfg.model.params.get("num_classes", lab.classes) != lab.classes:
            raise ConfigError(f"model.params.num_classes must equal label.classes={lab.classes}")
        if not 0 <= lab.cond_drop <= 1 or not math.isfinite(lab.guidance):
            raise ConfigError(
                f"label.cond_drop must be in [0, 1] and label.guidance finite, got {lab.cond_drop}, {lab.guidance}"
            )
    if d.kind != "vp" or d.loss != "simple" or d.learn_sigma or d.timestep_sampler != "uniform" or d.dequantize:
        raise ConfigError(
            "text-conditional, latent and class-conditional diffusion train diffusion.kind=vp with loss=simple (no "
            "learn_sigma, timestep_sampler or dequantize)"
        )
    if t.encoder and dataset_spec(cfg.data.name)[0].load_captioned is None:
        raise ConfigError(
            f"text.encoder needs captioned data (data.name=shapes or folder:PATH), got data.name={cfg.data.name!r}"
        )
    for key, value in (("text.cond_drop", t.cond_drop), ("text.inpaint_fraction", t.inpaint_fraction)):
        if not 0 <= value <= 1:
            raise ConfigError(f"{key} must be in [0, 1], got {value}")
    if t.max_length < 2:
        raise ConfigError(f"text.max_length must be at least 2, got {t.max_length}")
    if cfg.latent.scale_factor < 0:
        raise ConfigError(
            f"latent.scale_factor must be positive (or 0: computed from the data), got {cfg.latent.scale_factor}"
        )


def build_text_encoder(cfg: Config):
    """The frozen text encoder of ``text.encoder`` (ConfigError naming the key if it cannot be loaded)."""
    from kuosan.networks.text_encoder import TextEncoder

    try:
        return TextEncoder(cfg.text.encoder, max_length=cfg.text.max_length)
    except ValueError as e:
        raise ConfigError(f"text.encoder={cfg.text.encoder!r}: {e}") from None


@torch.no_grad()
def encode_posterior(autoencoder: nn.Module, images: torch.Tensor | ImageFiles, *, batch_size: int = 256):
    """(mean, std) of the autoencoder's posterior q(z | x) for every image, in batches; a plain
    autoencoder's z with std None (a point posterior)."""
    means, stds = [], []
    for chunk in images.split(batch_size):  # a stream (ImageFiles) is decoded a piece at a time
        out = autoencoder.encode(chunk)
        if isinstance(out, torch.Tensor):
            means.append(out.float())
        else:
            means.append(out.mean.float())
            stds.append(out.std.float())
    return torch.cat(means), (torch.cat(stds) if stds else None)


def latents_key(autoencoder: nn.Module, images: torch.Tensor | ImageFiles) -> str:
    """What the encoded latents depend on, hashed: the autoencoder's weights, and the images (the
    decoded tensor's bytes, or a stream's file names, sizes and modification times with its decoding
    options). A retrained autoencoder, an edited file or another data.size gives another key."""
    digest = hashlib.sha256()
    for name, tensor in sorted(autoencoder.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy())
    if isinstance(images, ImageFiles):
        digest.update(repr((images.size, images.channels, images.crop)).encode())
        for file in images.files:
            stat = file.stat()
            digest.update(f"{file.resolve()}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
    else:
        digest.update(repr(tuple(images.shape)).encode())
        digest.update(images.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy())
    return digest.hexdigest()[:32]


def encode_posterior_cached(autoencoder: nn.Module, images: torch.Tensor | ImageFiles, cache: str | Path = ""):
    """:func:`encode_posterior`, kept on disk in the folder ``cache`` (``data.cache``; "" keeps
    nothing) as ``latents-KEY.safetensors`` (:func:`latents_key`): a resumed or repeated run on the same
    images and autoencoder reads the latents instead of encoding again."""
    if not cache:
        return encode_posterior(autoencoder, images)
    from safetensors import SafetensorError
    from safetensors.torch import load_file, save_file

    path = Path(cache) / f"latents-{latents_key(autoencoder, images)}.safetensors"
    if path.is_file():
        try:
            saved = load_file(path)
            if saved["mean"].shape[0] == images.shape[0]:
                logger.info("latents read from the cache %s", path)
                return saved["mean"], saved.get("std")
        except (SafetensorError, OSError, KeyError):
            pass
        logger.warning("the latent cache %s is unreadable; encoding again", path)
    mean, std = encode_posterior(autoencoder, images)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with replaced_whole(path) as tmp:
            save_file({"mean": mean.contiguous(), **({} if std is None else {"std": std.contiguous()})}, tmp)
    except OSError as e:
        raise ConfigError(f"data.cache={str(cache)!r}: cannot write the latents there ({e.strerror or e})") from None
    logger.info("latents encoded and cached in %s", path)
    return mean, std


def build_autoencoder_objective(cfg: Config, net: nn.Module, data_shape: tuple[int, ...]) -> AutoencoderObjective:
    """Reconstruction (+ kl_weight * KL for the VAE, whose draw is the reparameterisation noise of the
    latent's shape) of ``losses/autoencoder.py``."""
    a = cfg.autoencoder
    latent_shape = net.latent_shape(data_shape) if cfg.model.network == "vae" else None
    return AutoencoderObjective(recon=a.recon, kl_weight=a.kl_weight, latent_shape=latent_shape)


__all__ = [
    "ConfigError",
    "DataError",
    "build_autoencoder_objective",
    "build_data",
    "encode_posterior_cached",
    "build_denoiser",
    "build_network",
    "build_objective",
    "build_schedule",
    "build_text_encoder",
    "data_bin_width",
    "data_options",
    "encode_posterior",
    "prior_for",
    "validate",
    "validate_sampling",
]
