"""The pictures of ``kuosan plot``, ``kuosan show`` and ``kuosan sample --trajectory``: what is computed
for them (a run's log, a sampler's steps, the forward process, score fields, Langevin chains), drawn
by :mod:`kuosan.plots`."""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from pathlib import Path

import torch
from PIL import Image

from kuosan import plots
from kuosan.build import prior_for
from kuosan.config import Config, ConfigError
from kuosan.data import DataError
from kuosan.data.registry import load_split
from kuosan.diffusion.oracle import GaussianMixtureDenoiser
from kuosan.diffusion.schedules import abar_from_betas, make_betas
from kuosan.interop import diffusers as hf
from kuosan.runs import Run
from kuosan.samplers.langevin import langevin_dynamics, sample_annealed_langevin
from kuosan.train import checkpoint as ckpt

TRAJECTORY_SUFFIXES = (".gif", ".png")
TRAJECTORY_KEEP = 16  # samples a trajectory records (and draws): the first of the batch


# --- training curves ------------------------------------------------------------------------------


def read_training_log(run_dir: str | Path) -> list[dict]:
    """The records of a run's log.jsonl (a line cut short by a killed run is left out; where a resumed
    run logged a step again, what it logged from there replaces the records of the run it resumed,
    so the steps increase); ConfigError (one line) for a missing folder, a folder without log.jsonl
    or a log without records."""
    run = Path(run_dir)
    if not run.is_dir():
        raise ConfigError(f"run directory not found: {run}")
    path = run / "log.jsonl"
    if not path.is_file():
        raise ConfigError(f"{run} has no log.jsonl: it is not a training run, or it stopped before its first log line")
    records = []
    for line in path.read_text(errors="replace").splitlines():
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(rec, dict) and isinstance(rec.get("step"), int) and isinstance(rec.get("loss"), (int, float)):
            while records and records[-1]["step"] >= rec["step"]:  # logged before the checkpoint it resumed
                records.pop()
            records.append(rec)
    if not records:
        raise ConfigError(f"{path} holds no training records (lines with step and loss)")
    return records


def plot_training(run_dir: str | Path) -> Image.Image:
    """Loss (and its smoothed curve), learning rate, gradient norm and steps/s of a run, from log.jsonl."""
    records = read_training_log(run_dir)
    return plots.training_curves(records, title=f"{Path(run_dir).name}: {records[-1]['step']:,} steps")


# --- the denoising trajectory ---------------------------------------------------------------------------


class Trajectory:
    """A sampler callback that keeps x_t and x0_hat of the first ``keep`` images (all points of a 2-D
    run) of the first batch at every step, for pictures.

    x_t is kept in VP scaling, x_t = x / sqrt(1 + sigma^2) of the Denoiser's VE-scaled x (the noisy
    image the forward process makes), or as it is for a VE model (``vp=False``). ``decode`` maps
    latents to images (a latent model). ``on_step(calls)`` is told of every step the sampler
    reports, over all batches (progress)."""

    def __init__(
        self,
        *,
        vp: bool = True,
        decode: Callable | None = None,
        on_step: Callable | None = None,
        keep: int = TRAJECTORY_KEEP,
    ):
        self.vp, self.decode, self.on_step, self.keep = vp, decode, on_step, keep
        self.xs: list[torch.Tensor] = []
        self.x0s: list[torch.Tensor | None] = []
        self.sigmas: list[float] = []
        self.calls, self._last_i, self._closed = 0, -1, False

    def __call__(self, state: dict) -> None:
        self.calls += 1
        if self.on_step is not None:
            self.on_step(self.calls)
        if self._closed or state["i"] <= self._last_i:  # the next batch begins: the first one is kept
            self._closed = True
            return
        self._last_i = state["i"]
        sigma = float(torch.as_tensor(state.get("sigma", 0.0)).reshape(-1)[0])
        keep = self.keep if state["x"].ndim > 2 else None  # 2-D points: the whole batch is one scatter
        x = state["x"][:keep].detach().float().cpu().clone()  # the sampler may go on in place
        self.xs.append(x / math.sqrt(1 + sigma**2) if self.vp else x)
        x0 = state.get("x0_hat")
        self.x0s.append(None if x0 is None else x0[:keep].detach().float().cpu().clone())
        self.sigmas.append(sigma)

    def finish(self, samples: torch.Tensor) -> None:
        """The sample itself as the last frame (sigma = 0)."""
        batch = self.xs[0].shape[0] if self.xs else samples.shape[0]
        self.xs.append(samples[:batch].float())
        self.x0s.append(samples[:batch].float())
        self.sigmas.append(0.0)

    def frames(self) -> tuple[list[torch.Tensor], list[torch.Tensor | None], list[float]]:
        """(x_t, x0_hat, sigma) of every step, decoded to images, clamped to [-1, 1] where they are images."""

        def show(x, last):
            if x is None:
                return None
            if self.decode is not None and not last:
                x = self.decode(x)
            return x.clamp(-1, 1) if x.ndim == 4 else x

        n = len(self.xs)
        return (
            [show(x, i == n - 1) for i, x in enumerate(self.xs)],
            [show(x, i == n - 1) for i, x in enumerate(self.x0s)],
            list(self.sigmas),
        )


