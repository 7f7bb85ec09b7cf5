"""kuosan models out to diffusers: a trained autoencoder as an ``AutoencoderKL`` folder, a trained
unconditional DDPM as a ``DDPMPipeline`` folder (``UNet2DModel`` + ``DDPMScheduler``), written by
diffusers' own ``save_pretrained`` (safetensors) after a strict load of the mapped weights, so that
``from_pretrained`` elsewhere gets exactly this network.

What maps, and what does not:

- kuosan's ``AutoencoderKL`` uses diffusers' module names; only the attention output projection is
  ``to_out`` here and ``to_out.0`` there. The plain autoencoder (``model.network=ae``, no posterior
  variance) has no diffusers class.
- kuosan's ``UNet`` is improved-diffusion's layout, which is ``UNet2DModel``'s: the same ResBlocks
  (additive or scale-shift time conditioning), stride-2 convolution down, nearest + convolution up,
  attention after the ResBlocks of chosen levels and in the middle, GroupNorm eps 1e-6, sinusoidal
  time embedding [cos, sin] of width base_channels. It maps when every GroupNorm has the configured
  group count (kuosan lowers it for a width it does not divide; diffusers cannot) and every
  attention layer has the same head width (diffusers has one ``attention_head_dim``; one head per
  layer always works). kuosan's text U-Net (cross-attention with a padding mask, a pooled
  embedding) corresponds to ``UNet2DConditionModel`` but is not exported yet.
- The schedule: linear, cosine (``squaredcos_cap_v2``), scaled_linear and sigmoid by name, others
  as ``trained_betas``; prediction eps / v / x0 as epsilon / v_prediction / sample, a learned
  variance as ``learned_range``. Mean prediction and NCSN score models have no diffusers scheduler.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import torch
from torch import nn

from kuosan.interop.diffusers import DiffusersError, require_diffusers

BETA_NAMES = {
    "linear": {"beta_schedule": "linear", "beta_start": 1e-4, "beta_end": 0.02},
    "cosine": {"beta_schedule": "squaredcos_cap_v2"},
    "scaled_linear": {"beta_schedule": "scaled_linear", "beta_start": 0.00085, "beta_end": 0.012},
    "sigmoid": {"beta_schedule": "sigmoid", "beta_start": 1e-4, "beta_end": 0.02},
}
PREDICTION_TYPES = {"eps": "epsilon", "v": "v_prediction", "x0": "sample"}


# --- the autoencoder -------------------------------------------------------------------------------


def vae_to_diffusers(vae: nn.Module, *, scaling_factor: float | None = None) -> tuple[dict, dict[str, torch.Tensor]]:
    """(diffusers ``AutoencoderKL`` config, its state dict) of a kuosan AutoencoderKL; the config's
    ``scaling_factor`` is the given one, else the VAE's recorded one."""
    if not getattr(vae, "variational", False):
        raise DiffusersError(
            "a plain autoencoder (model.network=ae) has no posterior variance and no diffusers class; export a vae run"
        )
    c = vae.config
    levels = len(c["block_out_channels"])
    _require_groups(vae, c["groups"])
    config = dict(
        in_channels=c["in_channels"],
        out_channels=c["out_channels"],
        latent_channels=c["latent_channels"],
        block_out_channels=list(c["block_out_channels"]),
        down_block_types=["DownEncoderBlock2D"] * levels,
        up_block_types=["UpDecoderBlock2D"] * levels,
        layers_per_block=c["layers_per_block"],
        norm_num_groups=c["groups"],
        act_fn="silu",
        mid_block_add_attention=c["mid_attention"],
        use_quant_conv=c["quant_conv"],
        use_post_quant_conv=c["quant_conv"],
    )
    scaling_factor = c.get("scaling_factor") if scaling_factor is None else scaling_factor
    if scaling_factor is not None:
        config["scaling_factor"] = float(scaling_factor)
    if c.get("shift_factor") is not None:
        config["shift_factor"] = float(c["shift_factor"])
    state = {k.replace(".to_out.", ".to_out.0."): v.detach().cpu() for k, v in vae.state_dict().items()}
    return config, state


# --- the U-Net --------------------------------------------------------------------------------------


