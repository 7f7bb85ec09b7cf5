"""Test-split likelihood of the digits in bits/dim: a kuosan model (the variational bound and the
probability-flow ODE) against the best scikit-learn GaussianMixture fitted to the same dequantized
train split, searched over K, covariance type and regularisation in the same run.

    python benchmarks/likelihood_digits.py [--budget 300 | --steps N | --run DIR] [--threads 1]

Convention (docs/evaluation.md): bits/dim of the 17-level data, -log2 P(x) / 64. Continuous densities
(the ODE model, the mixtures) score the same uniformly dequantized test images y = x + (u - 1/2) / 8
and convert with + log2(8) = 3 bits; the kuosan model is trained on dequantized data (hybrid loss,
learned variance) and its bound is the dequantized VLB (``vlb_bpd(..., dequantized=True)``). A
uniform distribution over the 17 levels scores log2(17) = 4.09.

Mixtures: chosen on a validation fifth of the (dequantized) train split, refitted on all of it; the
best test score over the whole grid is printed too (selection on test: the most favourable figure
for the baseline). Prints JSON lines: machine, model, one per mixture, kuosan vlb and ode, a
tolerance check of the ODE on 40 images, and a summary.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import tempfile
import time
import warnings

import numpy as np
import torch

from kuosan.app import build_trainer
from kuosan.build import build_schedule
from kuosan.config import resolve_config
from kuosan.data import DIGITS_BIN_WIDTH, DIGITS_NUM_LEVELS, load_digits
from kuosan.diffusion import VPDenoiser
from kuosan.diffusion.likelihood import bpd_from_log_density, dequantize, ode_log_likelihood, vlb_bpd
from kuosan.runs import load_run

OVERRIDES = [
    "diffusion.loss=hybrid",
    "diffusion.learn_sigma=true",
    "diffusion.dequantize=true",
    "model.params.base_channels=32",
]
GMM_GRID = [("full", k, r) for k in (1, 2, 4, 6, 8, 12, 16) for r in (1e-4, 1e-3, 3e-3, 1e-2)] + [
    ("diag", k, r) for k in (20, 40, 80, 120) for r in (1e-4, 1e-3)
]
DIM = 64


def emit(**kw) -> None:
    print(json.dumps(kw), flush=True)


def machine() -> dict:
    return {
        "cpu": platform.processor() or platform.machine(),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "cores": os.cpu_count(),
    }


def gmm_bpd(model, y: np.ndarray) -> float:
    return float(bpd_from_log_density(torch.from_numpy(model.score_samples(y)), DIM, DIGITS_BIN_WIDTH).mean())


def run_gmm(y_train: np.ndarray, y_test: np.ndarray, seed: int) -> dict:
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.mixture import GaussianMixture

    perm = np.random.default_rng(seed).permutation(len(y_train))
    n_val = len(y_train) // 5
    fit_part, val_part = y_train[perm[n_val:]], y_train[perm[:n_val]]
    rows = []
    for cov, k, reg in GMM_GRID:
        t0 = time.perf_counter()
        kw = dict(n_components=k, covariance_type=cov, reg_covar=reg, random_state=seed, max_iter=300)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            val = gmm_bpd(GaussianMixture(**kw).fit(fit_part), val_part)
            test = gmm_bpd(GaussianMixture(**kw).fit(y_train), y_test)
        row = {
            "system": "sklearn-gmm",
            "covariance": cov,
            "K": k,
            "reg_covar": reg,
            "val_bpd": round(val, 4),
            "test_bpd": round(test, 4),
            "seconds": round(time.perf_counter() - t0, 1),
        }
        emit(**row)
        rows.append(row)
    by_val = min(rows, key=lambda r: r["val_bpd"])
    by_test = min(rows, key=lambda r: r["test_bpd"])
    return {"by_val": by_val, "by_test": by_test}


def get_model(args):
    if args.run is not None:
        cfg, net = load_run(args.run)
        emit(system="kuosan", model=args.run, config=cfg.to_dict())
        return cfg, net
    cfg = resolve_config("digits", None, [f"train.seed={args.seed}", *OVERRIDES])
    out = args.out or tempfile.mkdtemp(prefix="kuosan_nll_")
    trainer = build_trainer(cfg, out, progress=False)
    t0 = time.perf_counter()
    summary = trainer.fit(time_budget=args.budget, steps=args.steps)
    net = trainer.ema.shadow.eval().requires_grad_(False)
    emit(
        system="kuosan",
        model=out,
        overrides=OVERRIDES,
        steps=summary["step"],
        train_seconds=round(time.perf_counter() - t0, 1),
        params=sum(p.numel() for p in net.parameters()),
    )
    return cfg, net


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--budget", type=float, default=300.0, help="training seconds (ignored with --run)")
    parser.add_argument("--steps", type=int, help="training steps (stops at whichever comes first)")
    parser.add_argument("--run", help="evaluate this trained run instead of training one")
    parser.add_argument("--out", help="run directory of the trained model (default: a temporary one)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--rtol", type=float, default=1e-4, help="ODE solver tolerances (rtol = atol)")
    parser.add_argument("--ode-batch", type=int, default=120)
    parser.add_argument("--vlb-batch", type=int, default=360)
    parser.add_argument("--threads", type=int, help="torch threads (1 is fastest on a crowded machine)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    emit(bench="likelihood_digits", **machine())

    x_train, x_test = load_digits("train"), load_digits("test")
    g = torch.Generator().manual_seed(args.seed)
    y_train = dequantize(x_train, DIGITS_BIN_WIDTH, generator=g)
    y_test = dequantize(x_test, DIGITS_BIN_WIDTH, generator=g)  # shared by the mixtures and the ODE

    t0 = time.perf_counter()
    gmm = run_gmm(y_train.flatten(1).numpy(), y_test.flatten(1).numpy(), args.seed)
    gmm_seconds = time.perf_counter() - t0

    cfg, net = get_model(args)
    schedule = build_schedule(cfg)
    den = VPDenoiser(net, schedule, cfg.diffusion.prediction, learn_sigma=cfg.diffusion.learn_sigma)
    variance = "learned_range" if cfg.diffusion.learn_sigma else "fixed_small"

    t0 = time.perf_counter()
    gv = torch.Generator().manual_seed(args.seed + 1)
    vlb = torch.cat(
        [
            vlb_bpd(
                den,
                chunk,
                schedule,
                variance=variance,
                bin_width=DIGITS_BIN_WIDTH,
                dequantized=cfg.diffusion.dequantize,
                generator=gv,
            )["bpd"]
            for chunk in x_test.split(args.vlb_batch)
        ]
    )
    emit(
        system="kuosan",
        method="vlb",
        bpd=round(float(vlb.mean()), 4),
        stderr=round(float(vlb.std() / math.sqrt(len(vlb))), 4),
        n=len(vlb),
        T=schedule.T,
        variance=variance,
        dequantized=cfg.diffusion.dequantize,
        seconds=round(time.perf_counter() - t0, 1),
    )

    def ode(y: torch.Tensor, tol: float, seed: int):
        gp = torch.Generator().manual_seed(seed)
        outs = [ode_log_likelihood(den, chunk, rtol=tol, atol=tol, generator=gp) for chunk in y.split(args.ode_batch)]
        logp = torch.cat([o["log_likelihood"] for o in outs])
        return bpd_from_log_density(logp, DIM, DIGITS_BIN_WIDTH), [o["nfe"] for o in outs]

    t0 = time.perf_counter()
    ode_bpd, nfe = ode(y_test, args.rtol, args.seed + 2)
    emit(
        system="kuosan",
        method="ode",
        bpd=round(float(ode_bpd.mean()), 4),
        stderr=round(float(ode_bpd.std() / math.sqrt(len(ode_bpd))), 4),
        n=len(ode_bpd),
        rtol=args.rtol,
        atol=args.rtol,
        probe="rademacher",
        nfe_per_batch=nfe,
        batch=args.ode_batch,
        sigma_min=den.sigma_min,
        sigma_max=den.sigma_max,
        seconds=round(time.perf_counter() - t0, 1),
    )

    # the tolerance's effect: the first 40 images again at a 10x tighter tolerance, same points and probes
    t0 = time.perf_counter()
    n_chk = min(40, args.ode_batch)
    loose, _ = ode(y_test[:n_chk], args.rtol, args.seed + 2)
    tight, nfe_tight = ode(y_test[:n_chk], args.rtol / 10, args.seed + 2)
    emit(
        check="ode_tolerance",
        n=n_chk,
        rtol=args.rtol,
        bpd=round(float(loose.mean()), 4),
        rtol_tight=args.rtol / 10,
        bpd_tight=round(float(tight.mean()), 4),
        max_abs_diff=round(float((loose - tight).abs().max()), 4),
        nfe_tight=nfe_tight,
        seconds=round(time.perf_counter() - t0, 1),
    )

    best = gmm["by_test"]["test_bpd"]
    emit(
        summary="likelihood_digits",
        kuosan_vlb_bpd=round(float(vlb.mean()), 4),
        kuosan_ode_bpd=round(float(ode_bpd.mean()), 4),
        gmm_best_test_bpd=best,
        gmm_best_config={k: gmm["by_test"][k] for k in ("covariance", "K", "reg_covar")},
        gmm_selected_by_val_test_bpd=gmm["by_val"]["test_bpd"],
        gmm_selected_config={k: gmm["by_val"][k] for k in ("covariance", "K", "reg_covar")},
        gmm_search_seconds=round(gmm_seconds, 1),
        uniform_bpd=round(math.log2(DIGITS_NUM_LEVELS), 4),
        kuosan_beats_gmm=bool(vlb.mean() < best and ode_bpd.mean() < best),
    )


if __name__ == "__main__":
    main()
