"""The picture commands as a user runs them: `kuosan plot`, `kuosan sample --trajectory`, `kuosan show
forward|score|langevin`, and TensorBoard logging; each picture decodes to the size it should have and
is not blank, and bad requests are one-line errors."""

import json

import numpy as np
import pytest
import torch
from PIL import Image

from cli_helpers import fails_cleanly, kuosan
from kuosan import app
from kuosan.app.pictures import mixture_weight_experiment, toy_oracle
from train_helpers import TINY_DIGITS


def _picture(path, size=None) -> np.ndarray:
    """The PNG at ``path`` as an RGB array, checked not blank: many pixels away from the background
    and more than a few colours."""
    with Image.open(path) as img:
        img.load()
        if size is not None:
            assert img.size == tuple(size)
        arr = np.asarray(img.convert("RGB"))
    assert (arr < 200).any(axis=-1).mean() > 0.01, "the picture is (almost) blank"
    assert len(np.unique(arr.reshape(-1, 3), axis=0)) > 8
    return arr


@pytest.fixture(scope="module")
def digits_run(tmp_path_factory):
    run = tmp_path_factory.mktemp("runs") / "digits"
    kuosan(
        "train", "--preset", "digits", "--steps", 4, "--out", run, "--no-progress", *TINY_DIGITS, "train.log_every=1"
    )
    return run


@pytest.fixture(scope="module")
def toy_run(tmp_path_factory):
    run = tmp_path_factory.mktemp("runs") / "toy"
    kuosan("train", "--preset", "toy2d", "--steps", 3, "--out", run, "--no-progress", "data.name=toy2d:8gaussians")
    return run


