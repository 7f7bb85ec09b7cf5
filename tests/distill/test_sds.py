"""Score distillation against exact denoisers: the gradient in closed form for a Gaussian, and SDS
on an image (g = identity) converging to a mode of the data distribution: the mean of one Gaussian,
the nearest component mean of a well-separated mixture."""

import math

import pytest
import torch

from kuosan.diffusion import GaussianMixtureDenoiser
from kuosan.diffusion.schedules import DiscreteSchedule
from kuosan.distill.sds import ScoreDistillation, kl_form_change, sds_gradient, sds_surrogate, sds_weight

F64 = torch.float64
SCH = DiscreteSchedule.from_name("linear", 1000)


def gaussian(mean, var) -> GaussianMixtureDenoiser:
    mean, var = torch.as_tensor(mean, dtype=F64), torch.as_tensor(var, dtype=F64)
    return GaussianMixtureDenoiser(torch.ones(1, dtype=F64), mean[None], torch.diag(var)[None])


def test_sds_gradient_equals_the_closed_form_for_a_gaussian():
    """For data N(m, diag(v)), D(y, s) = m + v / (v + s^2) (y - m), so eps_hat - eps =
    s / (v + s^2) (x - m) - v / (v + s^2) eps exactly."""
    m, v = torch.tensor([0.5, -1.0, 2.0], dtype=F64), torch.tensor([0.3, 1.0, 0.05], dtype=F64)
    oracle = gaussian(m, v)
    g = torch.Generator().manual_seed(0)
    x, eps = torch.randn(5, 3, generator=g, dtype=F64), torch.randn(5, 3, generator=g, dtype=F64)
    sigma = torch.tensor([0.01, 0.3, 1.0, 5.0, 80.0], dtype=F64)
    w = sds_weight(1 / (1 + sigma**2), "1-abar")
    grad, residual = sds_gradient(oracle, x, sigma, eps, weight=w)
    s = sigma[:, None]
    closed = s / (v + s**2) * (x - m) - v / (v + s**2) * eps
    torch.testing.assert_close(residual, closed, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(grad, w[:, None] * closed, rtol=1e-10, atol=1e-12)
    # the surrogate's gradient is the SDS gradient
    xr = x.clone().requires_grad_(True)
    sds_surrogate(xr, grad).backward()
    torch.testing.assert_close(xr.grad, grad)


def _optimise(oracle, x0, steps=3000, lr=0.2, seed=0, average_from=0.5, **kw):
    """SGD on x with the SDS gradient, returning the average of the iterates from ``average_from``
    of the run on (Polyak-Ruppert). The SDS gradient is its expectation plus the noise
    w v / (v + s^2) eps, which does not vanish at the mode (at small s it is about eps itself), so
    single iterates jitter at the step size; the averaged iterate converges at 1/sqrt(steps)."""
    sds = ScoreDistillation(oracle, SCH, **kw)
    x = x0.clone().requires_grad_(True)
    opt = torch.optim.SGD([x], lr=lr)
    g, avg, k = torch.Generator().manual_seed(seed), torch.zeros_like(x0), 0
    for i in range(steps):
        opt.zero_grad()
        loss, _ = sds.step(x, i, steps, g)
        loss.backward()
        opt.step()
        if i >= int(steps * average_from):
            k += 1
            avg += (x.detach() - avg) / k
    return avg


@pytest.mark.parametrize("weighting", ["1-abar", "sigma", "uniform"])
def test_sds_on_an_image_reaches_the_gaussian_mean(weighting):
    m = torch.tensor([0.5, -1.0, 2.0, 0.0], dtype=F64)
    oracle = gaussian(m, torch.tensor([0.05, 0.2, 0.02, 0.1], dtype=F64))
    starts = torch.randn(32, 4, generator=torch.Generator().manual_seed(1), dtype=F64) * 2
    x = _optimise(oracle, starts, steps=4000 if weighting == "uniform" else 3000, weighting=weighting)
    assert (x - m).abs().max() < 0.05, (x - m).abs().max()


def test_sds_on_an_image_reaches_a_mixture_mode_from_each_start():
    """A well-separated two-component mixture: every start ends on one component's mean (mode
    seeking: SDS does not sample, it climbs), starts on either side reach both modes. t_max is
    annealed to 0.2: at high noise the posterior blurs the components and pulls towards the mixture's
    mean, a bias that low noise levels at the end remove."""
    means = torch.tensor([[-3.0, 1.0], [3.0, -1.0]], dtype=F64)
    covs = torch.stack([torch.diag(torch.tensor([0.05, 0.1], dtype=F64))] * 2)
    oracle = GaussianMixtureDenoiser(torch.tensor([0.5, 0.5], dtype=F64), means, covs)
    starts = torch.cat([torch.full((8, 2), -2.0, dtype=F64), torch.full((8, 2), 2.0, dtype=F64)])
    starts = starts + 0.3 * torch.randn(16, 2, generator=torch.Generator().manual_seed(2), dtype=F64)
    x = _optimise(oracle, starts, t_schedule="anneal", t_max_end=0.2, average_from=0.75)
    dist = (x[:, None] - means[None]).abs().amax(-1)  # (start, component): the largest coordinate gap
    reached = dist.argmin(1)
    assert dist.amin(1).max() < 0.05, dist.amin(1)
    assert set(reached.tolist()) == {0, 1}


def test_t_ranges_annealing_and_bad_options():
    sds = ScoreDistillation(gaussian([0.0], [1.0]), SCH, t_schedule="anneal", t_max_end=0.5)
    assert sds.t_range(0, 100) == (20, 980) and sds.t_range(99, 100) == (20, 500)
    t, _ = sds.draw(torch.zeros(4000, 1, dtype=F64), 0, 1, torch.Generator().manual_seed(0))
    assert t.min() >= 20 and t.max() <= 980 and 400 < t.float().mean() < 600
    for bad in (dict(t_min=0.5, t_max=0.4), dict(weighting="nope"), dict(t_schedule="x"),
                dict(t_schedule="anneal", t_max_end=0.01)):  # fmt: skip
        with pytest.raises(ValueError):
            ScoreDistillation(gaussian([0.0], [1.0]), SCH, **bad)


def test_the_kl_form_falls_as_the_image_nears_the_mode():
    """The running line integral of the SDS gradient (the weighted KL form up to its start) goes down
    along the optimisation of a far start, and flattens near the mode."""
    oracle = gaussian([1.0, 1.0], [0.2, 0.2])
    sds = ScoreDistillation(oracle, SCH)
    x = torch.full((16, 2), -2.0, dtype=F64)
    g, grads, xs = torch.Generator().manual_seed(3), [], [x.clone()]
    for i in range(300):
        _, info = sds.step(x, i, 300, g)
        x = x - 0.05 * info["grad"]
        grads.append(info["grad"])
        xs.append(x.clone())
    kl = kl_form_change(grads, xs)
    assert kl[-1] < kl[50] < kl[5] < 0
    assert abs(kl[-1] - kl[-50]) < 0.2 * abs(kl[50] - kl[5]) + 1e-9
    assert math.isfinite(kl[-1])


def test_cli_sds_through_a_latent_model_and_bad_input(tmp_path):
    """`kuosan sds` on a Stable Diffusion folder (latent: pixels -> frozen VAE encoder -> SDS): the
    images move from their grey start, stay in [-1, 1], the run is reproducible from its seed, and a
    model without text or an impossible option is one line."""
    pytest.importorskip("diffusers")
    import json

    import numpy as np

    from cli_helpers import fails_cleanly, kuosan
    from kuosan.interop.tiny import tiny_stable_diffusion

    sd = f"diffusers:{tiny_stable_diffusion(tmp_path / 'sd')}"
    outs = [tmp_path / "a.npy", tmp_path / "b.npy"]
    for out in outs:
        report = json.loads(kuosan("sds", sd, "a red circle", "-n", 2, "--steps", 6, "--guidance", 7.5,
                                   "--out", out).stdout)  # fmt: skip
    x = np.load(outs[0])
    assert x.shape == (2, 3, 32, 32) and np.abs(x).max() <= 1 and np.abs(x).mean() > 0.05
    assert np.array_equal(x, np.load(outs[1])) and math.isfinite(report["kl_form_change"])
    run = tmp_path / "digits"
    kuosan("train", "--preset", "digits", "--steps", 1, "--out", run, "--no-progress",
           "model.params.base_channels=32", "model.params.num_res_blocks=1", "train.batch_size=8")  # fmt: skip
    fails_cleanly(kuosan("sds", run, "a red circle", "--out", tmp_path / "x.png", check=False), "no text conditioning")
    fails_cleanly(kuosan("sds", sd, "red", "--t-min", 0.9, "--t-max", 0.5, "--out", tmp_path / "x.png", check=False),
                  "t_min")  # fmt: skip
    fails_cleanly(kuosan("sds", sd, "red", "--steps", 0, "--out", tmp_path / "x.png", check=False), "steps")
    assert not (tmp_path / "x.png").exists()


def test_the_decoded_target_is_sds_in_image_space():
    """With the identity as decoder the image-space form equals the SDS gradient itself; with a
    linear decoder A it is w (x - A x0_hat) / s."""
    from kuosan.distill.sds import decoded_sds_gradient

    mean, var = torch.tensor([0.5, -1.0, 2.0], dtype=torch.float64), torch.tensor([0.3, 1.0, 0.1], dtype=torch.float64)
    den = GaussianMixtureDenoiser(torch.ones(1, dtype=torch.float64), mean[None], torch.diag(var)[None])
    sds = ScoreDistillation(den, SCH)
    x = torch.randn(4, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    _, info = sds.step(x, 0, 1, torch.Generator().manual_seed(1))
    torch.testing.assert_close(decoded_sds_gradient(x, info["x0_hat"], info["sigma"], info["weight"]), info["grad"])
    A = torch.tensor([[2.0, 0.0, 0.0], [0.0, 1.0, 1.0], [0.0, 0.0, -1.0]], dtype=torch.float64)
    got = decoded_sds_gradient(x @ A.T, info["x0_hat"] @ A.T, info["sigma"], info["weight"])
    torch.testing.assert_close(got, info["grad"] @ A.T)
