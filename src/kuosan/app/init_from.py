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
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch
from torch import nn

from kuosan.config import ConfigError
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
    return ckpt.load_tensors(path, "ema"), f"the run {spec}"


def _diffusers_weights(folder: Path, net: nn.Module) -> dict[str, torch.Tensor]:
    """A diffusers U-Net folder's tensors under kuosan's names (the inverse of ``kuosan export``'s
    map for this network; q, k and v fused back into one projection)."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    from kuosan.interop.diffusers import DiffusersError
    from kuosan.interop.export import diffusers_key_map

    unet = folder / "unet" if (folder / "unet").is_dir() else folder
    files = sorted(unet.glob("*.safetensors"))
    if not (unet / "config.json").is_file() or not files:
        raise ConfigError(f"train.init_from=diffusers:{folder}: no U-Net config.json with safetensors weights there")
    try:
        theirs: dict[str, torch.Tensor] = {}
        for f in files:
            theirs.update(load_file(str(f)))
        key_map = diffusers_key_map(net)
    except (SafetensorError, OSError, ValueError, DiffusersError) as e:
        raise ConfigError(f"train.init_from=diffusers:{folder}: {str(e).splitlines()[0]}") from None
    out = {}
    for key, target in key_map.items():
        if isinstance(target, tuple):
            if all(t in theirs for t in target):
                out[key] = torch.cat([theirs[t] for t in target], dim=0)
        elif target in theirs:
            out[key] = theirs[target]
    return out


__all__ = ["load_into", "source_weights"]
