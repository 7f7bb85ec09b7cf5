"""Properties of kuosan.networks: shapes, the timestep embedding's closed form, zero-init, skips,
config round trips, channels-last, dropout, attention placement, and parity with diffusers."""

from __future__ import annotations

import json
import math

import pytest
import torch
from torch import nn

from kuosan.interop.export import RESNET_NAMES  # our ResBlock's submodules -> diffusers'
from kuosan.networks import NETWORKS, MLPDenoiser, UNet, timestep_embedding
from kuosan.networks.attention import SelfAttention2d
from kuosan.networks.blocks import ResBlock
from kuosan.networks.embeddings import TimestepEmbedding

TINY = dict(base_channels=16, channel_mult=(1, 2), num_res_blocks=1, attention_levels=(1,), num_heads=2, groups=8)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def randomize_zero_params(net: nn.Module, std: float = 0.05) -> nn.Module:
    """Re-draw the zero-initialised parameters, so every branch of the net is live (a 'trained' net)."""
    with torch.no_grad():
        for p in net.parameters():
            if not p.any():
                p.normal_(0.0, std)
    return net


# ---------------------------------------------------------------- shapes


@pytest.mark.parametrize("channel_mult", [(1, 2), (1, 2, 2)])
def test_unet_shape_8x8_digits(channel_mult):
    net = UNet(**{**TINY, "channel_mult": channel_mult})
    x = torch.randn(3, 1, 8, 8)
    assert net(x, torch.tensor([0.0, 10.0, 999.0])).shape == (3, 1, 8, 8)


def test_unet_shape_32x32_rgb_and_out_channels():
    net = UNet(**{**TINY, "in_channels": 3, "channel_mult": (1, 2, 2)})
    assert net(torch.randn(2, 3, 32, 32), torch.rand(2) * 1000).shape == (2, 3, 32, 32)
    wide = UNet(**{**TINY, "in_channels": 3, "out_channels": 6})
    assert wide(torch.randn(2, 3, 32, 32), torch.rand(2)).shape == (2, 6, 32, 32)


def test_mlp_shape_2d():
    net = MLPDenoiser(hidden=32, depth=2, time_dim=16)
    assert net(torch.randn(7, 2), torch.rand(7) * 1000).shape == (7, 2)


def test_scalar_t_broadcasts_to_batch():
    for net, x in [
        (randomize_zero_params(UNet(**TINY)), torch.randn(3, 1, 8, 8)),
        (randomize_zero_params(MLPDenoiser(hidden=32, depth=2)), torch.randn(3, 2)),
    ]:
        full = net(x, torch.full((3,), 37.5))
        torch.testing.assert_close(net(x, 37.5), full)
        torch.testing.assert_close(net(x, torch.tensor(37.5)), full)
        with pytest.raises(ValueError):
            net(x, torch.zeros(2))


def test_unet_rejects_sizes_not_divisible_by_levels():
    with pytest.raises(ValueError, match="divisible"):
        UNet(**{**TINY, "channel_mult": (1, 2, 2)})(torch.randn(1, 1, 6, 6), 0.0)
    with pytest.raises(ValueError):
        UNet(**{**TINY, "attention_levels": (2,)})
    with pytest.raises(ValueError):
        UNet(**{**TINY, "num_heads": 3})


# ---------------------------------------------------------------- timestep embedding


def test_timestep_embedding_closed_form():
    # dim 4 -> half 2, omega = [1, 10000**-0.5 = 0.01]; layout [cos w0 t, cos w1 t, sin w0 t, sin w1 t]
    t = torch.tensor([0.0, 1.0, 2.5, 100.0])
    got = timestep_embedding(t, 4)
    want = torch.tensor([[math.cos(s), math.cos(0.01 * s), math.sin(s), math.sin(0.01 * s)] for s in t.tolist()])
    torch.testing.assert_close(got, want, rtol=0, atol=1e-6)
    # odd dim: zero column appended; max_period sets the lowest frequency
    odd = timestep_embedding(torch.tensor([3.0]), 5, max_period=100.0)  # omega = [1, 0.1]
    want = torch.tensor([[math.cos(3), math.cos(0.3), math.sin(3), math.sin(0.3), 0.0]])
    torch.testing.assert_close(odd, want, rtol=0, atol=1e-6)
    assert timestep_embedding(torch.zeros(2), 6).tolist() == [[1, 1, 1, 0, 0, 0]] * 2