def trajectory_for(
    run_dir, *, decode: Callable | None = None, on_step: Callable | None = None, keep: int = TRAJECTORY_KEEP
) -> Trajectory:
    """A :class:`Trajectory` with the run's scaling (VP unless the run is a VE / NCSN model), read
    from its config (the weights are not loaded)."""
    vp = True
    if not hf.is_diffusers_spec(run_dir) and not hasattr(run_dir, "denoiser"):
        vp = prior_for(Config.from_dict(ckpt.read_config(run_dir))) == "vp"
    return Trajectory(vp=vp, decode=decode, on_step=on_step, keep=keep)


def trajectory_picture(trajectory: Trajectory, kind: str = "png") -> Image.Image | list[Image.Image]:
    """The strip (kind "png") or the animation frames (kind "gif") of a recorded trajectory."""
    xs, x0s, sigmas = trajectory.frames()
    if not xs:
        raise ConfigError("the sampler reported no steps to draw")
    if kind == "gif":
        return plots.trajectory_frames(xs, x0s, sigmas)
    return plots.trajectory_strip(xs, x0s, sigmas)


def save_trajectory(trajectory: Trajectory, path: str | Path) -> Path:
    """FILE.gif (an animation, a frame a step) or FILE.png (a strip of x_t over x0_hat)."""
    path = Path(path)
    if path.suffix not in TRAJECTORY_SUFFIXES:
        raise ConfigError(f"--trajectory must end in .gif or .png, got {path.name}")
    if path.suffix == ".gif":
        plots.save_animation(trajectory_picture(trajectory, "gif"), path)
    else:
        trajectory_picture(trajectory, "png").save(path)
    return path


# --- the forward process ------------------------------------------------------------------------------

FORWARD_SCHEDULES = ("linear", "cosine")


def forward_picture(
    dataset: str = "digits", *, show=("linear", "cosine"), n: int = 8, seed: int = 0, T: int = 1000, columns: int = 9
) -> Image.Image:
    """q(x_t | x_0) on ``n`` images of ``dataset``: x_t at ``columns`` timesteps for each schedule of
    ``show`` (the same x_0 and eps for all), over abar(t) and log SNR(t) of the linear (Ho et al.) and
    cosine (Nichol & Dhariwal) schedules (seed 004's comparison)."""
    for name in show:
        if name not in FORWARD_SCHEDULES:
            raise ConfigError(f"schedule {name!r} is not one of {', '.join(FORWARD_SCHEDULES)}")
    if n < 1 or columns < 2:
        raise ConfigError(f"-n must be at least 1 and --columns at least 2, got {n} and {columns}")
    try:
        x = load_split(dataset, "train")
    except DataError as e:
        raise ConfigError(str(e)) from None
    if not isinstance(x, torch.Tensor) or x.ndim != 4:
        raise ConfigError(f"data set {dataset} is not a set of images; the forward process is drawn on images")
    g = torch.Generator().manual_seed(seed)
    x0 = x[torch.randperm(x.shape[0], generator=g)[:n]].float()
    eps = torch.randn(x0.shape, generator=g)
    abars = {name: abar_from_betas(make_betas(name, T)) for name in FORWARD_SCHEDULES}
    return plots.forward_process(x0, eps, abars, show=list(show), columns=columns)


