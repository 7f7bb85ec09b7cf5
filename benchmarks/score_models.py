"""Score-based models, three questions (JSON lines out, one per measurement):

1. ``mixture``: seed 003's experiment (Song & Ermon 2019, Fig. 3) with the exact score. Data
   0.8 N((5, 5), I) + 0.2 N((-5, -5), I); 10,000 chains from uniform starts on [-8, 8]^2. Plain
   Langevin dynamics (eps = 0.1, 1000 steps) against annealed Langevin dynamics (NCSN's setting:
   10 levels 20 -> 1, eps = 0.1, T = 100; and 20 levels): the share of samples at (5, 5).
2. ``fisher``: on a 2-D Gaussian mixture (known density) noised with sigma = 0.1, an MLP score
   model s(x) is trained by DSM, SSM (Rademacher and Gaussian projections), SSM-VR and exact-trace
   score matching for the same number of steps; reported: the Fisher divergence
   E_q ||s - grad log q_sigma||^2 to the exact score (absolute and relative to E_q ||grad log q||^2),
   the noise of each loss (std of its minibatch estimate at the trained parameters, and of the
   training curve's step-to-step changes), every estimator's loss and gradient noise at the same
   parameters, and how DSM's and SSM-VR's noise scale with sigma (the seed's point that SSM is noisy).
3. ``digits``: the digits-ncsn preset against the digits (DDPM) preset, each trained for the same
   budget: wall-clock seconds, or optimizer steps with --steps (same network, batch and step cost,
   so equal steps are equal compute, the fair budget on a shared machine). digits-ncsn is sampled
   by annealed Langevin (its preset), PC and DDIM-20 (the contract lets any sampler drive it), the
   DDPM preset by DDIM-20 (its preset); all judged by ``kuosan.judges.digit_quality``. ``--runs``
   evaluates runs trained elsewhere (``kuosan train --preset ... --steps N``) instead.

    python benchmarks/score_models.py [--part mixture|fisher|digits|all] [--budget 120 | --steps N]
    python benchmarks/score_models.py --part digits --runs digits=RUN_A digits-ncsn=RUN_B
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import tempfile
import time

import torch

from kuosan.diffusion import GaussianMixtureDenoiser
from kuosan.diffusion.sde import geometric_sigmas
from kuosan.losses.score_matching import (
    denoising_score_matching_loss,
    explicit_score_matching_loss,
    fisher_divergence,
    sliced_score_matching_loss,
)
from kuosan.networks import MLPDenoiser
from kuosan.samplers.langevin import langevin_dynamics, sample_annealed_langevin

F64 = torch.float64


def machine() -> dict:
    return {
        "cpu": platform.processor() or platform.machine(),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "cores": os.cpu_count(),
    }


def emit(rec: dict) -> None:
    print(json.dumps(rec), flush=True)


# --- 1. the mixture experiment --------------------------------------------------------------------


def isotropic_mixture_score(weights: torch.Tensor, means: torch.Tensor):
    """Exact grad log p of sum_k w_k N(m_k, I): sum_k r_k(x) (m_k - x), r the responsibilities."""

    def score(x):
        d = x[:, None, :] - means[None]
        r = torch.softmax(weights.log()[None] - 0.5 * d.pow(2).sum(-1), dim=1)
        return -(r[..., None] * d).sum(1)

    return score


def run_mixture(n: int, seed: int) -> None:
    weights, means = torch.tensor([0.8, 0.2], dtype=F64), torch.tensor([[5.0, 5.0], [-5.0, -5.0]], dtype=F64)
    oracle = GaussianMixtureDenoiser(weights, means, torch.ones(2, 2))
    x = torch.rand(n, 2, generator=torch.Generator().manual_seed(seed), dtype=F64) * 16 - 8
    share = lambda y: float(((y - means[0]).norm(dim=1) < (y - means[1]).norm(dim=1)).double().mean())  # noqa: E731
    base = {"bench": "score_models", "part": "mixture", "samples": n, "true_share": 0.8, "start": "uniform[-8,8]^2"}
    t0 = time.perf_counter()
    y = langevin_dynamics(
        isotropic_mixture_score(weights, means),
        x,
        step_size=0.1,
        n_steps=1000,
        generator=torch.Generator().manual_seed(seed + 1),
    )
    emit(
        {
            **base,
            "sampler": "langevin",
            "step_size": 0.1,
            "steps": 1000,
            "share": share(y),
            "error": round(abs(share(y) - 0.8), 4),
            "seconds": round(time.perf_counter() - t0, 1),
        }
    )
    for levels, steps in [(10, 100), (20, 100)]:
        t0 = time.perf_counter()
        sigmas = torch.cat([geometric_sigmas(levels, 1.0, 20.0), torch.zeros(1, dtype=F64)])
        y = sample_annealed_langevin(
            oracle, x, sigmas, langevin_steps=steps, step_lr=0.1, generator=torch.Generator().manual_seed(seed + 1)
        )
        emit(
            {
                **base,
                "sampler": "annealed-langevin",
                "levels": levels,
                "sigma_max": 20.0,
                "sigma_min": 1.0,
                "step_lr": 0.1,
                "steps_per_level": steps,
                "share": share(y),
                "error": round(abs(share(y) - 0.8), 4),
                "within_0.03": abs(share(y) - 0.8) <= 0.03,
                "seconds": round(time.perf_counter() - t0, 1),
            }
        )


# --- 2. DSM vs SSM vs SSM-VR: Fisher divergence and loss noise --------------------------------------


def fisher_data():
    """A 2-D, 3-component Gaussian mixture with full covariances (the test suite's oracle)."""
    means = torch.tensor([[-2.0, 0.5], [1.5, 1.5], [1.0, -2.0]])
    covs = torch.tensor([[[0.30, 0.10], [0.10, 0.20]], [[0.15, -0.05], [-0.05, 0.25]], [[0.40, 0.00], [0.00, 0.05]]])
    return GaussianMixtureDenoiser(torch.tensor([0.5, 0.3, 0.2]), means, covs)


class ScoreMLP(torch.nn.Module):
    """s(x) for one noise level: kuosan's residual MLP at a fixed timestep input."""

    def __init__(self):
        super().__init__()
        self.net = MLPDenoiser(dim=2, hidden=128, depth=3)

    def forward(self, x):
        return self.net(x, torch.zeros(x.shape[0], device=x.device))


def make_loss(method: str, sigma: float):
    """loss(model, x0, generator) -> per-sample losses, all estimating the Fisher divergence to q_sigma
    up to a constant (DSM from clean data, the others from noised samples x~ ~ q_sigma)."""

    def loss(model, x0, g):
        eps = torch.randn(x0.shape, generator=g)
        if method == "dsm":
            return denoising_score_matching_loss(model, x0, sigma, eps)
        xt = x0 + sigma * eps
        if method == "esm":
            return explicit_score_matching_loss(model, xt)
        kind = "gaussian" if method == "ssm-gaussian" else "rademacher"
        return sliced_score_matching_loss(
            model, xt, projection=kind, variance_reduction=method == "ssm-vr", generator=g
        )

    return loss


def train_score(method: str, data, sigma: float, steps: int, batch: int, seed: int):
    """(model, loss curve, seconds): Adam, lr 1e-3, fresh data and noise every step."""
    torch.manual_seed(seed)
    model = ScoreMLP()
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    loss_fn = make_loss(method, sigma)
    g = torch.Generator().manual_seed(seed + 1)
    curve = []
    t0 = time.perf_counter()
    for _ in range(steps):
        loss = loss_fn(model, data.sample(batch, generator=g).float(), g).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        curve.append(loss.item())
    return model, curve, time.perf_counter() - t0


def estimator_noise(model, method: str, data, sigma: float, batch: int, seed: int, n: int = 100):
    """(std of the minibatch loss, sqrt(trace Cov) of the minibatch gradient) at fixed parameters."""
    loss_fn = make_loss(method, sigma)
    g = torch.Generator().manual_seed(seed + 7)
    losses, grads = [], []
    for _ in range(n):
        loss = loss_fn(model, data.sample(batch, generator=g).float(), g).mean()
        grads.append(torch.cat([p.flatten() for p in torch.autograd.grad(loss, list(model.parameters()))]))
        losses.append(float(loss.detach()))
    grads = torch.stack(grads)
    return float(torch.tensor(losses).std()), float((grads - grads.mean(0)).pow(2).sum(1).mean().sqrt())


def run_fisher(steps: int, batch: int, seed: int, sigma: float = 0.1) -> None:
    data = fisher_data()
    g_eval = torch.Generator().manual_seed(seed + 100)
    x_eval = data.sample(20000, generator=g_eval)
    x_eval = (x_eval + sigma * torch.randn(x_eval.shape, generator=g_eval, dtype=F64)).float()
    true_eval = data.score(x_eval.double(), sigma)
    ref = float(true_eval.pow(2).sum(1).mean())
    base = {
        "bench": "score_models",
        "part": "fisher",
        "data": "gmm2d-3",
        "sigma": sigma,
        "steps": steps,
        "batch": batch,
        "E_q|grad log q|^2": round(ref, 3),
    }
    methods = ["dsm", "ssm", "ssm-gaussian", "ssm-vr", "esm"]
    models = {}
    for method in methods:
        model, curve, train_s = train_score(method, data, sigma, steps, batch, seed)
        models[method] = model
        with torch.no_grad():
            fisher = 2 * float(fisher_divergence(model(x_eval), true_eval).mean())
        loss_noise, _ = estimator_noise(model, method, data, sigma, batch, seed)
        tail = torch.tensor(curve[-500:])
        emit(
            {
                **base,
                "method": method,
                "fisher": round(fisher, 4),
                "fisher_relative": round(fisher / ref, 5),
                "loss_noise": round(loss_noise, 3),
                "curve_noise": round(float(tail.diff().std() / math.sqrt(2)), 3),
                "train_seconds": round(train_s, 1),
            }
        )
    # every estimator's gradient noise at the same parameters (the exact-trace model, near the optimum)
    for method in methods:
        loss_noise, grad_noise = estimator_noise(models["esm"], method, data, sigma, batch, seed)
        emit(
            {
                **base,
                "method": method,
                "at": "esm-trained parameters",
                "loss_noise": round(loss_noise, 3),
                "grad_noise": round(grad_noise, 3),
            }
        )
    # how the noise scales with sigma: DSM's target -eps/sigma against SSM-VR's Jacobian term
    for s in [0.3, 0.1, 0.03]:
        for method in ["dsm", "ssm-vr"]:
            loss_noise, grad_noise = estimator_noise(models["esm"], method, data, s, batch, seed)
            emit(
                {
                    "bench": "score_models",
                    "part": "fisher-sigma-sweep",
                    "sigma": s,
                    "method": method,
                    "at": "esm-trained parameters (sigma = 0.1)",
                    "loss_noise": round(loss_noise, 3),
                    "grad_noise": round(grad_noise, 3),
                }
            )


# --- 3. digits: NCSN against DDPM at the same budget -----------------------------------------------


def _train_or_load(preset: str, run_dir: str | None, budget: float | None, steps: int | None, seed: int):
    """(config, EMA network, {"step", "train_seconds"}) of a preset trained here, or of a trained run."""
    from kuosan.app import build_trainer
    from kuosan.config import resolve_config
    from kuosan.runs import load_run
    from kuosan.train import checkpoint as ckpt

    if run_dir:
        cfg, net = load_run(run_dir)
        state = ckpt.read_state(run_dir)
        return cfg, net, {"step": state["step"], "train_seconds": state["train_seconds"]}
    cfg = resolve_config(preset, None, [f"train.seed={seed}"])
    with tempfile.TemporaryDirectory() as out:
        trainer = build_trainer(cfg, out, progress=False)
        summary = trainer.fit(steps=steps, time_budget=budget)
    return cfg, trainer.ema.shadow.eval(), summary


def run_digits(
    budget: float | None,
    steps: int | None,
    n: int,
    seed: int,
    save_dir: str | None = None,
    run_dirs: dict | None = None,
) -> None:
    from kuosan.build import build_denoiser, build_schedule, prior_for
    from kuosan.judges import digit_quality, load_digit_classifier
    from kuosan.samplers.loop import generate

    classifier = load_digit_classifier()
    runs = {
        "digits": [("ddim", 20, {})],
        "digits-ncsn": [("annealed-langevin", 25, {}), ("pc", 25, {}), ("ddim", 20, {})],
    }
    for preset, samplers in runs.items():
        cfg, net, summary = _train_or_load(preset, (run_dirs or {}).get(preset), budget, steps, seed)
        for sampler, n_steps, kwargs in samplers:
            t0 = time.perf_counter()
            x = generate(
                build_denoiser(cfg, net),
                build_schedule(cfg),
                (1, 8, 8),
                n,
                sampler=sampler,
                steps=n_steps,
                grid="trailing",
                generator=torch.Generator().manual_seed(seed + 1),
                prior=prior_for(cfg),
                **kwargs,
            )
            q = digit_quality(x.clamp(-1, 1), classifier=classifier)
            if save_dir:
                from kuosan.imaging import save_samples_png

                save_samples_png(x[:100].clamp(-1, 1), os.path.join(save_dir, f"{preset}_{sampler}.png"))
            emit(
                {
                    "bench": "score_models",
                    "part": "digits",
                    "preset": preset,
                    "budget_s": budget,
                    "budget_steps": steps,
                    "train_steps": summary["step"],
                    "train_seconds": round(summary["train_seconds"], 1),
                    "sampler": sampler,
                    "sampler_steps": n_steps,
                    "sample_seconds": round(time.perf_counter() - t0, 1),
                    "fd": round(q["fd"], 3),
                    "fd_floor": round(q["fd_floor"], 3),
                    "confident": q["confident"],
                    "class_entropy": round(q["class_entropy"], 3),
                    "samples": n,
                }
            )


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--part", choices=["mixture", "fisher", "digits", "all"], default="all")
    p.add_argument("--budget", type=float, default=None, help="digits: training seconds per preset")
    p.add_argument(
        "--steps",
        type=int,
        default=None,
        help="digits: optimizer steps per preset (the fair budget on a shared machine; default: "
        "--budget, or 120 s if neither is given)",
    )
    p.add_argument("--samples", type=int, default=1000, help="digits: samples per sampler")
    p.add_argument("--mixture-samples", type=int, default=10_000)
    p.add_argument("--fisher-steps", type=int, default=2000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--save-dir", help="digits: also write a PNG grid of each sampler's first 100 samples here")
    p.add_argument(
        "--runs",
        nargs="*",
        default=[],
        metavar="PRESET=RUN_DIR",
        help="digits: evaluate these trained runs (e.g. digits=runs/a digits-ncsn=runs/b) instead of "
        "training the presets",
    )
    args = p.parse_args()
    emit({"bench": "score_models", "machine": machine()})
    if args.part in ("mixture", "all"):
        run_mixture(args.mixture_samples, args.seed)
    if args.part in ("fisher", "all"):
        run_fisher(args.fisher_steps, 256, args.seed)
    if args.part in ("digits", "all"):
        budget = 120.0 if args.budget is None and args.steps is None and not args.runs else args.budget
        run_dirs = dict(item.split("=", 1) for item in args.runs)
        run_digits(budget, args.steps, args.samples, args.seed, args.save_dir, run_dirs)


if __name__ == "__main__":
    main()
