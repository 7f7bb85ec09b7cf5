"""First-stage autoencoders: shapes, the KL and ELBO formulas, reparameterisation, diffusers parity,
config, training through the CLI, exact resume, latent scaling, bad input."""

import json
import math

import pytest
import torch
from torch import nn

from cli_helpers import fails_cleanly, kuosan
from kuosan.app import build_trainer
from kuosan.build import build_network, validate
from kuosan.config import Config, ConfigError, resolve_config
from kuosan.losses.autoencoder import AutoencoderObjective, gaussian_nll, negative_elbo, reconstruction_loss
from kuosan.metrics.reconstruction import psnr
from kuosan.networks import (
    NETWORKS,
    Autoencoder,
    AutoencoderKL,
    DiagonalGaussian,
    autoencoder_from_diffusers,
    encode_latents,
    latent_scale_factor,
    load_diffusers_vae,
)
from kuosan.runs import load_autoencoder
from kuosan.train import CheckpointError
from train_helpers import assert_resume_equals_uninterrupted

TINY = {"block_out_channels": (8, 16, 16), "latent_channels": 4, "layers_per_block": 1, "groups": 4}
TINY_OVERRIDES = [
    "data.n=48",
    "model.params.block_out_channels=[8,16,16]",
    "model.params.groups=4",
    "train.batch_size=8",
    "train.warmup_steps=1",
    "train.log_every=1",
]


# --- networks --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("cls", [AutoencoderKL, Autoencoder])
def test_shapes_and_rebuild_from_config(cls):
    torch.manual_seed(0)
    net = cls(**TINY)
    x = torch.randn(2, 3, 32, 32)
    assert net.latent_shape((3, 32, 32)) == (4, 8, 8) and net.latent_shape((5, 3, 16, 24)) == (4, 4, 6)
    z = encode_latents(net, x)
    assert z.shape == (2, 4, 8, 8) and net.decode(z).shape == (2, 3, 32, 32)
    rebuilt = cls(**json.loads(json.dumps(net.config)))
    rebuilt.load_state_dict(net.state_dict())
    assert torch.equal(rebuilt.decode(z), net.decode(z))
    with pytest.raises(ValueError, match="divisible by 4"):
        net.encode(torch.randn(1, 3, 30, 32))
    with pytest.raises(ValueError, match="latents must have shape"):
        net.decode(torch.randn(1, 3, 8, 8))


def test_registered_and_default_is_32_to_8x8x4():
    assert NETWORKS["vae"] is AutoencoderKL and NETWORKS["ae"] is Autoencoder
    assert AutoencoderKL().latent_shape((3, 32, 32)) == (4, 8, 8)
    assert isinstance(AutoencoderKL(**TINY).encode(torch.randn(1, 3, 32, 32)), DiagonalGaussian)


# --- the Gaussian posterior, KL and ELBO -------------------------------------------------------------------


def test_kl_and_nll_match_torch_distributions():
    g = torch.Generator().manual_seed(0)
    mean, logvar = torch.randn(3, 4, 2, 2, generator=g), torch.randn(3, 4, 2, 2, generator=g)
    q = DiagonalGaussian(mean, logvar)
    ref_q = torch.distributions.Normal(mean, torch.exp(0.5 * logvar))
    ref_p = torch.distributions.Normal(torch.zeros_like(mean), torch.ones_like(mean))
    kl_ref = torch.distributions.kl_divergence(ref_q, ref_p).flatten(1).sum(1)
    assert q.kl().shape == (3,) and torch.allclose(q.kl(), kl_ref, atol=1e-5)
    z = torch.randn(3, 4, 2, 2, generator=g)
    assert torch.allclose(q.nll(z), -ref_q.log_prob(z).flatten(1).sum(1), atol=1e-4)
    assert torch.allclose(DiagonalGaussian(torch.zeros(2, 3), torch.zeros(2, 3)).kl(), torch.zeros(2))
    # the encoder's log-variance is clamped to [-30, 20] as LDM does
    assert DiagonalGaussian(torch.zeros(1, 2), torch.tensor([[-100.0, 100.0]])).logvar.tolist() == [[-30.0, 20.0]]


def test_reparameterisation_is_deterministic_and_has_the_posterior_moments():
    mean, logvar = torch.tensor([[1.0, -2.0]]), torch.tensor([[0.0, math.log(0.25)]])
    q = DiagonalGaussian(mean.expand(20_000, 2), logvar.expand(20_000, 2))
    a = q.sample(torch.Generator().manual_seed(3))
    assert torch.equal(a, q.sample(torch.Generator().manual_seed(3)))
    assert not torch.equal(a, q.sample(torch.Generator().manual_seed(4)))
    assert torch.allclose(a.mean(0), torch.tensor([1.0, -2.0]), atol=0.03)
    assert torch.allclose(a.std(0), torch.tensor([1.0, 0.5]), atol=0.02)
    eps = torch.randn(20_000, 2, generator=torch.Generator().manual_seed(3))
    assert torch.equal(q.sample(eps=eps), a)  # z = mu + sigma * eps with eps from the generator