# --- score fields and Langevin dynamics ---------------------------------------------------------------


def toy_oracle(name: str, data: torch.Tensor) -> tuple[str, GaussianMixtureDenoiser]:
    """(label, exact Denoiser) of a 2-D data set: the 8 Gaussians' own mixture, else the empirical
    distribution of ``data`` (a mixture of point masses: the ideal denoiser of that sample)."""
    from kuosan.data.toy2d import EIGHT_GAUSSIANS_RADIUS, EIGHT_GAUSSIANS_STD

    if name == "8gaussians":
        angle = torch.arange(8, dtype=torch.float64) * (2 * math.pi / 8)
        means = EIGHT_GAUSSIANS_RADIUS * torch.stack([angle.cos(), angle.sin()], dim=1)
        return "exact", GaussianMixtureDenoiser(torch.ones(8), means, torch.full((8, 2), EIGHT_GAUSSIANS_STD**2))
    return f"data ({data.shape[0]:,} points)", GaussianMixtureDenoiser(
        torch.ones(data.shape[0]), data.double(), torch.zeros(data.shape[0], 2)
    )


@torch.no_grad()
def score_picture(
    run_dir: str | Path, *, sigmas=(0.05, 0.2, 0.5, 1.0), points: int = 21, seed: int = 0, weights: str = "ema"
) -> tuple[Image.Image, dict]:
    """The learned score s(x, sigma) = (D(x, sigma) - x) / sigma^2 of a 2-D run on a grid of
    ``points`` x ``points`` over the data, beside the exact one (the 8 Gaussians' mixture; for other
    toy data the empirical distribution of 2,000 of its points), with the relative error
    mean |s_theta - s| / mean |s| over the grid at each sigma, returned as a report."""
    if hf.is_diffusers_spec(run_dir):
        raise ConfigError("kuosan show score draws a 2-D run's score; a diffusers folder holds an image model")
    run = Run.open(run_dir, weights=weights)
    shape = tuple(run.network.data_shape)
    name = run.config.data.name
    if shape != (2,) or not name.startswith("toy2d:"):
        raise ConfigError(
            f"{run_dir} is not a 2-D run (data {name}, shape {shape}): kuosan show score needs a toy2d run "
            "(presets toy2d, toy2d-ncsn)"
        )
    if not sigmas or any(not (s > 0 and math.isfinite(s)) for s in sigmas):
        raise ConfigError(f"--sigma levels must be positive numbers, got {list(sigmas)}")
    if points < 2:
        raise ConfigError(f"--points must be at least 2, got {points}")
    from kuosan.data.toy2d import sample_toy2d

    data = sample_toy2d(name.partition(":")[2], 2000, generator=torch.Generator().manual_seed(seed))
    label, oracle = toy_oracle(name.partition(":")[2], data)
    extent = float(data.abs().max()) * 1.15
    axis = torch.linspace(-extent, extent, points)
    grid = torch.stack(torch.meshgrid(axis, axis, indexing="xy"), dim=-1).reshape(-1, 2)
    den = run.denoiser(clip=False)
    learned, exact, errors = [], [], []
    for s in sigmas:
        sig = torch.full((grid.shape[0],), float(s))
        a = (den(grid, sig).float() - grid) / s**2
        b = oracle.score(grid.double(), float(s)).float()
        learned.append(a)
        exact.append(b)
        errors.append(float((a - b).norm(dim=1).mean() / b.norm(dim=1).mean()))
    picture = plots.score_fields(
        grid,
        {"learned": learned, label: exact},
        list(sigmas),
        data=data,
        extent=extent,
        notes={"learned": [f"rel. error {e:.3f}" for e in errors]},
    )
    report = {"run": str(run_dir), "sigmas": list(sigmas), "reference": label, "relative_error": errors}
    return picture, report


