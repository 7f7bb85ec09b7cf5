"""Stable Diffusion VAE weights in diffusers' format -> kuosan's :class:`AutoencoderKL`.

A diffusers VAE directory holds ``config.json`` (``AutoencoderKL``'s constructor arguments) and
``diffusion_pytorch_model.safetensors``. kuosan's autoencoder uses diffusers' module names, so the
weights map one to one except the attention output projection (``to_out.0`` -> ``to_out``) and the
older attention names some checkpoints still carry (``query``/``key``/``value``/``proj_attn``).
Only safetensors are read: nothing is unpickled.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from .autoencoder import AutoencoderKL

_RENAMES = (
    (".to_out.0.", ".to_out."),
    (".query.", ".to_q."),
    (".key.", ".to_k."),
    (".value.", ".to_v."),
    (".proj_attn.", ".to_out."),
)


def config_from_diffusers(config: dict) -> dict:
    """diffusers ``AutoencoderKL`` config -> kuosan ``AutoencoderKL`` keyword arguments; ValueError for an
    architecture kuosan's autoencoder does not have."""
    if not isinstance(config, dict):
        raise ValueError(f"diffusers VAE config must be a JSON object, got {type(config).__name__}")
    levels = len(config.get("block_out_channels", ()))
    if not levels:
        raise ValueError("diffusers VAE config has no block_out_channels")
    for key, allowed in (("down_block_types", "DownEncoderBlock2D"), ("up_block_types", "UpDecoderBlock2D")):
        types = tuple(config.get(key, (allowed,) * levels))
        if types != (allowed,) * levels:
            raise ValueError(f"diffusers VAE config: {key}={list(types)} is not {levels} x {allowed}")
    if config.get("act_fn", "silu") != "silu":
        raise ValueError(f"diffusers VAE config: act_fn={config['act_fn']!r} (only silu is supported)")
    quant, post_quant = config.get("use_quant_conv", True), config.get("use_post_quant_conv", True)
    if quant != post_quant:
        raise ValueError("diffusers VAE config: use_quant_conv and use_post_quant_conv must agree")
    return dict(
        in_channels=config.get("in_channels", 3),
        out_channels=config.get("out_channels", 3),
        latent_channels=config.get("latent_channels", 4),
        block_out_channels=tuple(config["block_out_channels"]),
        layers_per_block=config.get("layers_per_block", 1),
        groups=config.get("norm_num_groups", 32),
        mid_attention=config.get("mid_block_add_attention", True),
        quant_conv=quant,
        scaling_factor=config.get("scaling_factor", 0.18215),
        shift_factor=config.get("shift_factor"),
    )


def rename_diffusers_key(key: str) -> str:
    """A diffusers AutoencoderKL parameter name -> kuosan's."""
    for old, new in _RENAMES:
        key = key.replace(old, new)
    return key


def autoencoder_from_diffusers(state_dict: dict[str, torch.Tensor], config: dict) -> AutoencoderKL:
    """kuosan AutoencoderKL with the weights of a diffusers ``AutoencoderKL`` (its ``state_dict()`` and
    ``config``). Older checkpoints' 1x1-conv attention weights (C, C, 1, 1) are flattened to (C, C)."""
    vae = AutoencoderKL(**config_from_diffusers(dict(config)))
    mapped = {}
    for key, value in state_dict.items():
        new = rename_diffusers_key(key)
        if ".attentions." in new and value.ndim == 4:
            value = value[:, :, 0, 0]
        mapped[new] = value
    try:
        missing, unexpected = vae.load_state_dict(mapped, strict=False)
    except RuntimeError as e:  # a tensor of the wrong shape
        raise ValueError(f"diffusers VAE weights do not fit its config: {str(e).splitlines()[-1].strip()}") from None
    if missing or unexpected:
        what = f"missing {missing[:3]}" if missing else f"unexpected {unexpected[:3]}"
        raise ValueError(f"diffusers VAE weights do not fit its config: {what}")
    return vae


def load_diffusers_vae(path: str | Path) -> AutoencoderKL:
    """Load a local diffusers VAE directory (``config.json`` + ``diffusion_pytorch_model.safetensors``, e.g.
    the ``vae/`` folder of a Stable Diffusion checkpoint) as a kuosan AutoencoderKL in eval mode."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    path = Path(path)
    cfg_file = path / "config.json"
    names = ("diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.fp16.safetensors")
    weights = [path / name for name in names if (path / name).is_file()][:1]
    if not cfg_file.is_file():
        raise ValueError(f"not a diffusers VAE directory: {cfg_file} is missing")
    if not weights:
        raise ValueError(f"no diffusion_pytorch_model.safetensors in {path} (only safetensors are read)")
    try:
        config = json.loads(cfg_file.read_text())
        state = load_file(str(weights[0]))
    except (json.JSONDecodeError, UnicodeDecodeError, SafetensorError, OSError) as e:
        raise ValueError(f"cannot read the diffusers VAE in {path}: {e}") from None
    return autoencoder_from_diffusers({k: v.float() for k, v in state.items()}, config).eval()