def test_plot_draws_the_training_log_and_logs_the_gradient_norm(digits_run, tmp_path):
    records = [json.loads(line) for line in (digits_run / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [1, 2, 3, 4]
    assert all(r["grad_norm"] > 0 for r in records)  # the global norm before the clip
    r = kuosan("plot", digits_run, "--out", tmp_path / "curves.png")
    info = json.loads(r.stdout)
    arr = _picture(tmp_path / "curves.png", info["size"])
    assert arr.shape[1] > 3 * arr.shape[0]  # four panels side by side
    kuosan("plot", digits_run)  # the default: RUN/training.png
    _picture(digits_run / "training.png")


def test_the_smoothed_loss_is_tensorboards_and_a_resumed_log_reads_in_step_order(tmp_path):
    from kuosan import plots
    from kuosan.app.pictures import read_training_log

    w = 0.9
    np.testing.assert_allclose(plots.smooth([2.0, 4.0], w), [2.0, (w * 0.2 + 0.4) / (1 - w**2)])  # debiased
    out = plots.smooth([1.0, float("nan"), 3.0], w)  # a NaN is drawn as it is and skipped by the average
    assert out[0] == 1.0 and np.isnan(out[1]) and out[2] == pytest.approx((w * 0.1 + 0.3) / (1 - w**2))
    (tmp_path / "log.jsonl").write_text(
        "".join(json.dumps({"step": s, "loss": loss}) + "\n" for s, loss in [(1, 9), (2, 8), (3, 7), (2, 6), (3, 5)])
        + '{"step": 4, "lo'  # a line cut short
    )  # a run that logged step 3 and resumed from the checkpoint of step 1
    assert [(r["step"], r["loss"]) for r in read_training_log(tmp_path)] == [(1, 9), (2, 6), (3, 5)]


def test_plot_refuses_a_folder_without_a_log(tmp_path):
    (tmp_path / "empty").mkdir()
    fails_cleanly(kuosan("plot", tmp_path / "empty", check=False), "no log.jsonl")
    fails_cleanly(kuosan("plot", tmp_path / "absent", check=False), "not found")
    (tmp_path / "empty" / "log.jsonl").write_text("not json\n")
    fails_cleanly(kuosan("plot", tmp_path / "empty", check=False), "no training records")


def test_sample_trajectory_as_a_strip_and_an_animation(digits_run, tmp_path):
    args = ("sample", digits_run, "-n", 4, "--steps", 5, "--sampler", "ddim", "--out", tmp_path / "s.npy")
    kuosan(*args, "--trajectory", tmp_path / "t.png")
    strip = _picture(tmp_path / "t.png")
    assert strip.shape[1] > 2.5 * strip.shape[0]  # 6 columns (5 steps and the sample) over 2 rows
    kuosan(*args, "--trajectory", tmp_path / "t.gif")
    with Image.open(tmp_path / "t.gif") as gif:
        assert gif.n_frames == 6  # a frame a step, and the sample
        gif.seek(5)
        _picture_of(gif.convert("RGB"))
    fails_cleanly(kuosan(*args, "--trajectory", tmp_path / "t.mp4", check=False), "--trajectory must end in")
    same = tmp_path / "s.png"
    fails_cleanly(kuosan("sample", digits_run, "--out", same, "--trajectory", same, check=False), "the same file")


def _picture_of(img) -> None:
    arr = np.asarray(img)
    assert (arr < 200).any(axis=-1).mean() > 0.01


def test_the_recorded_trajectory_is_the_samplers_and_leaves_the_samples_alone(digits_run):
    """Recording changes nothing drawn; DDIM's last x0_hat is the sample; x_t is kept in VP scaling."""
    plain = app.sample(digits_run, 3, steps=4, sampler="ddim", seed=2)
    trajectory = app.trajectory_for(digits_run)
    seen = app.sample(digits_run, 3, steps=4, sampler="ddim", seed=2, callback=trajectory)
    assert torch.equal(plain, seen)
    assert len(trajectory.xs) == 4 and trajectory.calls == 4
    torch.testing.assert_close(trajectory.x0s[-1], seen)  # the last step lands on x0_hat (eta 0, sigma_next 0)
    first_std = float(trajectory.xs[0].std())
    assert 0.8 < first_std < 1.2  # x_T ~ N(0, I): VE x over sqrt(1 + sigma^2)
    trajectory.finish(seen)
    xs, x0s, sigmas = trajectory.frames()
    assert len(xs) == 5 and sigmas[-1] == 0 and torch.equal(xs[-1], seen)
    first_two = app.trajectory_for(digits_run, keep=2)  # a large batch: only the first samples are kept
    app.sample(digits_run, 3, steps=4, sampler="ddim", seed=2, callback=first_two)
    first_two.finish(seen)
    assert all(x.shape[0] == 2 for x in first_two.xs + first_two.x0s)
    torch.testing.assert_close(first_two.x0s[-2], seen[:2])


def test_a_2d_trajectory_keeps_every_point(toy_run):
    trajectory = app.trajectory_for(toy_run, keep=2)  # keep counts images; 2-D points are one scatter
    x = app.sample(toy_run, 50, steps=3, sampler="ddim", seed=0, callback=trajectory)
    trajectory.finish(x)
    assert all(p.shape == (50, 2) for p in trajectory.xs)


def test_show_forward_draws_each_schedule_asked(tmp_path):
    both = json.loads(kuosan("show", "forward", "--out", tmp_path / "f.png").stdout)["size"]
    one = json.loads(kuosan("show", "forward", "--schedule", "cosine", "--out", tmp_path / "c.png").stdout)["size"]
    _picture(tmp_path / "f.png", both)
    _picture(tmp_path / "c.png", one)
    assert one[0] == both[0] and one[1] < both[1]  # one strip fewer, the same curves beneath
    fails_cleanly(kuosan("show", "forward", "--dataset", "toy2d:moons", "--out", tmp_path / "m.png", check=False))
    fails_cleanly(kuosan("show", "forward", "--dataset", "nope", "--out", tmp_path / "m.png", check=False), "nope")


def test_show_score_against_the_exact_mixture(toy_run, tmp_path, digits_run):
    r = kuosan("show", "score", toy_run, "--sigma", 0.3, 1.0, "--points", 9, "--out", tmp_path / "s.png")
    report = json.loads(r.stdout)
    _picture(tmp_path / "s.png", report["size"])
    assert report["reference"] == "exact" and len(report["relative_error"]) == 2
    line = fails_cleanly(kuosan("show", "score", digits_run, "--out", tmp_path / "d.png", check=False))
    assert "not a 2-D run" in line


def test_the_8_gaussians_oracle_score_is_the_gradient_of_its_log_density():
    _, oracle = toy_oracle("8gaussians", torch.zeros(1, 2))
    x = torch.randn(16, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64).requires_grad_(True)
    for sigma in (0.1, 0.7):
        grad = torch.autograd.grad(oracle.log_prob(x, sigma).sum(), x)[0]
        torch.testing.assert_close(oracle.score(x.detach(), sigma), grad)
    data = torch.tensor([[1.0, 0.0], [-1.0, 0.0]])
    _, empirical = toy_oracle("moons", data)  # point masses: D(x, sigma) -> the nearest point as sigma -> 0
    torch.testing.assert_close(empirical(torch.tensor([[0.9, 0.3]]), 0.01).float(), data[:1])


def test_langevin_keeps_the_starting_split_and_annealing_recovers_the_weights(tmp_path):
    """Seed 003 (Song & Ermon 2019, Fig. 3): with the exact score, Langevin chains from a uniform start
    stay split about 1:1 between the modes of a 1:4 mixture; annealed Langevin finds 1:4."""
    _, paths, share = mixture_weight_experiment(n=600, steps=300, seed=0)
    assert abs(share["exact samples"] - 0.8) < 0.05
    assert abs(share["annealed Langevin"] - 0.8) < 0.06
    assert share["Langevin"] < 0.65
    assert paths["Langevin"].shape[0] == 3 and paths["Langevin"].shape[-1] == 2
    r = kuosan("show", "langevin", "-n", 200, "--steps", 100, "--out", tmp_path / "l.png")
    _picture(tmp_path / "l.png", json.loads(r.stdout)["size"])


def test_tensorboard_events_hold_the_logged_scalars(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run = tmp_path / "tb"
    kuosan(
        "train", "--preset", "digits", "--steps", 3, "--out", run, "--no-progress", *TINY_DIGITS,
        "train.log_every=1", "train.tensorboard=true",
    )  # fmt: skip
    events = EventAccumulator(str(run / "tensorboard"))
    events.Reload()
    logged = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    for key in ("loss", "lr", "grad_norm"):
        scalars = events.Scalars(f"train/{key}")
        assert [s.step for s in scalars] == [1, 2, 3]
        np.testing.assert_allclose([s.value for s in scalars], [r[key] for r in logged], rtol=1e-6)
    assert events.Tags()["images"] == ["samples"]  # the final sample grid
