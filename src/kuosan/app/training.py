"""Training as the CLI and the Python API run it: a Config becomes a seeded network and a Trainer
(:func:`build_trainer`), and :func:`train` runs it for a number of steps or seconds, resuming a run
directory on request."""

from __future__ import annotations

import contextlib
import importlib
import os
from collections.abc import Callable
from pathlib import Path

import torch

from kuosan import devices
from kuosan.build import (
    build_autoencoder_objective,
    build_data,
    build_denoiser,
    build_labelled_data,
    build_network,
    build_objective,
    build_schedule,
    build_text_encoder,
    data_options,
    encode_posterior_cached,
    prior_for,
    validate,
)
from kuosan.config import Config, ConfigError, merge_overrides, resolve_config
from kuosan.data.registry import dataset_spec, load_captioned_split
from kuosan.init_from import prepare_network
from kuosan.losses.conditional import ConditionalObjective, latent_scale_from_posterior
from kuosan.metrics.reconstruction import reconstruction_pairs
from kuosan.networks import AUTOENCODERS
from kuosan.pipelines import conditional_sample_fn
from kuosan.runs import DIFFUSERS, load_latent_autoencoder
from kuosan.samplers.loop import generate
from kuosan.train import Trainer, distributed
from kuosan.train import checkpoint as ckpt
from kuosan.train.distributed import rank_and_world
from kuosan.utils import unwritable_reason


def build_trainer(cfg: Config, out_dir: str | Path, *, data: torch.Tensor | None = None, progress: bool = True):
    """Seeded network + Trainer for a config. Seeds torch's global RNG (initialisation, dropout):
    the one place outside user code that does."""
    validate(cfg)
    world = rank_and_world()[1]
    if cfg.train.batch_size % (world * cfg.train.grad_accum):
        raise ConfigError(
            f"train.batch_size={cfg.train.batch_size} must be divisible by {world} process(es) x "
            f"train.grad_accum={cfg.train.grad_accum}"
        )
    if cfg.text.encoder or cfg.latent.autoencoder or cfg.label.classes:  # dict data, wrapped objective
        data, objective, extras = build_conditional_training(cfg, data)
        x_shape = tuple(data["x"].shape[1:])
        sample_fn = conditional_sample_fn(cfg, x_shape, **extras)
    else:
        data = build_data(cfg, training=True) if data is None else data
        x_shape = tuple(data.shape[1:])
        objective, sample_fn = build_objective(cfg), sample_fn_for(cfg, x_shape)
    torch.manual_seed(cfg.train.seed)
    net = build_network(cfg, x_shape)
    # a resumed run has its own weights (a LoRA run: its adapter, on the base loaded again)
    adapter = prepare_network(cfg, net, new_run=ckpt.find_checkpoint(out_dir) is None)
    if cfg.model.network in AUTOENCODERS:  # the first stage: reconstruction objective, pictures of reconstructions
        objective, sample_fn = build_autoencoder_objective(cfg, net, x_shape), reconstruction_fn(data)
    tr = cfg.train
    if tr.grad_checkpointing:
        if not hasattr(net, "enable_gradient_checkpointing"):
            raise ConfigError(
                f"train.grad_checkpointing: the {cfg.model.network} network does not recompute activations"
            )
        net.enable_gradient_checkpointing()
    device = devices.resolve_device(tr.device)
    if tr.tensorboard:
        try:
            importlib.import_module("torch.utils.tensorboard")  # PyTorch's writer needs the tensorboard package
        except ImportError:
            raise ConfigError(
                "train.tensorboard=true needs the tensorboard package: pip install 'kuosan[tensorboard]'"
            ) from None
    return Trainer(
        net,
        objective,
        data,
        out_dir=out_dir,
        config=cfg.to_dict(),
        batch_size=tr.batch_size,
        grad_accum=tr.grad_accum,
        lr=tr.lr,
        weight_decay=tr.weight_decay,
        betas=tr.betas,
        warmup_steps=tr.warmup_steps,
        grad_clip=tr.grad_clip,
        ema_decay=tr.ema_decay,
        ema_warmup=tr.ema_warmup,
        precision=devices.resolve_precision(device, tr.precision),
        device=device,
        tf32=tr.tf32,
        channels_last=tr.channels_last,
        compile=tr.compile,
        cpu_tweaks=tr.cpu_tweaks,
        checkpoint_every=tr.checkpoint_every,
        sample_every=tr.sample_every,
        log_every=tr.log_every,
        seed=tr.seed,
        sample_fn=sample_fn,
        progress=progress,
        saved_keys=adapter,
        tensorboard=tr.tensorboard,
    )


