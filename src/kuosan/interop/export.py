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
  layer always works). kuosan's text U-Net is a ``UNet2DConditionModel`` with linear projections in
  its transformers: the padding mask is its ``encoder_attention_mask``, the pooled embedding its
  ``class_embed_type="projection"`` (``class_labels``), the inpainting inputs extra ``in_channels``.
- The schedule: linear, cosine (``squaredcos_cap_v2``), scaled_linear and sigmoid by name, others
  as ``trained_betas``; prediction eps / v / x0 as epsilon / v_prediction / sample, a learned
  variance as ``learned_range``. Mean prediction and NCSN score models have no diffusers scheduler.
"""

from __future__ import annotations

import contextlib
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
    groups = _require_groups(vae, c["groups"])
    config = dict(
        in_channels=c["in_channels"],
        out_channels=c["out_channels"],
        latent_channels=c["latent_channels"],
        block_out_channels=list(c["block_out_channels"]),
        down_block_types=["DownEncoderBlock2D"] * levels,
        up_block_types=["UpDecoderBlock2D"] * levels,
        layers_per_block=c["layers_per_block"],
        norm_num_groups=groups,
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


# kuosan's ResBlock submodules -> diffusers' ResnetBlock2D's
RESNET_NAMES = {
    "in_layers.0": "norm1",
    "in_layers.2": "conv1",
    "emb_layers.1": "time_emb_proj",
    "out_norm": "norm2",
    "out_layers.2": "conv2",
    "skip": "conv_shortcut",
}


def _resblock(prefix: str, target: str) -> dict[str, str]:
    return {f"{prefix}.{a}": f"{target}.{b}" for a, b in RESNET_NAMES.items()}


def _attention(prefix: str, target: str, *, transformer: bool = False) -> dict[str, str]:
    """kuosan's SelfAttention2d (its qkv split in :func:`unet_to_diffusers`) or SpatialTransformer
    -> diffusers' Attention or Transformer2DModel (linear projections)."""
    if not transformer:
        return {f"{prefix}.norm": f"{target}.group_norm", f"{prefix}.proj_out": f"{target}.to_out.0"}
    names = {f"{prefix}.{a}": f"{target}.{a}" for a in ("norm", "proj_in", "proj_out")}
    block, into = f"{prefix}.block", f"{target}.transformer_blocks.0"
    for a in ("norm1", "norm2", "norm3"):
        names[f"{block}.{a}"] = f"{into}.{a}"
    for attn in ("attn1", "attn2"):
        for a in ("to_q", "to_k", "to_v", "to_out.0"):
            names[f"{block}.{attn}.{a}"] = f"{into}.{attn}.{a}"
    names[f"{block}.ff.proj_in"] = f"{into}.ff.net.0.proj"  # GEGLU: [h, gate] in the same order
    names[f"{block}.ff.proj_out"] = f"{into}.ff.net.2"
    return names


def _require_groups(net: nn.Module, groups: int) -> int:
    """The one GroupNorm group count of every norm in ``net`` (diffusers has one norm_num_groups);
    kuosan lowers the configured count for a width it does not divide, which maps only if it does so
    for every norm alike."""
    norms = [(name, m) for name, m in net.named_modules() if isinstance(m, nn.GroupNorm)]
    counts = {m.num_groups for _, m in norms}
    if len(counts) > 1:
        name, module = next((n, m) for n, m in norms if m.num_groups != groups)
        raise DiffusersError(
            f"{name} normalises {module.num_channels} channels in {module.num_groups} groups, not the "
            f"configured {groups} (kuosan lowers the count for widths it does not divide; diffusers has "
            "one norm_num_groups)"
        )
    return counts.pop() if counts else groups