def test_timestep_embedding_fractional_and_continuous():
    t = torch.tensor([10.0, 10.5, 11.0])
    e = timestep_embedding(t, 32)
    assert e.dtype == torch.float32 and torch.isfinite(e).all()
    assert not torch.equal(e[1], e[0]) and not torch.equal(e[1], e[2])
    # every frequency is <= 1 rad/step, so |e(t + d) - e(t)| <= d component-wise (Lipschitz 1)
    for d in [1e-1, 1e-2, 1e-3]:
        diff = timestep_embedding(t + d, 32) - e
        assert diff.abs().max() <= d * (1 + 1e-3) + 1e-6
    # the embedding network sees fractional t too, and is continuous in it
    emb = TimestepEmbedding(freq_dim=32, embed_dim=64)
    out = emb(torch.tensor([10.0, 10.0 + 1e-4, 10.5]))
    assert (out[1] - out[0]).abs().max() < 1e-3 < (out[2] - out[0]).abs().max()


# ---------------------------------------------------------------- initialisation and gradients


@pytest.mark.parametrize(
    "make, shape", [(lambda: UNet(**TINY), (4, 1, 8, 8)), (lambda: MLPDenoiser(hidden=32, depth=2), (4, 2))]
)
def test_zero_init_output_then_one_step_moves_it(make, shape):
    net = make()
    x, t, target = torch.randn(shape), torch.rand(shape[0]) * 1000, torch.randn(shape)
    assert torch.equal(net(x, t), torch.zeros(shape))
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)
    ((net(x, t) - target) ** 2).mean().backward()
    opt.step()
    opt.zero_grad()
    out = net(x, t)
    assert out.abs().min() > 0
    # once the output layer is non-zero, the gradient reaches the very first layer
    ((out - target) ** 2).mean().backward()
    first = net.input_conv if isinstance(net, UNet) else net.input_proj
    assert first.weight.grad.abs().sum() > 0


def test_unet_skip_connections_carry_the_signal():
    """With the bottleneck output forced to 0, the output still depends on x: only skips can carry it."""
    net = randomize_zero_params(UNet(**TINY))
    net.middle.register_forward_hook(lambda module, inputs, output: torch.zeros_like(output))
    x = torch.randn(2, 1, 8, 8, requires_grad=True)
    net(x, torch.tensor([1.0, 500.0])).square().sum().backward()
    assert x.grad.abs().sum() > 0
    assert net.input_conv.weight.grad.abs().sum() > 0
    assert net.down[0][0].in_layers[2].weight.grad.abs().sum() > 0


# ---------------------------------------------------------------- config, memory format, modes


@pytest.mark.parametrize(
    "name, kwargs",
    [
        ("unet", {**TINY, "in_channels": 3, "scale_shift": False, "dropout": 0.1}),
        ("mlp", dict(dim=3, hidden=32, depth=3, time_dim=8)),
    ],
)
def test_config_rebuilds_identical_architecture(name, kwargs):
    net = randomize_zero_params(NETWORKS[name](**kwargs)).eval()
    config = json.loads(json.dumps(net.config))  # what a checkpoint's JSON gives back
    twin = NETWORKS[name](**config).eval()
    twin.load_state_dict(net.state_dict(), strict=True)
    assert twin.config == NETWORKS[name](**twin.config).config
    x = torch.randn(2, 3, 8, 8) if name == "unet" else torch.randn(2, 3)
    torch.testing.assert_close(twin(x, 3.0), net(x, 3.0))


def test_unet_channels_last_matches_contiguous():
    net = randomize_zero_params(UNet(**{**TINY, "in_channels": 3})).eval()
    x, t = torch.randn(2, 3, 16, 16), torch.tensor([3.0, 700.0])
    ref = net(x, t)
    net = net.to(memory_format=torch.channels_last)
    out = net(x.to(memory_format=torch.channels_last), t)
    torch.testing.assert_close(out, ref, rtol=0, atol=1e-5)


def test_unet_bf16_autocast_close_to_fp32():
    net = randomize_zero_params(UNet(**{**TINY, "in_channels": 3})).eval()
    x, t = torch.randn(2, 3, 8, 8), torch.tensor([3.0, 700.0])
    ref = net(x, t)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = net(x, t)
    assert out.dtype == torch.bfloat16
    assert (out.float() - ref).norm() <= 0.05 * ref.norm()