class LinearVAE(nn.Module):
    """q(z|x) = N(A x, diag(exp(b))), decoder D(z) = C z: the -ELBO has a closed form."""

    def __init__(self, dx=5, dz=3):
        super().__init__()
        g = torch.Generator().manual_seed(1)
        self.A = torch.randn(dz, dx, generator=g, dtype=torch.float64) * 0.5
        self.b = torch.randn(dz, generator=g, dtype=torch.float64) * 0.5
        self.C = torch.randn(dx, dz, generator=g, dtype=torch.float64) * 0.5

    def encode(self, x):
        mu = x @ self.A.T
        return DiagonalGaussian(mu, self.b.expand_as(mu))

    def forward(self, x, eps):
        q = self.encode(x)
        return q.sample(eps=eps).double() @ self.C.T, q.kl()


def test_negative_elbo_by_hand_on_a_linear_vae():
    vae, s = LinearVAE(), 0.3
    x = torch.randn(4, 5, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    eps = torch.randn(4, 3, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    mu, var = x @ vae.A.T, vae.b.exp()
    z = mu + var.sqrt() * eps
    rec = ((x - z @ vae.C.T) ** 2).sum(1) / (2 * s**2) + 5 / 2 * math.log(2 * math.pi * s**2)
    kl = 0.5 * (mu**2 + var - 1 - vae.b).sum(1)
    got = negative_elbo(vae, x, eps, decoder_std=s)
    assert got.shape == (4,) and torch.allclose(got.double(), rec + kl, rtol=1e-5)
    # its expectation over eps: E||x - C z||^2 = ||x - C mu||^2 + sum_j var_j ||C[:, j]||^2
    exact = (
        (((x - mu @ vae.C.T) ** 2).sum(1) + (var * (vae.C**2).sum(0)).sum()) / (2 * s**2)
        + 5 / 2 * math.log(2 * math.pi * s**2)
        + kl
    )
    reps = 50_000
    many = torch.randn(reps * 4, 3, generator=torch.Generator().manual_seed(6), dtype=torch.float64)
    mc = negative_elbo(vae, x.repeat(reps, 1), many, decoder_std=s).double().reshape(reps, 4).mean(0)
    assert torch.allclose(mc, exact, rtol=0.01)


def test_objective_is_recon_plus_weighted_kl():
    torch.manual_seed(0)
    net = AutoencoderKL(**TINY)
    x = torch.rand(3, 3, 32, 32) * 2 - 1
    obj = AutoencoderObjective(recon="l2", kl_weight=0.01, latent_shape=net.latent_shape(x.shape))
    drawn = obj.draw(x, torch.Generator().manual_seed(0))
    assert drawn["eps"].shape == (3, 4, 8, 8)
    assert torch.equal(drawn["eps"], obj.draw(x, torch.Generator().manual_seed(0))["eps"])
    q = net.encode(x)
    x_hat = net.decode(q.mean + q.std * drawn["eps"])
    want = ((x - x_hat) ** 2).flatten(1).sum(1) + 0.01 * q.kl()
    assert torch.allclose(obj.loss(net, x, **drawn), want, rtol=1e-5)
    # with l2 and kl_weight = 2 s^2 the objective is 2 s^2 (-ELBO) up to a constant
    s = 0.1
    obj2 = AutoencoderObjective(recon="l2", kl_weight=2 * s**2, latent_shape=(4, 8, 8))
    const = 0.5 * x[0].numel() * math.log(2 * math.pi * s**2)
    assert torch.allclose(
        obj2.loss(net, x, **drawn), 2 * s**2 * (negative_elbo(net, x, drawn["eps"], decoder_std=s) - const), rtol=1e-4
    )
    ae = Autoencoder(**TINY)
    plain = AutoencoderObjective(recon="l1", kl_weight=0.0)
    assert plain.draw(x, torch.Generator()) == {}
    assert torch.allclose(plain.loss(ae, x), (x - ae(x)).abs().flatten(1).sum(1))
    with pytest.raises(ValueError, match="reconstruction loss"):
        reconstruction_loss(x, x, "l3")


def test_psnr_closed_form():
    x = torch.zeros(2, 3, 4, 4)
    assert torch.allclose(psnr(x, x + 0.2), torch.full((2,), 10 * math.log10(4 / 0.04), dtype=torch.float64))
    assert torch.allclose(gaussian_nll(x, x, 1.0), torch.full((2,), 24 * math.log(2 * math.pi)))


# --- diffusers parity -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(block_out_channels=(32, 64, 64), layers_per_block=1, latent_channels=4, norm_num_groups=32),
        dict(
            block_out_channels=(16, 32),
            layers_per_block=2,
            latent_channels=3,
            norm_num_groups=8,
            mid_block_add_attention=False,
            use_quant_conv=False,
            use_post_quant_conv=False,
        ),
    ],
)
def test_diffusers_autoencoder_kl_parity(kwargs, tmp_path):
    diffusers = pytest.importorskip("diffusers")
    levels = len(kwargs["block_out_channels"])
    torch.manual_seed(0)
    ref = diffusers.AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * levels,
        up_block_types=("UpDecoderBlock2D",) * levels,
        sample_size=32,
        **kwargs,
    ).eval()
    with torch.no_grad():
        for p in ref.parameters():
            p.add_(0.05 * torch.randn_like(p))  # move every weight (norms, biases) off its initial value
    ours = autoencoder_from_diffusers(ref.state_dict(), dict(ref.config)).eval()
    x = torch.rand(2, 3, 32, 32) * 2 - 1
    z = torch.randn(2, kwargs["latent_channels"], *(32 // 2 ** (levels - 1),) * 2)
    with torch.no_grad():
        want, q = ref.encode(x).latent_dist, ours.encode(x)
        assert torch.allclose(q.mean, want.mean, atol=1e-5) and torch.allclose(q.logvar, want.logvar, atol=1e-5)
        assert torch.allclose(ours.decode(z), ref.decode(z).sample, atol=1e-5)
    assert ours.config["scaling_factor"] == ref.config.scaling_factor
    # older checkpoints: 1x1-conv attention weights named query/key/value/proj_attn
    old_names = {".to_q.": ".query.", ".to_k.": ".key.", ".to_v.": ".value.", ".to_out.0.": ".proj_attn."}
    legacy = {}
    for k, v in ref.state_dict().items():
        for new, old in old_names.items():
            if new in k:
                k, v = k.replace(new, old), (v[:, :, None, None] if v.ndim == 2 else v)
        legacy[k] = v
    with torch.no_grad():
        assert torch.equal(autoencoder_from_diffusers(legacy, dict(ref.config)).decode(z), ours.decode(z))
    with pytest.raises(ValueError, match="do not fit its config"):
        autoencoder_from_diffusers({k: v for k, v in ref.state_dict().items() if "decoder" not in k}, dict(ref.config))
    ref.save_pretrained(tmp_path, safe_serialization=True)
    loaded = load_diffusers_vae(tmp_path)
    with torch.no_grad():
        assert torch.allclose(loaded.decode(z), ref.decode(z).sample, atol=1e-5)
    with pytest.raises(ValueError, match="config.json"):
        load_diffusers_vae(tmp_path / "nowhere")


# --- latent scaling -------------------------------------------------------------------------------------


@pytest.mark.parametrize("cls", [AutoencoderKL, Autoencoder])
def test_latent_scale_factor_makes_latents_unit_variance(cls):
    torch.manual_seed(0)
    net = cls(**TINY).eval()
    with torch.no_grad():
        net.quant_conv.weight[:4].mul_(20.0)  # latents (the VAE's means) far from unit variance
        if cls is AutoencoderKL:  # a sharp posterior (sigma = e^-3), as a trained first stage has
            net.quant_conv.weight[4:].zero_()
            net.quant_conv.bias[4:].fill_(-6.0)
    x = torch.rand(40, 3, 32, 32) * 2 - 1
    s = latent_scale_factor(net, x, batch_size=16, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        z = torch.cat(
            [
                encode_latents(net, c, sample=True, generator=g)
                for g in [torch.Generator().manual_seed(1)]
                for c in x.split(16)
            ]
        )
    assert abs(float((s * z).std()) - 1.0) < 1e-4 and s < 0.5  # a real rescaling
    with torch.no_grad():
        held_out = encode_latents(net, torch.rand(40, 3, 32, 32) * 2 - 1, sample=True, generator=torch.Generator())
    assert abs(float((s * held_out).std()) - 1.0) < 0.1


# --- config, build, training ---------------------------------------------------------------------------


def test_preset_config_round_trip_and_network():
    cfg = resolve_config("shapes-vae")
    assert Config.from_dict(json.loads(json.dumps(cfg.to_dict()))) == validate(cfg)
    net = build_network(cfg, (3, 32, 32))
    assert isinstance(net, AutoencoderKL) and net.latent_shape((3, 32, 32)) == (4, 8, 8)
    assert cfg.data.name == "shapes"


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["autoencoder.recon=l3"], "autoencoder.recon='l3'"),
        (["autoencoder.kl_weight=-1"], "autoencoder.kl_weight must be >= 0"),
        (["model.network=ae"], "set autoencoder.kl_weight=0"),
        (["data.name=toy2d:moons"], "is not images"),
        (["diffusion.learn_sigma=true", "diffusion.loss=hybrid"], "learn_sigma"),
        (["autoencoder.klweight=1"], "unknown config key 'autoencoder.klweight'"),
    ],
)
def test_bad_autoencoder_config_is_a_config_error(overrides, message):
    with pytest.raises(ConfigError, match=message):
        validate(resolve_config("shapes-vae", None, overrides))


