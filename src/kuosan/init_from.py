"""Starting a run from pretrained weights (``train.init_from``): a kuosan run's EMA weights, or a
diffusers ``UNet2DModel`` folder, loaded into a freshly built network before training; the optimizer
starts fresh.

Partial loading rules (what fine-tuning a changed architecture needs):

- a parameter in both with equal shapes is loaded;
- a parameter only in the new network (a layer the source lacks, e.g. the label embedding of a
  class-conditional fine-tune of an unconditional run) keeps its fresh initialisation;
- a parameter only in the source is ignored (e.g. starting an unconditional run from a
  class-conditional one);
- a parameter in both with different shapes is a one-line ConfigError naming it;
- nothing in common is a ConfigError (the wrong source).

What was loaded, kept and ignored is logged and returned.

With ``lora.rank`` set the source is the frozen base of a LoRA fine-tune (``networks/lora.py``): it is
loaded whenever the network is built (a new run, a resumed one, sampling), since a LoRA run's
checkpoint keeps only its adapter; it must then supply every weight of the network.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch
from torch import nn

from kuosan.build import build_network
from kuosan.config import Config, ConfigError
from kuosan.networks.lora import add_lora, merge_lora
from kuosan.train import checkpoint as ckpt

logger = logging.getLogger(__name__)

DIFFUSERS_PREFIX = "diffusers:"


def load_into(net: nn.Module, source: dict[str, torch.Tensor], what: str) -> dict:
    """Load ``source`` into ``net`` by the rules of the module doc; {"loaded", "new", "ignored"} key lists."""
    target = net.state_dict()
    for key, value in source.items():
        if key in target and tuple(value.shape) != tuple(target[key].shape):
            raise ConfigError(
                f"train.init_from: {key} has shape {tuple(value.shape)} in {what} but {tuple(target[key].shape)} here"
            )
    loaded = [k for k in target if k in source]
    if not loaded:
        raise ConfigError(f"train.init_from: {what} has no parameter of this network (another architecture?)")
    new, ignored = [k for k in target if k not in source], [k for k in source if k not in target]
    net.load_state_dict({**target, **{k: source[k].to(target[k].dtype) for k in loaded}})
    logger.info("init_from %s: %d tensors loaded, %d new, %d ignored", what, len(loaded), len(new), len(ignored))
    return {"loaded": loaded, "new": new, "ignored": ignored}


def source_weights(spec: str, net: nn.Module) -> tuple[dict[str, torch.Tensor], str]:
    """(tensors under the network's names, a description) of ``train.init_from``: a kuosan run
    directory (its EMA weights) or ``diffusers:DIR`` (a UNet2DModel folder, or a pipeline folder with
    unet/, mapped to kuosan's names by the inverse of ``kuosan export``'s map)."""
    if spec.startswith(DIFFUSERS_PREFIX):
        return _diffusers_weights(Path(spec[len(DIFFUSERS_PREFIX) :]), net), spec
    path = Path(spec)
    if ckpt.find_checkpoint(path) is None:
        raise ConfigError(f"train.init_from={spec}: no kuosan run there (and not diffusers:DIR)")
    source = Config.from_dict(ckpt.read_config(path))
    if not source.lora.rank:
        return ckpt.load_tensors(path, "ema"), f"the run {spec}"
    # a LoRA run: its base with its EMA adapter folded in
    adapted = build_network(source, tuple(ckpt.read_state(path)["data_shape"]))
    prepare_network(source, adapted, new_run=False)
    adapted.load_state_dict(ckpt.load_tensors(path, "ema"), strict=False)
    return merge_lora(adapted).state_dict(), f"the LoRA run {spec}"


ARCHITECTURE_KEYS = (
    "in_channels", "out_channels", "layers_per_block", "block_out_channels", "down_block_types", "up_block_types",
    "mid_block_type", "norm_num_groups", "norm_eps", "attention_head_dim", "attn_norm_num_groups",
    "resnet_time_scale_shift", "act_fn", "time_embedding_type", "flip_sin_to_cos", "freq_shift",
    "center_input_sample", "add_attention", "cross_attention_dim", "use_linear_projection", "class_embed_type",
)  # fmt: skip
DEFAULTS = {"center_input_sample": False, "class_embed_type": None}


def _diffusers_weights(folder: Path, net: nn.Module) -> dict[str, torch.Tensor]:
    """A diffusers U-Net folder's tensors under kuosan's names: loaded by diffusers itself (legacy
    attention names, variants and shards as ``from_pretrained`` handles them; safetensors only),
    its architecture compared with the one this network exports to (a different function with the
    same shapes is refused, naming the first differing setting), then the inverse of ``kuosan
    export``'s key map (q, k and v fused back into one projection). Tensors the map does not know
    stay under diffusers' names, so :func:`load_into` reports them as ignored."""
    from kuosan.interop.diffusers import DiffusersError, require_diffusers, require_safetensors
    from kuosan.interop.export import diffusers_key_map, unet_to_diffusers

    unet_dir = folder / "unet" if (folder / "unet").is_dir() else folder
    what = f"train.init_from=diffusers:{folder}"
    try:
        require_safetensors(unet_dir)
        diffusers = require_diffusers()
        want, _ = unet_to_diffusers(net, 8)
        cls = diffusers.UNet2DConditionModel if want.pop("_class_name", None) else diffusers.UNet2DModel
        model = cls.from_pretrained(str(unet_dir), use_safetensors=True)
        key_map = diffusers_key_map(net)
    except (DiffusersError, OSError, ValueError, TypeError) as e:
        raise ConfigError(f"{what}: {str(e).strip().splitlines()[0]}") from None
    for key in ARCHITECTURE_KEYS:
        ours, theirs = want.get(key, DEFAULTS.get(key)), model.config.get(key, DEFAULTS.get(key))
        if isinstance(ours, (list, tuple)) and isinstance(theirs, (list, tuple)):
            ours, theirs = list(ours), list(theirs)
        if key in want and ours != theirs:
            raise ConfigError(f"{what}: its U-Net has {key}={theirs!r}, this network {ours!r} (another architecture)")
    theirs = {k: v.detach() for k, v in model.state_dict().items()}
    out, used = {}, set()
    for key, target in key_map.items():
        parts = target if isinstance(target, tuple) else (target,)
        present = [t in theirs for t in parts]
        if not all(present):
            if key.startswith("label_embed"):  # a class-conditional fine-tune of an unconditional U-Net
                continue
            raise ConfigError(f"{what}: its U-Net lacks {parts[present.index(False)]} (this network's {key})")
        out[key] = torch.cat([theirs[t] for t in parts], dim=0) if len(parts) > 1 else theirs[parts[0]]
        used.update(parts)
    out.update({k: v for k, v in theirs.items() if k not in used})  # reported as ignored
    return out


def prepare_network(cfg: Config, net: nn.Module, *, new_run: bool) -> list[str] | None:
    """Give a network just built from ``cfg`` its starting weights: ``train.init_from``'s for a new
    run; for a LoRA run (``lora.rank``) always the base's, then the adapter. Returns the adapter's
    state-dict keys (what the run's checkpoints keep), None without LoRA (they keep everything)."""
    spec, lora = cfg.train.init_from, cfg.lora
    if not lora.rank:
        if spec and new_run:
            load_into(net, *source_weights(spec, net))
        return None
    report = load_into(net, *source_weights(spec, net))
    if report["new"]:
        raise ConfigError(
            f"lora.rank: train.init_from={spec} lacks {len(report['new'])} weights of this network (first "
            f"{report['new'][0]}); a LoRA run adapts a base that has them all (fine-tune it without LoRA)"
        )
    try:
        return add_lora(net, rank=lora.rank, alpha=lora.alpha or lora.rank, dropout=lora.dropout)
    except (ValueError, ImportError) as e:
        raise ConfigError(f"lora.rank: {e}") from None


__all__ = ["load_into", "prepare_network", "source_weights"]
