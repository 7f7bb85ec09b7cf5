"""Fast samplers against diffusers' schedulers at equal network evaluations, on exact oracles.

With an analytic denoiser the error is the sampler's alone. Two Gaussian-mixture oracles (exact
E[x0 | x] for every noise level): one fitted to the 8x8 digits (64-D, dequantized) and one fitted
to the 2-D swiss roll. Each is wrapped once as an eps-model on the discrete DDPM linear schedule
(T = 1000, ``EpsFromDenoiser``); kuosan's samplers see it through ``VPDenoiser`` and diffusers'
schedulers call it directly, in the same run, from the same x_T ~ N(0, I) (common random numbers,
drawn quasi-randomly: ``prior_draws``).

Figures per (system, sampler/scheduler, grid/options, NFE), NFE counted by a counter on the
eps-model (so both libraries are counted the same way):

- ``fd``: Frechet distance between the Gaussian fitted to the samples and the true mixture's exact
  mean and covariance; ``fd_floor`` is the same for as many i.i.d. exact draws (sampling noise
  alone), ``fd_flow`` for the exact probability-flow ODE from the same x_T (what every sampler
  converges to; below fd_floor thanks to the quasi-random x_T);
- ``nll_gap``: mean negative log-likelihood of the samples under the true mixture minus that of
  exact draws (nats): negative = collapsed (too concentrated), positive = noisy or off-manifold.

    python benchmarks/oracle_samplers.py [--nfe 5 10 20 50] [--oracle digits 2d] [--seed 1]
    python benchmarks/oracle_samplers.py --run-dir RUN   # also the trained-model check (digits)
    python benchmarks/oracle_samplers.py --fit-grid      # the measurement that chose the kuosan grid

Prints one JSON line per run, then a summary line per (oracle, NFE) with kuosan's best against
diffusers' best (ratio of FDs), and with --run-dir the digit-quality comparison on a trained model:
kuosan's best sampler at 10 evaluations against DDIM at 50.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import time

import numpy as np
import torch
from torch import nn

from kuosan.diffusion import EpsFromDenoiser, GaussianMixtureDenoiser, VPDenoiser
from kuosan.diffusion.schedules import DiscreteSchedule, make_sigmas
from kuosan.metrics import frechet_distance
from kuosan.samplers import EVALS_PER_STEP, SAMPLERS

F64 = torch.float64
SCH = DiscreteSchedule.from_name("linear", 1000)


# --- oracles ----------------------------------------------------------------------------------------


class FastMixtureDenoiser(GaussianMixtureDenoiser):
    """The same exact mixture denoiser with the per-component rotations done as one matrix product
    (B, d) @ (d, K d): the library's einsum form is ~10x slower on CPU for 64-D, 10 components."""

    def _parts(self, x, sigma):
        xf = x.reshape(x.shape[0], -1).to(F64)
        sigma = torch.as_tensor(sigma, dtype=F64, device=x.device).reshape(-1)
        if sigma.numel() > 1 and bool((sigma == sigma[0]).all()):
            sigma = sigma[:1]  # one noise level for the batch: (1, K, d) tables instead of (B, K, d)
        K, d = self.means.shape
        Ut = self.U.permute(1, 0, 2).reshape(d, K * d)  # column block k is U_k
        mU = torch.einsum("kd,kdj->kj", self.means, self.U)  # m_k^T U_k
        z = (xf @ Ut).reshape(-1, K, d) - mU[None]  # U_k^T (x - m_k)
        return xf, z, self.lam[None] + sigma[:, None, None] ** 2

    def _log_resp_and_logp(self, z, lam_s):
        quad = (z * z / lam_s).sum(-1)
        log_n = -0.5 * (quad + lam_s.log().sum(-1) + self.dim * math.log(2 * math.pi))
        joint = self.log_w[None] + log_n
        logp = torch.logsumexp(joint, dim=1)
        return joint - logp[:, None], logp

    def forward(self, x, sigma, **cond):
        xf, z, lam_s = self._parts(x, sigma)
        log_r, _ = self._log_resp_and_logp(z, lam_s)
        r = log_r.exp()
        w = r[..., None] * z * (self.lam[None] / lam_s)  # (B, K, d)
        K, d = self.means.shape
        shrink = w.reshape(-1, K * d) @ self.U.permute(0, 2, 1).reshape(K * d, d)  # sum_k U_k w_k
        return (r @ self.means + shrink).reshape(x.shape).to(x.dtype)


