"""LoRA (Hu et al. 2021) on the attention projections of a network, through ``peft``, the library
the ecosystem's fine-tuning scripts use (diffusers' ``train_text_to_image_lora.py`` adds the same
adapter to the same layers).

A frozen projection W (out x in) becomes

    h = W x + (alpha / r) B A x,        A: (r x in), B: (out x r),

with A initialised at random and B at zero, so the adapted network starts as the base network and
only A and B (a fraction of a percent of the weights at r = 4) are trained. The adapted layers are
every attention projection: a self-attention block's ``qkv`` and ``proj_out`` and a cross-attention
block's ``to_q``, ``to_k``, ``to_v`` and ``to_out.0``. :func:`merge_lora` folds B A into W
(W <- W + (alpha / r) B A) and puts the plain layers back, which computes the same function.
"""

from __future__ import annotations

from torch import nn

from .attention import CrossAttention, SelfAttention2d

PROJECTIONS = {SelfAttention2d: ("qkv", "proj_out"), CrossAttention: ("to_q", "to_k", "to_v", "to_out.0")}


def attention_projections(net: nn.Module) -> list[str]:
    """The full names of every attention projection of ``net`` (the layers LoRA adapts)."""
    return [
        f"{name}.{projection}"
        for name, module in net.named_modules()
        for kind, projections in PROJECTIONS.items()
        if isinstance(module, kind)
        for projection in projections
    ]


def _peft():
    try:
        import peft
    except ImportError:
        raise ImportError("LoRA needs peft: pip install 'kuosan[lora]'") from None
    return peft


def add_lora(net: nn.Module, *, rank: int, alpha: float, dropout: float = 0.0) -> list[str]:
    """Adapt every attention projection of ``net`` in place with rank-``rank`` LoRA (scale alpha / r),
    freezing every other weight; returns the state-dict keys of the adapter (what a LoRA run saves).
    ValueError for a network without attention."""
    targets = attention_projections(net)
    if not targets:
        raise ValueError("the network has no attention layers for LoRA to adapt (model.params.attention_levels)")
    peft = _peft()
    config = peft.LoraConfig(r=rank, lora_alpha=alpha, lora_dropout=dropout, target_modules=targets)
    peft.inject_adapter_in_model(config, net)  # marks only the adapter's A and B trainable
    return lora_keys(net)


def lora_keys(net: nn.Module) -> list[str]:
    """The state-dict keys of the LoRA adapter in ``net`` (its A and B matrices)."""
    return [key for key in net.state_dict() if ".lora_A." in key or ".lora_B." in key]


def merge_lora(net: nn.Module) -> nn.Module:
    """Fold every LoRA adapter of ``net`` into its layer's weight (W + (alpha / r) B A) and put the
    plain layer back in its place; returns ``net`` (changed in place)."""
    from peft.tuners.tuners_utils import BaseTunerLayer

    adapted = [(name, module) for name, module in net.named_modules() if isinstance(module, BaseTunerLayer)]
    for name, module in adapted:
        module.merge()
        parent_name, _, child = name.rpartition(".")
        setattr(net.get_submodule(parent_name) if parent_name else net, child, module.get_base_layer())
    return net


__all__ = ["PROJECTIONS", "add_lora", "attention_projections", "lora_keys", "merge_lora"]
