"""Every kuosan sampler that has a k-diffusion namesake against it, on exact oracles, in one process:
the Frechet distance of the samples to the oracle's true moments at 10 and 25 steps on Karras' grid
(80 -> 0.002, rho 7), averaged over 4 noise seeds; and the forms kuosan keeps as options
(dpmpp-2m-sde's "heun" solver type, dpmpp-3m's and dpmpp-3m-sde's "exact" form) beside the defaults.

    python benchmarks/peer_samplers.py [--samples 4000] [--steps 10 25] [--seeds 4]

Oracles: the 64-D digits mixture of benchmarks/oracle_samplers.py, and an 8-D mixture of 4
components whose covariance eigenvalues run from 1e-3 to 0.2 (random rotations, means ~ N(0, I)).
Both libraries start from the same x_T and get the same noise draws (k-diffusion's functions are
re-typed in benchmarks/k_diffusion_peers.py; its SDE samplers default to a Brownian tree, here
replaced by the same i.i.d. draws), so a difference is the method's. JSON lines: one per (oracle,
sampler, steps) with both FDs and their seed-by-seed values; a summary of defaults vs peers.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import k_diffusion_peers as peers  # noqa: E402
from oracle_samplers import FastMixtureDenoiser, digits_oracle  # noqa: E402

from kuosan.diffusion.schedules import sigmas_karras  # noqa: E402
from kuosan.metrics import frechet_distance  # noqa: E402
from kuosan.samplers import SAMPLERS  # noqa: E402

F64 = torch.float64
SIGMA_MAX, SIGMA_MIN = 80.0, 0.002

# kuosan runs beside each default: (registry name, options, label)
VARIANTS = [
    ("dpmpp-2m-sde", {"solver_type": "heun"}, "dpmpp-2m-sde (heun)"),
    ("dpmpp-3m", {"form": "exact"}, "dpmpp-3m (exact)"),
    ("dpmpp-3m-sde", {"form": "exact"}, "dpmpp-3m-sde (exact)"),
]


def eight_d_oracle(seed: int = 0) -> FastMixtureDenoiser:
    """4 components in 8-D, covariance eigenvalues log-spaced from 1e-3 to 0.2 in random rotations."""
    g = torch.Generator().manual_seed(seed)
    covs = []
    for _ in range(4):
        q, _ = torch.linalg.qr(torch.randn(8, 8, generator=g, dtype=F64))
        covs.append(q @ torch.diag(torch.logspace(math.log10(1e-3), math.log10(0.2), 8, dtype=F64)) @ q.T)
    means = torch.randn(4, 8, generator=g, dtype=F64)
    return FastMixtureDenoiser(torch.tensor([0.4, 0.3, 0.2, 0.1], dtype=F64), means, torch.stack(covs), shape=(8,))


def fd(oracle, x: torch.Tensor) -> float:
    if not torch.isfinite(x).all():
        return float("inf")
    f = x.reshape(x.shape[0], -1).to(F64).numpy()
    return frechet_distance(f.mean(0), np.cov(f, rowvar=False), oracle.mean.numpy(), oracle.covariance.numpy())


def runs(oracle, name, options, steps, n, seed, peer=True):
    """(kuosan FD, peer FD) of one configuration from the same x_T and noise."""
    sigmas = sigmas_karras(steps, SIGMA_MIN, SIGMA_MAX)
    shape = (n, *oracle.shape)
    x_T = torch.randn(shape, generator=torch.Generator().manual_seed(seed), dtype=F64) * SIGMA_MAX
    kw = {"eta": 1.0} if name == "dpmpp-2s" else {}
    ours = SAMPLERS[name](oracle, x_T, sigmas, generator=torch.Generator().manual_seed(seed + 1), **kw, **options)
    if not peer:
        return fd(oracle, ours), None
    g = torch.Generator().manual_seed(seed + 1)
    fn, peer_options = peers.PEERS[name]
    theirs = fn(oracle, x_T, sigmas, noise=lambda: torch.randn(shape, generator=g, dtype=F64), **peer_options)
    return fd(oracle, ours), fd(oracle, theirs)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--samples", type=int, default=4000)
    p.add_argument("--steps", type=int, nargs="+", default=[10, 25])
    p.add_argument("--seeds", type=int, default=4)
    args = p.parse_args()
    oracles = {"digits-64d": digits_oracle(), "mixture-8d": eight_d_oracle()}
    summary = []
    for oname, oracle in oracles.items():
        for steps in args.steps:
            for name in peers.PEERS:
                pairs = [runs(oracle, name, {}, steps, args.samples, 100 * s) for s in range(args.seeds)]
                k, d = [a for a, _ in pairs], [b for _, b in pairs]
                row = {"bench": "peer_samplers", "oracle": oname, "steps": steps, "sampler": name,
                       "kuosan_fd": float(np.mean(k)), "k_diffusion_fd": float(np.mean(d)),
                       "kuosan_per_seed": k, "k_diffusion_per_seed": d}  # fmt: skip
                row["at_least_as_accurate"] = row["kuosan_fd"] <= row["k_diffusion_fd"] * (1 + 1e-9)
                summary.append(row)
                print(json.dumps(row), flush=True)
            for name, options, label in VARIANTS:
                vals = [
                    runs(oracle, name, options, steps, args.samples, 100 * s, peer=False)[0] for s in range(args.seeds)
                ]
                print(json.dumps({"bench": "peer_samplers", "oracle": oname, "steps": steps, "sampler": label,
                                  "options": options, "kuosan_fd": float(np.mean(vals)), "kuosan_per_seed": vals}),
                      flush=True)  # fmt: skip
    print(json.dumps({"bench": "peer_samplers", "summary": True,
                      "all_at_least_as_accurate": all(r["at_least_as_accurate"] for r in summary)}))  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