def _mixture_from_sklearn(gm, shape) -> FastMixtureDenoiser:
    return FastMixtureDenoiser(
        torch.tensor(gm.weights_), torch.tensor(gm.means_), torch.tensor(gm.covariances_), shape=shape
    )


def digits_oracle(seed: int = 0, components: int = 10) -> FastMixtureDenoiser:
    """A full-covariance Gaussian mixture fitted (scikit-learn EM) to the dequantized digits train
    split: x + U(-1/16, 1/16) spreads each of the 17 grey levels over its bin (variance 1/768), and
    reg_covar = 1e-3 keeps every component's smallest eigenvalue near that variance."""
    from sklearn.mixture import GaussianMixture

    from kuosan.data import load_digits

    x = load_digits("train").reshape(-1, 64).to(F64)
    g = torch.Generator().manual_seed(seed)
    x = x + (torch.rand(x.shape, generator=g, dtype=F64) - 0.5) / 8
    gm = GaussianMixture(components, covariance_type="full", reg_covar=1e-3, random_state=seed, max_iter=500)
    return _mixture_from_sklearn(gm.fit(x.numpy()), (1, 8, 8))


def swissroll_oracle(seed: int = 0, components: int = 24) -> FastMixtureDenoiser:
    """A full-covariance Gaussian mixture fitted to 20,000 points of kuosan's standardized 2-D
    swiss roll: thin, curved, many modes."""
    from sklearn.mixture import GaussianMixture

    from kuosan.data import load_dataset

    x = load_dataset("toy2d:swissroll", n=20_000, generator=torch.Generator().manual_seed(seed)).to(F64)
    gm = GaussianMixture(components, covariance_type="full", reg_covar=1e-4, random_state=seed, max_iter=500)
    return _mixture_from_sklearn(gm.fit(x.numpy()), (2,))


ORACLES = {"digits": digits_oracle, "2d": swissroll_oracle}


class CountingEps(nn.Module):
    """The oracle as an eps-model eps(x_t, t) on SCH, counting network evaluations (calls)."""

    def __init__(self, oracle):
        super().__init__()
        self.eps = EpsFromDenoiser(oracle, SCH)
        self.calls = 0

    def forward(self, x_t, t):
        self.calls += 1
        return self.eps(x_t, t)


# --- metrics ----------------------------------------------------------------------------------------


class Judge:
    """FD to the exact mixture moments, and the NLL gap against exact draws."""

    def __init__(self, oracle, n: int, seed: int):
        self.oracle = oracle
        self.mu = oracle.mean.numpy()
        self.cov = oracle.covariance.numpy()
        g = torch.Generator().manual_seed(seed + 1000)
        ref = oracle.sample(max(n, 20_000), generator=g)
        self.nll_true = float(-oracle.log_prob(ref).mean())
        floor = oracle.sample(n, generator=g)
        self.fd_floor = self.fd(floor)

    def fd(self, x: torch.Tensor) -> float:
        f = x.reshape(x.shape[0], -1).to(F64).numpy()
        return frechet_distance(f.mean(0), np.cov(f, rowvar=False), self.mu, self.cov)

    def __call__(self, x: torch.Tensor) -> dict:
        if not torch.isfinite(x).all():
            return {"fd": float("inf"), "nll_gap": float("inf")}
        nll = float(-self.oracle.log_prob(x).mean())
        return {"fd": self.fd(x), "nll_gap": nll - self.nll_true}