def build_conditional_training(cfg: Config, images: torch.Tensor | None = None):
    """(data dict, ConditionalObjective, sample-picture extras) of a text and/or latent diffusion run.

    Encodes once what is frozen: every distinct caption with the text encoder, every training image
    with the autoencoder (posterior mean and std, so each step draws a fresh latent). Fills in the
    config what the checkpoint must remember: ``latent.scale_factor`` (when 0) and the U-Net's
    conditioning widths (``model.params.context_dim``, ``pooled_dim``, ``cond_channels``)."""
    captions = labels = None
    if cfg.label.classes:
        images, labels, names = build_labelled_data(cfg, training=True)
        if len(names) != cfg.label.classes:
            raise ConfigError(f"label.classes={cfg.label.classes}, but {cfg.data.name} has {len(names)} classes")
        if cfg.label.names and list(cfg.label.names) != list(names):  # a resume sees the classes it trained on
            raise ConfigError(
                f"the classes of {cfg.data.name} are now {names}, the run was trained on {list(cfg.label.names)}"
            )
        cfg.label.names = list(names)
    elif images is None:
        if cfg.text.encoder and dataset_spec(cfg.data.name)[0].load_captioned is not None:
            images, captions = load_captioned_split(cfg.data.name, "train", data_options(cfg, training=True))
        else:
            images = build_data(cfg, training=True)
    data: dict[str, torch.Tensor] = {}
    autoencoder = load_latent_autoencoder(cfg) if cfg.latent.autoencoder else None
    if autoencoder is not None:
        mean, std = encode_posterior_cached(autoencoder, images, cfg.data.cache)
        pretrained = cfg.latent.autoencoder.startswith(DIFFUSERS) and autoencoder.config.get("scaling_factor")
        if not cfg.latent.scale_factor and pretrained:  # a pretrained VAE's own factor, as diffusers scripts use
            cfg.latent.scale_factor = float(pretrained)
        elif not cfg.latent.scale_factor:
            cfg.latent.scale_factor = latent_scale_from_posterior(mean, torch.zeros_like(mean) if std is None else std)
        data["x"] = cfg.latent.scale_factor * mean
        if std is not None:
            data["x_std"] = cfg.latent.scale_factor * std
    else:
        data["x"] = images
    prompts = uncond = None
    params = cfg.model.params
    if cfg.text.encoder:
        if captions is None:
            raise ConfigError("text.encoder needs captions: data.name=shapes or folder:PATH")
        encoder = build_text_encoder(cfg)
        distinct = sorted(set(captions))
        where = {c: i for i, c in enumerate(distinct)}
        data["caption"] = torch.tensor([where[c] for c in captions])
        prompts, uncond = encoder.encode(distinct), encoder.encode([""])
        params.setdefault("context_dim", encoder.dim)
        params.setdefault("pooled_dim", encoder.dim)
    if labels is not None:
        data["label"] = labels
        params.setdefault("num_classes", cfg.label.classes)
    if cfg.text.inpaint_fraction > 0:
        params.setdefault("cond_channels", 1 + data["x"].shape[1])
    objective = ConditionalObjective(
        build_objective(cfg),
        prompts=prompts,
        uncond=uncond,
        cond_drop=cfg.label.cond_drop if labels is not None else cfg.text.cond_drop,
        inpaint_fraction=cfg.text.inpaint_fraction,
        num_classes=cfg.label.classes or None,
    )
    extras = {
        "prompts": None if prompts is None else {k: v[:64] for k, v in prompts.items()},
        "uncond": uncond,
        "autoencoder": autoencoder,
    }
    if labels is not None:  # the pictures: every class in turn, at the run's guidance
        extras["prompts"] = {"class_labels": torch.arange(cfg.label.classes)}
        extras["uncond"] = {"class_labels": torch.tensor([cfg.label.classes])}
    return data, objective, extras