# Song & Ermon (2019), Figure 3 / seed 003: p = 1/5 N((-5, -5), I) + 4/5 N((5, 5), I)
MIXTURE = {"weights": (0.2, 0.8), "means": ((-5.0, -5.0), (5.0, 5.0))}


def mixture_weight_experiment(
    *, n: int = 1280, seed: int = 0, steps: int = 1000, step_size: float = 0.1, chains: int = 3
) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor], dict]:
    """Seed 003's experiment with the exact score of p = 1/5 N((-5,-5), I) + 4/5 N((5,5), I): chains
    started uniformly on [-8, 8]^2 under Langevin dynamics (``steps`` steps of ``step_size``) keep the
    start's 1:1 split between the modes, annealed Langevin (10 levels from sigma 20 to 1, 100 steps
    each, eps = ``step_size``; Song & Ermon's setting) recovers 1:4. Returns (points by method, the
    paths of the first ``chains`` chains, the share of each method's points in the heavier mode)."""
    if n < 1 or steps < 1 or not step_size > 0:
        raise ConfigError(
            f"-n and --steps must be at least 1 and the step size positive, got {n}, {steps}, {step_size}"
        )
    oracle = GaussianMixtureDenoiser(torch.tensor(MIXTURE["weights"]), torch.tensor(MIXTURE["means"]), torch.ones(2, 2))
    g = torch.Generator().manual_seed(seed)
    exact = oracle.sample(n, generator=g)
    start = torch.rand(n, 2, generator=g, dtype=torch.float64) * 16 - 8

    def score(x):
        with torch.enable_grad():
            x = x.detach().requires_grad_(True)
            return torch.autograd.grad(oracle.log_prob(x).sum(), x)[0]

    paths = {"Langevin": [], "annealed Langevin": []}
    lang = langevin_dynamics(
        score, start.clone(), step_size=step_size, n_steps=steps, generator=g,
        callback=lambda d: paths["Langevin"].append(d["x"][:chains].clone()) if d["i"] % 10 == 0 else None,
    )  # fmt: skip
    sigmas = torch.cat([torch.logspace(math.log10(20.0), 0.0, 10, dtype=torch.float64), torch.zeros(1)])
    annealed = sample_annealed_langevin(
        oracle, start.clone(), sigmas, langevin_steps=100, step_lr=step_size, final_denoise=False, generator=g,
        callback=lambda d: paths["annealed Langevin"].append(d["x"][:chains].clone()),
    )  # fmt: skip
    points = {"exact samples": exact, "Langevin": lang, "annealed Langevin": annealed}
    heavy = {name: float((p.sum(dim=1) > 0).double().mean()) for name, p in points.items()}
    traced = {name: torch.stack(v + [points[name][:chains]], dim=1) for name, v in paths.items()}
    return points, traced, heavy


def langevin_picture(**kwargs) -> tuple[Image.Image, dict]:
    """The picture of :func:`mixture_weight_experiment` and its report."""
    points, paths, heavy = mixture_weight_experiment(**kwargs)
    picture = plots.langevin_panels(
        points,
        paths=paths,
        notes={name: f"share at (5, 5): {share:.2f} (true 0.80)" for name, share in heavy.items()},
        title="p = 1/5 N((-5,-5), I) + 4/5 N((5,5), I), exact score",
    )
    return picture, {"share_at_heavier_mode": heavy, "true_share": MIXTURE["weights"][1]}


__all__ = [
    "FORWARD_SCHEDULES",
    "TRAJECTORY_SUFFIXES",
    "Trajectory",
    "forward_picture",
    "langevin_picture",
    "mixture_weight_experiment",
    "plot_training",
    "read_training_log",
    "save_trajectory",
    "score_picture",
    "toy_oracle",
    "trajectory_for",
    "trajectory_picture",
]