@pytest.mark.parametrize(
    "make, shape",
    [
        (lambda: UNet(**{**TINY, "dropout": 0.5}), (2, 1, 8, 8)),
        (lambda: MLPDenoiser(hidden=32, depth=2, dropout=0.5), (2, 2)),
    ],
)
def test_dropout_active_in_train_only(make, shape):
    net = randomize_zero_params(make())
    x, t = torch.randn(shape), torch.tensor([5.0, 50.0])
    net.train()
    assert not torch.equal(net(x, t), net(x, t))
    net.eval()
    assert torch.equal(net(x, t), net(x, t))


@pytest.mark.parametrize("channel_mult, levels, n_res", [((1, 2, 2), (1,), 2), ((1, 2), (0, 1), 1), ((1, 2), (), 2)])
def test_attention_at_chosen_levels(channel_mult, levels, n_res):
    net = UNet(**{**TINY, "channel_mult": channel_mult, "attention_levels": levels, "num_res_blocks": n_res})
    attn = [m for m in net.modules() if isinstance(m, SelfAttention2d)]
    # num_res_blocks on the way down + (num_res_blocks + 1) on the way up per level, + middle
    assert len(attn) == len(levels) * (2 * n_res + 1) + 1
    # each one sits at its level's resolution: record the spatial size it sees on 8x8 input
    seen = []
    hooks = [m.register_forward_hook(lambda m, i, o: seen.append(o.shape[-1])) for m in attn]
    net(torch.randn(1, 1, 8, 8), 0.0)
    for h in hooks:
        h.remove()
    bottom = 8 // 2 ** (len(channel_mult) - 1)
    want = sorted([8 // 2**lvl for lvl in levels] * (2 * n_res + 1) + [bottom])
    assert sorted(seen) == want


# ---------------------------------------------------------------- parity with diffusers (DDPM layout)


def _to_diffusers_state_dict(net: UNet, n_res: int, n_levels: int) -> dict[str, torch.Tensor]:
    """Rename our parameters to diffusers' UNet2DModel names (fused qkv split into q, k, v)."""
    sd = net.state_dict()
    out = {}

    def resnet(src: str, dst: str):
        for ours, theirs in RESNET_NAMES.items():
            for kind in ("weight", "bias"):
                if f"{src}.{ours}.{kind}" in sd:
                    out[f"{dst}.{theirs}.{kind}"] = sd[f"{src}.{ours}.{kind}"]

    def attention(src: str, dst: str):
        out[f"{dst}.group_norm.weight"] = sd[f"{src}.norm.weight"]
        out[f"{dst}.group_norm.bias"] = sd[f"{src}.norm.bias"]
        for kind in ("weight", "bias"):
            q, k, v = sd[f"{src}.qkv.{kind}"].chunk(3, dim=0)
            out[f"{dst}.to_q.{kind}"], out[f"{dst}.to_k.{kind}"], out[f"{dst}.to_v.{kind}"] = q, k, v
            out[f"{dst}.to_out.0.{kind}"] = sd[f"{src}.proj_out.{kind}"]

    for kind in ("weight", "bias"):
        out[f"conv_in.{kind}"] = sd[f"input_conv.{kind}"]
        out[f"time_embedding.linear_1.{kind}"] = sd[f"time_embed.linear1.{kind}"]
        out[f"time_embedding.linear_2.{kind}"] = sd[f"time_embed.linear2.{kind}"]
        out[f"conv_norm_out.{kind}"] = sd[f"out.0.{kind}"]
        out[f"conv_out.{kind}"] = sd[f"out.2.{kind}"]
    i = 0
    for level in range(n_levels):
        for j in range(n_res):
            resnet(f"down.{i}.0", f"down_blocks.{level}.resnets.{j}")
            if f"down.{i}.1.qkv.weight" in sd:
                attention(f"down.{i}.1", f"down_blocks.{level}.attentions.{j}")
            i += 1
        if level != n_levels - 1:
            for kind in ("weight", "bias"):
                out[f"down_blocks.{level}.downsamplers.0.conv.{kind}"] = sd[f"down.{i}.0.conv.{kind}"]
            i += 1
    resnet("middle.0", "mid_block.resnets.0")
    attention("middle.1", "mid_block.attentions.0")
    resnet("middle.2", "mid_block.resnets.1")
    i = 0
    for up_level in range(n_levels):
        for j in range(n_res + 1):
            resnet(f"up.{i}.0", f"up_blocks.{up_level}.resnets.{j}")
            if f"up.{i}.1.qkv.weight" in sd:
                attention(f"up.{i}.1", f"up_blocks.{up_level}.attentions.{j}")
            for kind in ("weight", "bias"):
                key = f"up.{i}.{len(net.up[i]) - 1}.conv.{kind}"
                if up_level != n_levels - 1 and j == n_res:
                    out[f"up_blocks.{up_level}.upsamplers.0.conv.{kind}"] = sd[key]
            i += 1
    return out


def test_parity_with_diffusers_unet2d():
    """Same weights, same numbers as diffusers' UNet2DModel in the DDPM layout (additive time
    conditioning; diffusers drops the mid-block attention norm under scale-shift, so the FiLM
    variant is checked block-wise below)."""
    diffusers = pytest.importorskip("diffusers")
    n_res, mult, base = 1, (1, 2), 16
    net = randomize_zero_params(
        UNet(
            in_channels=3,
            base_channels=base,
            channel_mult=mult,
            num_res_blocks=n_res,
            attention_levels=(1,),
            num_heads=4,
            groups=8,
            scale_shift=False,
        )
    ).eval()
    ref = diffusers.UNet2DModel(
        sample_size=8,
        in_channels=3,
        out_channels=3,
        block_out_channels=[base * m for m in mult],
        layers_per_block=n_res,
        down_block_types=("DownBlock2D", "AttnDownBlock2D"),
        up_block_types=("AttnUpBlock2D", "UpBlock2D"),
        attention_head_dim=8,
        norm_num_groups=8,
        norm_eps=1e-6,
        flip_sin_to_cos=True,
        freq_shift=0,
        downsample_padding=1,
    ).eval()
    ref.load_state_dict(_to_diffusers_state_dict(net, n_res, len(mult)), strict=True)
    x, t = torch.randn(2, 3, 8, 8), torch.tensor([3.0, 420.0])
    with torch.no_grad():
        torch.testing.assert_close(net(x, t), ref(x, t).sample, rtol=1e-4, atol=1e-5)


def test_parity_scale_shift_resblock_with_diffusers():
    resnet = pytest.importorskip("diffusers.models.resnet")
    block = randomize_zero_params(
        ResBlock(in_channels=8, out_channels=16, emb_channels=12, scale_shift=True, groups=4)
    ).eval()
    ref = resnet.ResnetBlock2D(
        in_channels=8,
        out_channels=16,
        temb_channels=12,
        groups=4,
        groups_out=4,
        eps=1e-6,
        time_embedding_norm="scale_shift",
    ).eval()
    names = RESNET_NAMES
    sd = {}
    for key, value in block.state_dict().items():
        module, kind = key.rsplit(".", 1)
        sd[f"{names[module]}.{kind}"] = value
    ref.load_state_dict(sd, strict=True)
    x, emb = torch.randn(2, 8, 6, 6), torch.randn(2, 12)
    with torch.no_grad():
        torch.testing.assert_close(block(x, emb), ref(x, emb), rtol=1e-4, atol=1e-5)


def test_gradient_checkpointing_gives_the_same_gradients():
    """Recomputing the blocks' activations in the backward pass changes memory, not the gradients."""
    torch.manual_seed(0)
    net = UNet(
        in_channels=1, base_channels=8, channel_mult=(1, 2), num_res_blocks=1, attention_levels=(1,), dropout=0.1
    )
    x, t = torch.randn(2, 1, 8, 8), torch.tensor([3.0, 700.0])
    calls = []
    net.middle.register_forward_pre_hook(lambda *_: calls.append(1))
    grads, runs = [], []
    for enabled in (False, True):
        net.enable_gradient_checkpointing(enabled)
        net.zero_grad()
        calls.clear()
        torch.manual_seed(1)  # the same dropout masks (checkpoint replays the RNG state)
        net(x, t).square().sum().backward()
        grads.append([p.grad.clone() for p in net.parameters()])
        runs.append(len(calls))
    assert runs == [1, 2]  # recomputed in the backward pass
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