# --- the two libraries --------------------------------------------------------------------------------


def kuosan_steps(sampler: str, nfe: int) -> int:
    """Steps that fit in ``nfe`` evaluations: k evaluations per step but one on the last."""
    k = EVALS_PER_STEP[sampler]
    return max(1, (nfe - 1) // k + 1)


def run_kuosan(eps: CountingEps, sampler: str, grid: str, nfe: int, x_T: torch.Tensor, seed: int, **kw):
    steps = kuosan_steps(sampler, nfe)
    sigmas = make_sigmas(SCH, steps, grid)
    x = x_T * (1 + float(sigmas[0]) ** 2) ** 0.5  # x_T in the Denoiser's VE scaling at sigmas[0]
    eps.calls = 0
    out = SAMPLERS[sampler](VPDenoiser(eps, SCH, "eps"), x, sigmas, generator=torch.Generator().manual_seed(seed), **kw)
    return out, eps.calls


def diffusers_configs() -> list[tuple[str, str, dict]]:
    """(label, scheduler class, options): the schedulers the issue names, each with the timestep
    spacings and sigma grids diffusers offers, so that diffusers' best is a real best. ("linspace"
    spacing is left out where it is within a rounding of "trailing"; UniPC "bh1" runs with
    final_sigmas_type="sigma_min" because with "zero" it returns NaN: B(h) = -h is infinite on the
    last step and multiplies a zero correction.)"""
    cfgs = [
        ("ddim", "DDIMScheduler", {"timestep_spacing": sp, "clip_sample": False, "set_alpha_to_one": True})
        for sp in ("leading", "linspace", "trailing")
    ]
    cfgs += [("euler", "EulerDiscreteScheduler", {"timestep_spacing": sp}) for sp in ("linspace", "trailing")]
    cfgs += [("euler", "EulerDiscreteScheduler", {"use_karras_sigmas": True})]
    grids = ({"timestep_spacing": "trailing"}, {"use_karras_sigmas": True})
    for order in (2, 3):
        for opts in (*grids, {"use_lu_lambdas": True}):
            cfgs.append((f"dpmpp-{order}m", "DPMSolverMultistepScheduler", {"solver_order": order, **opts}))
        for opts in grids:
            cfgs.append((f"unipc-{order}", "UniPCMultistepScheduler", {"solver_order": order, **opts}))
            cfgs.append(
                (
                    f"unipc-{order}-bh1",
                    "UniPCMultistepScheduler",
                    {"solver_order": order, "solver_type": "bh1", "final_sigmas_type": "sigma_min", **opts},
                )
            )
            cfgs.append((f"deis-{order}", "DEISMultistepScheduler", {"solver_order": order, **opts}))
    return cfgs


def run_diffusers(eps: CountingEps, cls_name: str, opts: dict, nfe: int, x_T: torch.Tensor, seed: int):
    """diffusers' own loop: x_T * init_noise_sigma, scale_model_input, step; every scheduler here
    makes one model call per step, so NFE = steps (the counter checks it)."""
    import diffusers

    sched = getattr(diffusers, cls_name)(num_train_timesteps=1000, beta_schedule="linear", **opts)
    sched.set_timesteps(nfe)
    g = torch.Generator().manual_seed(seed)
    x = x_T * sched.init_noise_sigma
    eps.calls = 0
    for t in sched.timesteps:
        out = eps(sched.scale_model_input(x, t), t)
        kw = {"generator": g} if "generator" in sched.step.__code__.co_varnames else {}
        x = sched.step(out, t, x, **kw).prev_sample
    return x, eps.calls


# --- the benchmark ------------------------------------------------------------------------------------

# kuosan's side: the multistep solvers on every grid; the others (first order, two evaluations per
# step, stochastic) on the diffusers-style grid and on kuosan's, to show where they stand
KUOSAN_RUNS = (
    [
        (s, g)
        for s in ("unipc", "unipc-3", "dpmpp-3m", "dpmpp-2m")
        for g in ("trailing", "karras", "exponential", "kuosan")
    ]
    + [(s, g) for s in ("euler", "heun", "dpmpp-2s") for g in ("trailing", "kuosan")]
    + [(s, "kuosan") for s in ("euler-ancestral", "dpmpp-2m-sde", "dpmpp-3m-sde")]
)
SAMPLES = {"digits": 6000, "2d": 20_000}


def machine() -> dict:
    return {
        "cpu": platform.processor() or platform.machine(),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "cores": os.cpu_count(),
    }


def prior_draws(n: int, shape: tuple[int, ...], seed: int) -> torch.Tensor:
    """x_T ~ N(0, I), n draws as scrambled-Sobol quasi-random normals (inverse CDF): the same points
    for every sampler of both libraries. The output moments of a smooth map of x_T then carry far
    less sampling noise than with i.i.d. draws (on the exact flow: FD ~1e-7 instead of ~1e-4 in 2-D,
    0.009 instead of 0.022 in 64-D), so the FD measures the sampler, not the draw."""
    d = math.prod(shape)
    u = torch.quasirandom.SobolEngine(d, scramble=True, seed=seed).draw(n, dtype=F64)
    return torch.special.ndtri(u.clamp(1e-12, 1 - 1e-12)).reshape(n, *shape)


def flow_reference(oracle, x_T: torch.Tensor) -> torch.Tensor:
    """What every sampler converges to from x_T: the probability-flow ODE solved accurately (UniPC-3,
    200 log-uniform steps from sigma_max to sigma_min), then x = D(x, sigma_min)."""
    sigmas = make_sigmas(SCH, 200, "exponential")
    return SAMPLERS["unipc-3"](oracle, x_T * (1 + float(sigmas[0]) ** 2) ** 0.5, sigmas)


def bench_oracle(name: str, nfes: list[int], n: int, seed: int, diffusers_on: bool):
    oracle = ORACLES[name]()
    judge = Judge(oracle, n, seed)
    eps = CountingEps(oracle)
    x_T = prior_draws(n, oracle.shape, seed)
    flow = judge(flow_reference(oracle, x_T))
    base = {
        "bench": "oracle_samplers",
        "oracle": name,
        "samples": n,
        "seed": seed,
        "fd_floor": judge.fd_floor,
        "fd_flow": flow["fd"],
        "nll_gap_flow": flow["nll_gap"],
    }
    rows = []
    for nfe in nfes:
        for sampler, grid in KUOSAN_RUNS:
            x, calls = run_kuosan(eps, sampler, grid, nfe, x_T, seed)
            rows.append(
                {
                    **base,
                    "system": "kuosan",
                    "sampler": sampler,
                    "grid": grid,
                    "nfe_budget": nfe,
                    "nfe": calls,
                    **judge(x),
                }
            )
            print(json.dumps(rows[-1]), flush=True)
        if diffusers_on:
            for label, cls_name, opts in diffusers_configs():
                x, calls = run_diffusers(eps, cls_name, opts, nfe, x_T, seed)
                rows.append(
                    {
                        **base,
                        "system": "diffusers",
                        "sampler": label,
                        "scheduler": cls_name,
                        "options": opts,
                        "nfe_budget": nfe,
                        "nfe": calls,
                        **judge(x),
                    }
                )
                print(json.dumps(rows[-1]), flush=True)
    return rows


def summarize(rows: list[dict]) -> list[dict]:
    """Per (oracle, NFE): the lowest FD of each library within the NFE budget."""
    out = []
    for oracle in sorted({r["oracle"] for r in rows}):
        for nfe in sorted({r["nfe_budget"] for r in rows}):
            sel = [r for r in rows if r["oracle"] == oracle and r["nfe_budget"] == nfe and r["nfe"] <= nfe]
            best = {
                sys_: min((r for r in sel if r["system"] == sys_), key=lambda r: r["fd"], default=None)
                for sys_ in ("kuosan", "diffusers")
            }
            k, d = best["kuosan"], best["diffusers"]
            if k is None or d is None:
                continue
            out.append(
                {
                    "bench": "oracle_samplers",
                    "summary": True,
                    "oracle": oracle,
                    "nfe": nfe,
                    "fd_floor": k["fd_floor"],
                    "fd_flow": k["fd_flow"],
                    "kuosan_fd": k["fd"],
                    "kuosan_best": f"{k['sampler']}/{k['grid']}",
                    "kuosan_nll_gap": k["nll_gap"],
                    "diffusers_fd": d["fd"],
                    "diffusers_best": f"{d['scheduler']}{json.dumps(d['options'])}",
                    "diffusers_nll_gap": d["nll_gap"],
                    "fd_ratio": k["fd"] / d["fd"],
                }
            )
    return out


def fit_grid(nfes: list[int], seed: int = 11) -> None:
    """The measurement behind the "kuosan" grid: FD of UniPC on each oracle (as many samples as the
    benchmark; noise seed 11, not the benchmark's) for sigma_max -> log-uniform from sigma_hi to
    sigma_lo, over a (sigma_hi, sigma_lo) grid; prints every point and, per NFE, the point of least
    FD on the digits oracle (64-D, the image-like case the grid is for) among those whose NLL gap
    there is within 3 nats at 10-19 NFE and within 1 nat from 20 NFE on (no constraint at 5:
    collapse is the price of 5 evaluations). The 2-D oracle is printed to show the grid transfers."""
    import itertools

    from kuosan.samplers import sample_unipc

    his, los = (2.0, 3.0, 5.0, 8.0, 15.0, 30.0), (0.01, 0.015, 0.02, 0.03, 0.05, 0.1, 0.16)
    setups = {}
    for name, n in SAMPLES.items():
        oracle = ORACLES[name]()
        x_T = prior_draws(n, oracle.shape, seed)
        setups[name] = (oracle, Judge(oracle, n, seed), x_T)
    for nfe in nfes:
        scores = {}
        for hi, lo in itertools.product(his, los):
            sig = make_sigmas(SCH, nfe, "kuosan", sigma_hi=hi, sigma_lo=lo)
            for name, (oracle, judge, x_T) in setups.items():
                r = judge(sample_unipc(oracle, x_T * (1 + float(sig[0]) ** 2) ** 0.5, sig))
                print(
                    json.dumps(
                        {
                            "bench": "oracle_samplers",
                            "fit_grid": True,
                            "oracle": name,
                            "nfe": nfe,
                            "sigma_hi": hi,
                            "sigma_lo": lo,
                            **r,
                        }
                    ),
                    flush=True,
                )
                if name == "digits" and abs(r["nll_gap"]) <= (math.inf if nfe < 10 else 3.0 if nfe < 20 else 1.0):
                    scores[(hi, lo)] = r["fd"]
        (hi, lo), best = min(scores.items(), key=lambda kv: kv[1])
        print(
            json.dumps(
                {
                    "bench": "oracle_samplers",
                    "fit_grid": True,
                    "nfe": nfe,
                    "best_sigma_hi": hi,
                    "best_sigma_lo": lo,
                    "digits_fd": best,
                }
            ),
            flush=True,
        )


def trained_model_check(run_dir: str, n: int, seed: int) -> list[dict]:
    """Digit quality (Frechet distance in the shipped classifier's features, lower is better) of a
    trained digits run: kuosan's samplers at 10 evaluations against DDIM at 50 (each grid)."""
    from kuosan.build import build_denoiser, build_schedule
    from kuosan.judges import digit_quality
    from kuosan.runs import load_run
    from kuosan.samplers.loop import prior_noise

    cfg, net = load_run(run_dir)
    denoiser, schedule = build_denoiser(cfg, net), build_schedule(cfg)
    calls = [0]

    def counted(x, sigma, **cond):
        calls[0] += 1
        return denoiser(x, sigma, **cond)

    runs = [(s, "kuosan", 10) for s in ("unipc", "unipc-3", "dpmpp-3m", "dpmpp-2m")]
    runs += [("unipc", g, 10) for g in ("trailing", "karras", "exponential")]
    runs += [("ddim", g, 50) for g in ("leading", "linspace", "trailing")]
    rows = []
    for sampler, grid, nfe in runs:
        sigmas = make_sigmas(schedule, kuosan_steps(sampler, nfe), grid)
        g = torch.Generator().manual_seed(seed)
        calls[0] = 0
        out = []
        with torch.inference_mode():
            for start in range(0, n, 1000):
                x = prior_noise((min(1000, n - start), *net.data_shape), float(sigmas[0]), generator=g)
                out.append(SAMPLERS[sampler](counted, x, sigmas, generator=g))
        q = digit_quality(torch.cat(out).clamp(-1, 1).float())
        rows.append(
            {
                "bench": "oracle_samplers",
                "trained_model": run_dir,
                "sampler": sampler,
                "grid": grid,
                "nfe": calls[0] // -(-n // 1000),
                "samples": n,
                "fd": q["fd"],
                "fd_floor": q["fd_floor"],
                "confident": q["confident"],
                "class_entropy": q["class_entropy"],
            }
        )
        print(json.dumps(rows[-1]), flush=True)
    ours = min((r for r in rows if r["nfe"] <= 10), key=lambda r: r["fd"])
    first = next(r for r in rows if r["nfe"] <= 10)  # the sampler chosen beforehand: unipc/kuosan
    ddim = min((r for r in rows if r["sampler"] == "ddim"), key=lambda r: r["fd"])
    summary = {
        "bench": "oracle_samplers",
        "trained_model": run_dir,
        "summary": True,
        "kuosan_10_fd": first["fd"],
        "kuosan_10": f"{first['sampler']}/{first['grid']}",
        "kuosan_10_best_fd": ours["fd"],
        "kuosan_10_best": f"{ours['sampler']}/{ours['grid']}",
        "ddim_50_best_fd": ddim["fd"],
        "ddim_50_best": f"ddim/{ddim['grid']}",
        "kuosan_10_best_at_least_as_good": ours["fd"] <= ddim["fd"],
        "kuosan_grid_10_at_least_as_good": first["fd"] <= ddim["fd"],
    }
    print(json.dumps(summary), flush=True)
    return rows + [summary]


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--samples", type=int, help=f"samples per run (default: {SAMPLES})")
    p.add_argument("--nfe", type=int, nargs="+", default=[5, 10, 20, 50])
    p.add_argument("--oracle", nargs="+", default=list(ORACLES), choices=list(ORACLES))
    p.add_argument("--no-diffusers", action="store_true")
    p.add_argument("--seed", type=int, default=1, help="noise seed (the grid was fitted with others: 0, 11)")
    p.add_argument("--run-dir", help="a trained digits run: also compare kuosan at 10 NFE with DDIM at 50")
    p.add_argument("--run-dir-only", action="store_true", help="only the trained-model check")
    p.add_argument("--fit-grid", action="store_true", help="re-run the measurement that chose the kuosan grid")
    args = p.parse_args()
    t0 = time.perf_counter()
    if args.fit_grid:
        fit_grid(args.nfe)
        return
    rows = []
    if not args.run_dir_only:
        for name in args.oracle:
            rows += bench_oracle(name, args.nfe, args.samples or SAMPLES[name], args.seed, not args.no_diffusers)
        for line in summarize(rows):
            print(json.dumps(line), flush=True)
    if args.run_dir:
        trained_model_check(args.run_dir, 2000, args.seed)
    print(
        json.dumps({"bench": "oracle_samplers", "seconds": round(time.perf_counter() - t0, 1), "machine": machine()}),
        flush=True,
    )


if __name__ == "__main__":
    main()