def test_images_must_halve_enough_times():
    cfg = resolve_config(
        "shapes-vae",
        None,
        ["data.name=digits", "model.params.in_channels=1", "model.params.block_out_channels=[8,8,8,8,8]"],
    )
    with pytest.raises(ConfigError, match="do not halve 4 times"):
        build_network(cfg, (1, 8, 8))
    with pytest.raises(ConfigError, match="in_channels=3 but the data have 1"):
        build_network(resolve_config("shapes-vae", None, ["data.name=digits"]), (1, 8, 8))


@pytest.mark.parametrize("network, precision", [("vae", "fp32"), ("vae", "bf16"), ("ae", "fp32")])
def test_resume_equals_uninterrupted(tmp_path, network, precision):
    extra = [f"model.network={network}", f"train.precision={precision}"]
    if network == "ae":
        extra.append("autoencoder.kl_weight=0")
    assert_resume_equals_uninterrupted(lambda: resolve_config("shapes-vae", None, TINY_OVERRIDES + extra), tmp_path)
    # the pictures are originals over reconstructions: 64 tiles of 32x32 (8 rows of 8) in the PNG
    assert (tmp_path / "a" / "samples" / "step_0000006.png").is_file()


def test_cli_trains_reconstructs_and_refuses_to_sample(tmp_path, capsys):
    from kuosan.cli import main

    run = tmp_path / "vae"
    kuosan(
        "train",
        "--preset",
        "shapes-vae",
        "--steps",
        25,
        "--out",
        run,
        "--no-progress",
        *TINY_OVERRIDES,
        "train.lr=3e-3",
    )
    losses = [json.loads(line)["loss"] for line in (run / "log.jsonl").read_text().splitlines()]
    assert len(losses) == 25 and sum(losses[-5:]) / 5 < 0.8 * sum(losses[:5]) / 5
    cfg, net = load_autoencoder(run)
    assert not any(p.requires_grad for p in net.parameters()) and not net.training
    r = json.loads(kuosan("reconstruct", run, "--eval-n", 40, "-n", 16, "--out", tmp_path / "rec.png").stdout)
    assert r["n"] == 40 and 5 < r["psnr_db"] < 60 and r["kl_per_latent_dim"] > 0 and r["latent_scale_factor"] > 0
    assert (tmp_path / "rec.png").is_file()
    fails_cleanly(
        kuosan("sample", run, "--out", tmp_path / "s.png", check=False), "autoencoder run", "kuosan reconstruct"
    )
    capsys.readouterr()
    assert main(["info", str(run)]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["latent_shape"] == [4, 8, 8] and info["config"]["model"]["network"] == "vae"
    # the other bad requests, in-process (the same main() the subprocess runs)
    for argv, needle in [
        (["nll", str(run)], "autoencoder run"),
        (["reconstruct", str(run), "--split", "nope"], "shapes has no split 'nope'; it has train, val, test"),
        (["reconstruct", str(tmp_path / "missing")], "run directory not found"),
        (["reconstruct", str(run), "--out", "x.jpg"], "--out must end in .png"),
        (
            ["train", "--preset", "shapes-vae", "--steps", "1", "--out", str(tmp_path / "ae"), "model.network=ae"],
            "set autoencoder.kl_weight=0",
        ),
    ]:
        assert main(argv) == 2, argv
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and needle in err[0], err


def test_load_autoencoder_refuses_a_diffusion_run(tmp_path):
    cfg = resolve_config(
        "digits",
        None,
        ["model.params.base_channels=8", "model.params.num_res_blocks=1", "train.batch_size=8", "sample.steps=2"],
    )
    build_trainer(cfg, tmp_path, progress=False).fit(steps=1)
    with pytest.raises(CheckpointError, match="not an autoencoder run"):
        load_autoencoder(tmp_path)
