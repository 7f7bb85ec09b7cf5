"""A trained run directory as objects, loaded once: config, network, schedule, Denoiser, and the
frozen parts a conditional run names (its text encoder, its latent autoencoder).

``Run.open(run_dir)`` reads ``checkpoint/`` (config.json, state.json and the chosen weights) once,
rebuilds the network through :mod:`kuosan.build` and loads the weights; everything else is derived
from that on first use. ``load_run`` and ``load_autoencoder`` are the two common cases as tuples.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import torch
from torch import nn

from kuosan.build import build_denoiser, build_network, build_schedule, build_text_encoder, validate
from kuosan.config import Config, ConfigError
from kuosan.diffusion import DiscreteSchedule
from kuosan.init_from import prepare_network
from kuosan.networks import AUTOENCODERS
from kuosan.networks.lora import merge_lora as merge_lora_into
from kuosan.train import checkpoint as ckpt

DIFFUSERS = "diffusers:"  # latent.autoencoder=diffusers:DIR, a pretrained AutoencoderKL folder

WEIGHTS = ("ema", "model")


def _misfit(expected: dict[str, torch.Tensor], found: dict[str, torch.Tensor]) -> str:
    """How a checkpoint's tensors differ from a network's (empty when they fit)."""
    missing = [k for k in expected if k not in found]
    unexpected = [k for k in found if k not in expected]
    shaped = [k for k in expected if k in found and found[k].shape != expected[k].shape]
    parts = []
    if missing:
        parts.append(f"{len(missing)} tensors missing (first {missing[0]!r})")
    if unexpected:
        parts.append(f"{len(unexpected)} unexpected (first {unexpected[0]!r})")
    if shaped:
        k = shaped[0]
        parts.append(
            f"{len(shaped)} of another shape (first {k!r}: {tuple(found[k].shape)} saved, "
            f"{tuple(expected[k].shape)} in the network)"
        )
    return "; ".join(parts)


@dataclass
class Run:
    """A trained run: ``config`` (validated), ``network`` (eval mode, no gradients, ``data_shape``
    set), ``state`` (state.json: step, train_seconds, data_shape, ...), ``path``."""

    path: Path
    config: Config
    network: nn.Module
    state: dict[str, Any] = field(repr=False)

    @classmethod
    def open(cls, run_dir: str | Path, *, weights: str = "ema", merge_lora: bool = True) -> Run:
        """Load the run in ``run_dir`` with its ``weights`` ("ema" or "model"); CheckpointError (one
        line) for a missing, incomplete or corrupt checkpoint or weights that do not fit the config.
        A LoRA run (``lora.rank``) is its base (``train.init_from``, loaded again) with its saved
        adapter, folded into the base's weights unless ``merge_lora=False``."""
        if weights not in WEIGHTS:
            raise ConfigError(f"weights={weights!r} is not one of {', '.join(WEIGHTS)}")
        path = Path(run_dir)
        cfg = validate(Config.from_dict(ckpt.read_config(path)))
        state = ckpt.read_state(path)
        data_shape = tuple(state["data_shape"])
        net = build_network(cfg, data_shape)
        adapter = prepare_network(cfg, net, new_run=False)
        tensors = ckpt.load_tensors(path, weights)
        expected = net.state_dict() if adapter is None else {k: net.state_dict()[k] for k in adapter}
        misfit = _misfit(expected, tensors)
        if misfit:
            raise ckpt.CheckpointError(f"weights in {path} do not fit the network its config.json describes: {misfit}")
        net.load_state_dict(tensors, strict=adapter is None)
        if adapter is not None and merge_lora:
            merge_lora_into(net)
        net.eval().requires_grad_(False)
        net.data_shape = data_shape
        if cfg.train.channels_last and len(data_shape) == 3:  # as trained: NHWC convolutions, fused norms
            net.to(memory_format=torch.channels_last)
        return cls(path=path, config=cfg, network=net, state=state)

    @property
    def is_autoencoder(self) -> bool:
        """A first-stage run (model.network vae or ae): it reconstructs, it does not generate."""
        return self.config.model.network in AUTOENCODERS

    @property
    def is_conditional(self) -> bool:
        """A text-conditional and/or latent diffusion run (see :class:`kuosan.pipelines.TextToImagePipeline`)."""
        return bool(self.config.text.encoder or self.config.latent.autoencoder)

    @cached_property
    def schedule(self) -> DiscreteSchedule:
        return build_schedule(self.config)

    def denoiser(self, *, clip: bool | None = None):
        """The network as a Denoiser D(x, sigma) (x0 clamped if ``clip``, default the config's)."""
        return build_denoiser(self.config, self.network, clip=clip)

    @cached_property
    def text_encoder(self):
        """The frozen text encoder of ``text.encoder`` (None for a run without text)."""
        return build_text_encoder(self.config) if self.config.text.encoder else None

    @cached_property
    def autoencoder(self) -> nn.Module | None:
        """The frozen first stage of ``latent.autoencoder`` (None for a pixel-space run)."""
        return load_latent_autoencoder(self.config) if self.config.latent.autoencoder else None


def load_run(run_dir: str | Path, *, weights: str = "ema") -> tuple[Config, nn.Module]:
    """(config, network) of a trained run, the network in eval mode with its ``weights`` ("ema" or
    "model") loaded from safetensors and ``net.data_shape`` set."""
    run = Run.open(run_dir, weights=weights)
    return run.config, run.network


def load_autoencoder(run_dir: str | Path, *, weights: str = "ema") -> tuple[Config, nn.Module]:
    """(config, autoencoder) of a trained first-stage run (model.network vae or ae), in eval mode with
    requires_grad False; ``net.data_shape`` is the image shape it was trained on."""
    kind = ckpt.read_config(run_dir).get("model", {}).get("network")
    if kind not in AUTOENCODERS:
        raise ckpt.CheckpointError(
            f"{run_dir} is not an autoencoder run (model.network={kind!r}, expected one of {', '.join(AUTOENCODERS)})"
        )
    return load_run(run_dir, weights=weights)


def load_latent_autoencoder(cfg: Config) -> nn.Module:
    """The trained autoencoder of ``latent.autoencoder`` (frozen, eval mode): a kuosan run, or
    ``diffusers:DIR``, a pretrained diffusers ``AutoencoderKL`` folder (or a pipeline folder with
    ``vae/``); a one-line ConfigError saying how to train one when the directory holds none."""
    spec = cfg.latent.autoencoder
    if spec.startswith(DIFFUSERS):
        from kuosan.interop.diffusers import folder_of, load_vae

        vae = load_vae(folder_of(spec))
        if vae.config.get("shift_factor") is not None:  # SD3 / Flux latents: (z - shift) * scale
            raise ConfigError(
                f"latent.autoencoder={spec}: a VAE with a shift_factor is not trained on here (latents are only scaled)"
            )
        return vae.eval()
    path = Path(spec)
    if not path.is_dir() or not ckpt.find_checkpoint(path):
        raise ConfigError(
            f"latent.autoencoder={str(path)!r} holds no trained autoencoder; train one first: "
            f"kuosan train --preset shapes-vae --out {path}"
        )
    _, ae = load_autoencoder(path)
    return ae.eval().requires_grad_(False)


__all__ = ["Run", "WEIGHTS", "load_autoencoder", "load_latent_autoencoder", "load_run"]