def _resblock(prefix: str, target: str) -> dict[str, str]:
    names = {
        "in_layers.0": "norm1",
        "in_layers.2": "conv1",
        "emb_layers.1": "time_emb_proj",
        "out_norm": "norm2",
        "out_layers.2": "conv2",
        "skip": "conv_shortcut",
    }
    return {f"{prefix}.{a}": f"{target}.{b}" for a, b in names.items()}


def _attention(prefix: str, target: str) -> dict[str, str]:
    return {f"{prefix}.norm": f"{target}.group_norm", f"{prefix}.proj_out": f"{target}.to_out.0"}


def _require_groups(net: nn.Module, groups: int) -> None:
    for name, module in net.named_modules():
        if isinstance(module, nn.GroupNorm) and module.num_groups != groups:
            raise DiffusersError(
                f"{name} normalises {module.num_channels} channels in {module.num_groups} groups, not the "
                f"configured {groups} (kuosan lowers the count for widths it does not divide; diffusers has "
                "one norm_num_groups)"
            )


def unet_to_diffusers(net: nn.Module, sample_size: int) -> tuple[dict, dict[str, torch.Tensor]]:
    """(diffusers ``UNet2DModel`` config, its state dict) of an unconditional kuosan UNet, or a
    DiffusersError saying why it does not map (module doc)."""
    c = net.config
    if c.get("context_dim") or c.get("pooled_dim") or c.get("cond_channels"):
        raise DiffusersError(
            "this U-Net is conditional (text cross-attention, a pooled embedding or concatenated inputs): it "
            "corresponds to diffusers' UNet2DConditionModel, whose export kuosan does not write yet; export its "
            "autoencoder run, or an unconditional run"
        )
    base, mult, blocks = c["base_channels"], c["channel_mult"], c["num_res_blocks"]
    attn_levels, heads = set(c["attention_levels"]), c["num_heads"]
    widths = [base * m for m in mult]
    _require_groups(net, c["groups"])
    attn_widths = {widths[i] for i in attn_levels} | {widths[-1]}
    head_dims = {w // heads for w in attn_widths}
    if heads > 1 and len(head_dims) > 1:
        raise DiffusersError(
            f"attention widths {sorted(attn_widths)} with {heads} heads give head widths {sorted(head_dims)}; "
            "diffusers' UNet2DModel has one attention_head_dim (use num_heads=1 or equal widths)"
        )
    levels = range(len(mult))
    config = dict(
        sample_size=sample_size,
        in_channels=c["in_channels"],
        out_channels=c["out_channels"],
        layers_per_block=blocks,
        block_out_channels=widths,
        down_block_types=["AttnDownBlock2D" if i in attn_levels else "DownBlock2D" for i in levels],
        up_block_types=["AttnUpBlock2D" if i in attn_levels else "UpBlock2D" for i in reversed(levels)],
        norm_num_groups=c["groups"],
        norm_eps=1e-6,
        attn_norm_num_groups=c["groups"],  # else diffusers' scale-shift middle attention has no norm
        attention_head_dim=None if heads == 1 else head_dims.pop(),
        resnet_time_scale_shift="scale_shift" if c["scale_shift"] else "default",
        dropout=c["dropout"],
        act_fn="silu",
        time_embedding_type="positional",
        flip_sin_to_cos=True,
        freq_shift=0,
        downsample_padding=1,
        add_attention=True,
    )
    names = {
        "time_embed.linear1": "time_embedding.linear_1",
        "time_embed.linear2": "time_embedding.linear_2",
        "input_conv": "conv_in",
        "out.0": "conv_norm_out",
        "out.2": "conv_out",
    }
    k = 0
    for level in levels:
        for j in range(blocks):
            names.update(_resblock(f"down.{k}.0", f"down_blocks.{level}.resnets.{j}"))
            if level in attn_levels:
                names.update(_attention(f"down.{k}.1", f"down_blocks.{level}.attentions.{j}"))
            k += 1
        if level != len(mult) - 1:
            names[f"down.{k}.0.conv"] = f"down_blocks.{level}.downsamplers.0.conv"
            k += 1
    names.update(_resblock("middle.0", "mid_block.resnets.0"))
    names.update(_attention("middle.1", "mid_block.attentions.0"))
    names.update(_resblock("middle.2", "mid_block.resnets.1"))
    k = 0
    for u, level in enumerate(reversed(levels)):
        for i in range(blocks + 1):
            names.update(_resblock(f"up.{k}.0", f"up_blocks.{u}.resnets.{i}"))
            nxt = 1
            if level in attn_levels:
                names.update(_attention(f"up.{k}.1", f"up_blocks.{u}.attentions.{i}"))
                nxt = 2
            if level != 0 and i == blocks:
                names[f"up.{k}.{nxt}.conv"] = f"up_blocks.{u}.upsamplers.0.conv"
            k += 1
    state = {}
    for key, value in net.state_dict().items():
        module, _, leaf = key.rpartition(".")
        value = value.detach().cpu()
        if module.endswith(".qkv"):  # q | k | v, each (heads, d): diffusers' three projections
            target = names[f"{module[: -len('.qkv')]}.norm"].rsplit(".", 1)[0]
            for name, part in zip(("to_q", "to_k", "to_v"), value.chunk(3, dim=0)):
                state[f"{target}.{name}.{leaf}"] = part.clone()
            continue
        if module not in names:
            raise DiffusersError(f"U-Net tensor {key} has no place in diffusers' UNet2DModel")
        state[f"{names[module]}.{leaf}"] = value
    return config, state


def scheduler_config(cfg) -> dict:
    """The ``DDPMScheduler`` config of a kuosan VP run's schedule, prediction and variance."""
    from kuosan.diffusion.schedules import DiscreteSchedule

    d = cfg.diffusion
    if d.kind != "vp":
        raise DiffusersError(f"a diffusion.kind={d.kind} model has no diffusers DDPM scheduler (a VP run exports)")
    if d.prediction not in PREDICTION_TYPES:
        raise DiffusersError(f"prediction {d.prediction!r} has no diffusers prediction_type (eps, v and x0 do)")
    config = {"num_train_timesteps": d.T, "prediction_type": PREDICTION_TYPES[d.prediction]}
    config.update(
        BETA_NAMES.get(d.schedule) or {"trained_betas": DiscreteSchedule.from_name(d.schedule, d.T).betas.tolist()}
    )
    config["variance_type"] = "learned_range" if d.learn_sigma else "fixed_small"
    config["clip_sample"] = bool(cfg.sample.clip)
    return config


# --- writing a folder ---------------------------------------------------------------------------


def _write(out: Path, save) -> Path:
    """Write a folder whole: ``save(tmp)`` beside ``out``, then the rename (nothing half-written is
    left at ``out``); refused when ``out`` exists and is not empty."""
    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise DiffusersError(f"--out {out} exists and is not empty (kuosan never overwrites an export)")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".{out.name}.partial"
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        save(tmp)
        if out.exists():
            out.rmdir()
        tmp.rename(out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out


def export_vae(vae: nn.Module, out: Path, *, scaling_factor: float | None = None) -> Path:
    """A diffusers ``AutoencoderKL`` folder (config.json + diffusion_pytorch_model.safetensors)."""
    diffusers = require_diffusers()
    config, state = vae_to_diffusers(vae, scaling_factor=scaling_factor)
    model = diffusers.AutoencoderKL(**config)
    model.load_state_dict(state, strict=True)
    return _write(out, lambda path: model.save_pretrained(path, safe_serialization=True))


def export_ddpm(net: nn.Module, cfg, sample_size: int, out: Path) -> Path:
    """A diffusers ``DDPMPipeline`` folder (unet/ + scheduler/ + model_index.json)."""
    diffusers = require_diffusers()
    scheduler = diffusers.DDPMScheduler(**scheduler_config(cfg))
    config, state = unet_to_diffusers(net, sample_size)
    unet = diffusers.UNet2DModel(**config)
    missing, unexpected = unet.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise DiffusersError(
            f"the U-Net does not map onto UNet2DModel: missing {missing[:2]}, unexpected {unexpected[:2]}"
        )
    pipe = diffusers.DDPMPipeline(unet=unet, scheduler=scheduler)
    return _write(out, lambda path: pipe.save_pretrained(path, safe_serialization=True))


__all__ = ["export_ddpm", "export_vae", "scheduler_config", "unet_to_diffusers", "vae_to_diffusers"]