def unet_to_diffusers(net: nn.Module, sample_size: int) -> tuple[dict, dict[str, torch.Tensor]]:
    """(diffusers config, state dict) of a kuosan UNet: a ``UNet2DModel`` for an unconditional one,
    a ``UNet2DConditionModel`` (``config["_class_name"]``) for one with text cross-attention, a pooled
    embedding (``class_embed_type="projection"``: diffusers' ``class_labels`` input) or concatenated
    inputs (``in_channels`` counts them); or a DiffusersError saying why it does not map (module doc)."""
    c = net.config
    text = bool(c.get("context_dim"))
    if c.get("num_classes") and text:
        raise DiffusersError("a U-Net with both text and class labels has no diffusers U-Net")
    if (c.get("pooled_dim") or c.get("cond_channels")) and not text:
        raise DiffusersError(
            "a pooled embedding or concatenated inputs without text cross-attention has no diffusers U-Net"
        )
    base, mult, blocks = c["base_channels"], c["channel_mult"], c["num_res_blocks"]
    attn_levels, heads = set(c["attention_levels"]), c["num_heads"]
    widths = [base * m for m in mult]
    groups = _require_groups(net, c["groups"])
    attn_widths = {widths[i] for i in attn_levels} | {widths[-1]}
    head_dims = {w // heads for w in attn_widths}
    if heads > 1 and len(head_dims) > 1 and not text:  # UNet2DConditionModel takes a head count
        raise DiffusersError(
            f"attention widths {sorted(attn_widths)} with {heads} heads give head widths {sorted(head_dims)}; "
            "diffusers' UNet2DModel has one attention_head_dim (use num_heads=1 or equal widths)"
        )
    levels = range(len(mult))
    if text:
        return _conditional_unet(net, sample_size, widths, groups)
    config = dict(
        sample_size=sample_size,
        in_channels=c["in_channels"],
        out_channels=c["out_channels"],
        layers_per_block=blocks,
        block_out_channels=widths,
        down_block_types=["AttnDownBlock2D" if i in attn_levels else "DownBlock2D" for i in levels],
        up_block_types=["AttnUpBlock2D" if i in attn_levels else "UpBlock2D" for i in reversed(levels)],
        norm_num_groups=groups,
        norm_eps=1e-6,
        attn_norm_num_groups=groups,  # else diffusers' scale-shift middle attention has no norm
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
    if c.get("num_classes"):  # the label embedding, the null label included: UNet2DModel's class_labels
        config["num_class_embeds"] = c["num_classes"] + 1
    return config, _mapped_state(net, transformer=False)


def _conditional_unet(
    net: nn.Module, sample_size: int, widths: list[int], groups: int
) -> tuple[dict, dict[str, torch.Tensor]]:
    c = net.config
    levels, attn_levels = range(len(widths)), set(c["attention_levels"])
    config = dict(
        _class_name="UNet2DConditionModel",
        sample_size=sample_size,
        in_channels=c["in_channels"] + c.get("cond_channels", 0),
        out_channels=c["out_channels"],
        layers_per_block=c["num_res_blocks"],
        block_out_channels=widths,
        down_block_types=["CrossAttnDownBlock2D" if i in attn_levels else "DownBlock2D" for i in levels],
        mid_block_type="UNetMidBlock2DCrossAttn",
        up_block_types=["CrossAttnUpBlock2D" if i in attn_levels else "UpBlock2D" for i in reversed(levels)],
        norm_num_groups=groups,
        norm_eps=1e-6,
        cross_attention_dim=c["context_dim"],
        attention_head_dim=c["num_heads"],  # diffusers' legacy name for the number of heads
        use_linear_projection=True,
        resnet_time_scale_shift="scale_shift" if c["scale_shift"] else "default",
        dropout=c["dropout"],
        act_fn="silu",
        flip_sin_to_cos=True,
        freq_shift=0,
        downsample_padding=1,
    )
    if c.get("pooled_dim"):
        config.update(class_embed_type="projection", projection_class_embeddings_input_dim=c["pooled_dim"])
    return config, _mapped_state(net, transformer=True)


def _mapped_state(net: nn.Module, *, transformer: bool) -> dict[str, torch.Tensor]:
    """kuosan UNet tensors under diffusers' names (down_blocks / mid_block / up_blocks)."""
    state = {}
    for key, target in diffusers_key_map(net, transformer=transformer).items():
        value = net.state_dict()[key].detach().cpu()
        if isinstance(target, tuple):  # q | k | v, each (heads, d): diffusers' three projections
            for name, part in zip(target, value.chunk(3, dim=0)):
                state[name] = part.clone()
        else:
            state[target] = value
    return state


def diffusers_key_map(net: nn.Module, *, transformer: bool | None = None) -> dict[str, str | tuple[str, str, str]]:
    """kuosan UNet state key -> diffusers' key, or for a fused qkv projection the keys of its q, k
    and v thirds (``UNet2DModel``'s names; ``transformer``: ``UNet2DConditionModel``'s, default for a
    net with text cross-attention). DiffusersError for a tensor with no place there."""
    c = net.config
    if transformer is None:
        transformer = bool(c.get("context_dim"))
    mult, blocks, attn_levels = c["channel_mult"], c["num_res_blocks"], set(c["attention_levels"])
    levels = range(len(mult))
    names = {
        "time_embed.linear1": "time_embedding.linear_1",
        "time_embed.linear2": "time_embedding.linear_2",
        "pooled_embed.0": "class_embedding.linear_1",
        "pooled_embed.2": "class_embedding.linear_2",
        "label_embed": "class_embedding",
        "input_conv": "conv_in",
        "out.0": "conv_norm_out",
        "out.2": "conv_out",
    }

    def attention(prefix: str, target: str) -> dict[str, str]:
        return _attention(prefix, target, transformer=transformer)

    k = 0
    for level in levels:
        for j in range(blocks):
            names.update(_resblock(f"down.{k}.0", f"down_blocks.{level}.resnets.{j}"))
            if level in attn_levels:
                names.update(attention(f"down.{k}.1", f"down_blocks.{level}.attentions.{j}"))
            k += 1
        if level != len(mult) - 1:
            names[f"down.{k}.0.conv"] = f"down_blocks.{level}.downsamplers.0.conv"
            k += 1
    names.update(_resblock("middle.0", "mid_block.resnets.0"))
    names.update(attention("middle.1", "mid_block.attentions.0"))
    names.update(_resblock("middle.2", "mid_block.resnets.1"))
    k = 0
    for u, level in enumerate(reversed(levels)):
        for i in range(blocks + 1):
            names.update(_resblock(f"up.{k}.0", f"up_blocks.{u}.resnets.{i}"))
            nxt = 1
            if level in attn_levels:
                names.update(attention(f"up.{k}.1", f"up_blocks.{u}.attentions.{i}"))
                nxt = 2
            if level != 0 and i == blocks:
                names[f"up.{k}.{nxt}.conv"] = f"up_blocks.{u}.upsamplers.0.conv"
            k += 1
    out: dict[str, str | tuple[str, str, str]] = {}
    for key in net.state_dict():
        module, _, leaf = key.rpartition(".")
        if module.endswith(".qkv"):
            target = names[f"{module[: -len('.qkv')]}.norm"].rsplit(".", 1)[0]
            out[key] = tuple(f"{target}.{name}.{leaf}" for name in ("to_q", "to_k", "to_v"))
            continue
        if module not in names:
            raise DiffusersError(f"U-Net tensor {key} has no place in diffusers' UNet2DModel")
        out[key] = f"{names[module]}.{leaf}"
    return out


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


@contextlib.contextmanager
def _as_diffusers_error(what: str):
    """diffusers' constructor and load_state_dict errors as one DiffusersError line."""
    try:
        yield
    except (ValueError, RuntimeError, TypeError) as e:
        raise DiffusersError(f"{what}: {str(e).strip().splitlines()[-1].strip()}") from None


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
    with _as_diffusers_error("the VAE does not map onto AutoencoderKL"):
        model = diffusers.AutoencoderKL(**config)
        model.load_state_dict(state, strict=True)
    return _write(out, lambda path: model.save_pretrained(path, safe_serialization=True))


def export_ddpm(net: nn.Module, cfg, sample_size: int, out: Path) -> Path:
    """A diffusers ``DDPMPipeline`` folder (unet/ + scheduler/ + model_index.json). A class-conditional
    U-Net's labels are ``unet(x, t, class_labels=k)``, the null label K (``unet.config.num_class_embeds``
    - 1) the unconditional model; DDPMPipeline itself passes no labels."""
    diffusers = require_diffusers()
    scheduler = diffusers.DDPMScheduler(**scheduler_config(cfg))
    config, state = unet_to_diffusers(net, sample_size)
    if config.pop("_class_name", None):
        raise DiffusersError("a conditional U-Net exports with export_conditional (UNet2DConditionModel)")
    with _as_diffusers_error("the U-Net does not map onto UNet2DModel"):
        unet = diffusers.UNet2DModel(**config)
        missing, unexpected = unet.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise DiffusersError(
            f"the U-Net does not map onto UNet2DModel: missing {missing[:2]}, unexpected {unexpected[:2]}"
        )
    pipe = diffusers.DDPMPipeline(unet=unet, scheduler=scheduler)
    return _write(out, lambda path: pipe.save_pretrained(path, safe_serialization=True))


def export_conditional(
    net: nn.Module, cfg, sample_size: int, out: Path, *, vae: nn.Module | None = None, conditioning: dict
) -> Path:
    """A folder with ``unet/`` (``UNet2DConditionModel``), ``scheduler/`` (``DDPMScheduler``), for a
    latent model ``vae/`` (``AutoencoderKL`` with the run's latent scale factor), and
    ``kuosan_conditioning.json``: what the U-Net was trained to take (the text encoder, the prompt
    length, and that kuosan's ``context_mask`` is diffusers' ``encoder_attention_mask`` and its
    ``pooled`` is ``class_labels``). Not a StableDiffusionPipeline: its pipeline would feed neither
    the mask nor the pooled vector."""
    import json

    diffusers = require_diffusers()
    scheduler = diffusers.DDPMScheduler(**scheduler_config(cfg))
    config, state = unet_to_diffusers(net, sample_size)
    config.pop("_class_name", None)
    with _as_diffusers_error("the U-Net does not map onto UNet2DConditionModel"):
        unet = diffusers.UNet2DConditionModel(**config)
        unet.load_state_dict(state, strict=True)
    vae_model = None
    if vae is not None:
        vae_config, vae_state = vae_to_diffusers(vae, scaling_factor=cfg.latent.scale_factor)
        with _as_diffusers_error("the VAE does not map onto AutoencoderKL"):
            vae_model = diffusers.AutoencoderKL(**vae_config)
            vae_model.load_state_dict(vae_state, strict=True)

    def save(path: Path) -> None:
        unet.save_pretrained(path / "unet", safe_serialization=True)
        scheduler.save_pretrained(path / "scheduler")
        if vae_model is not None:
            vae_model.save_pretrained(path / "vae", safe_serialization=True)
        (path / "kuosan_conditioning.json").write_text(json.dumps(conditioning, indent=2) + "\n")

    return _write(out, save)


__all__ = [
    "RESNET_NAMES",
    "export_conditional",
    "export_ddpm",
    "export_vae",
    "scheduler_config",
    "unet_to_diffusers",
    "vae_to_diffusers",
]