def reconstruction_fn(data):
    """The Trainer's picture callback for autoencoders: the first n/2 training images (fixed), each row
    of 8 over the row of its reconstructions (``data``: a tensor or a stream of image files)."""

    def sample_fn(net, n, generator):
        k = min(max(1, n // 2), data.shape[0])
        first = data[:k] if torch.is_tensor(data) else data.read(range(k))
        return reconstruction_pairs(net, first.to(_device_of(net)), nrow=8).cpu()

    return sample_fn


def sample_fn_for(cfg: Config, data_shape: tuple[int, ...]):
    """The Trainer's picture callback for an unconditional run: its config's sampler, steps and grid."""
    schedule = build_schedule(cfg)

    def sample_fn(net, n, generator):
        return generate(
            build_denoiser(cfg, net),
            schedule,
            data_shape,
            n,
            sampler=cfg.sample.sampler,
            steps=cfg.sample.steps,
            grid=cfg.sample.grid,
            generator=generator,
            prior=prior_for(cfg),
            device=_device_of(net),
        )

    return sample_fn


def _device_of(net: torch.nn.Module) -> torch.device:
    return next(net.parameters()).device


def train(
    out: str | Path,
    *,
    preset: str | None = None,
    config: str | Path | None = None,
    overrides: list[str] = (),
    steps: int | None = None,
    time_budget: float | None = None,
    seed: int | None = None,
    resume: bool = False,
    device: str | None = None,
    progress: bool = True,
    on_resume: Callable[[int], None] | None = None,
) -> dict:
    """Train a run into ``out`` from a preset and/or an experiment file with ``section.key=value``
    overrides, for ``steps`` optimizer steps or ``time_budget`` seconds (default: the config's), and
    return the Trainer's summary (``interrupted`` is True after Ctrl-C, the last checkpoint kept).
    ``resume=True`` continues the run in ``out`` (its config, with the
    overrides). ValueError (ConfigError) for an impossible request, before anything is written;
    under torchrun the processes join one process group. ``on_resume(step)`` is called once a resumed run
    is loaded (the CLI says where it resumes). ``device`` sets train.device (a resume may move to another
    device: checkpoints hold CPU copies)."""
    out = Path(out)
    if preset is None and config is None and not resume:
        raise ConfigError("give a preset or an experiment file (or resume a run)")
    existing, traces = ckpt.find_checkpoint(out), ckpt.run_traces(out)
    if existing and not resume:
        raise ConfigError(f"{out} already holds a checkpoint; resume it or choose another output directory")
    if traces and not resume:  # a run whose config.json is gone: its weights may still be there
        if set(traces) <= {"checkpoint.tmp", "log.jsonl"}:  # stopped (kill -9) before its first checkpoint
            raise ConfigError(
                f"{out} holds a run stopped before its first checkpoint ({', '.join(traces)}): nothing to "
                "resume; remove the folder to start it again, or choose another output directory"
            )
        raise ConfigError(
            f"{out} holds a run ({', '.join(traces)}) without a readable checkpoint; "
            "choose another output directory (nothing there is overwritten)"
        )
    if resume and not existing:
        lost = f" (it holds {', '.join(traces)} but no checkpoint/config.json)" if traces else ""
        if traces and set(traces) <= {"checkpoint.tmp", "log.jsonl"}:
            lost += ": it stopped before its first checkpoint; remove the folder to start it again"
        raise ConfigError(f"resume: no checkpoint in {out}{lost}")
    overrides = list(overrides) + ([f"train.seed={seed}"] if seed is not None else [])
    overrides += [f"train.device={device}"] if device is not None else []
    if resume:
        cfg = Config.from_dict(merge_overrides(ckpt.read_config(out), overrides))
    else:
        cfg = resolve_config(preset, config, overrides)
    steps = steps if steps is not None else cfg.train.steps
    budget = time_budget if time_budget is not None else cfg.train.time_budget
    if steps is None and budget is None:
        raise ConfigError("give a number of steps or a time budget (or train.steps / train.time_budget in the config)")
    if budget is not None and budget <= 0:
        raise ConfigError(f"the time budget must be positive, got {budget}")
    if steps is not None and steps < 1:
        raise ConfigError(f"the number of steps must be at least 1, got {steps}")
    validate(cfg)  # every impossible option refused before the run directory is made
    where = devices.resolve_device(cfg.train.device)  # a device that is not there, too
    devices.resolve_precision(where, cfg.train.precision)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ConfigError(f"cannot create the run directory {out}: {e.strerror}") from None
    reason = unwritable_reason(out)
    if reason is not None:
        raise ConfigError(f"the run directory {out} is not writable ({reason})")
    distributed.init_from_env(where)  # under torchrun: join the process group (NCCL on GPUs, gloo on CPUs)
    # one process trains in a run directory at a time (rank 0 holds the lock for all of torchrun's)
    lock = ckpt.run_lock(out) if int(os.environ.get("RANK", "0")) == 0 else contextlib.nullcontext()
    try:
        with lock:
            trainer = build_trainer(cfg, out, progress=progress)
            if resume:
                trainer.resume()
                if on_resume is not None and trainer.rank == 0:
                    on_resume(trainer.step)
            return trainer.fit(steps=steps, time_budget=budget)
    finally:
        distributed.shutdown()
