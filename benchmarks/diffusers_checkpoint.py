"""kuosan's samplers against diffusers' schedulers on a diffusers checkpoint, at equal network
evaluations: the distance of each to a 1000-step reference run of the same model from the same noise
(the user-checkpoint analogue of benchmarks/oracle_samplers.py, where an exact oracle is the judge).

    python benchmarks/diffusers_checkpoint.py                        # tiny random DDPM and SD, built here
    python benchmarks/diffusers_checkpoint.py --run RUN              # a kuosan DDPM run, exported to diffusers
    python benchmarks/diffusers_checkpoint.py --model diffusers:DIR  # a user's DDPM or Stable Diffusion folder
        [--prompt "a photo of a cat"] [--guidance 7.5] [-n 64] [--nfe 10 20] [--seed 0]

Both libraries start from the same x_T ~ N(0, I) (VP scaling, at t = T - 1) and run the model as
loaded, in float32. The reference is DDIM with eta 0 over all T timesteps (the probability-flow ODE
at its finest discretisation; kuosan's and diffusers' DDIM at 1000 steps agree to float error, and
``ref_gap`` reports by how much). Each run reports ``rmse``: the root mean square difference of its
images (decoded, in [-1, 1]) from the reference's. kuosan runs its multistep solvers on its grids,
diffusers every multistep scheduler of benchmarks/oracle_samplers.py with the spacings and sigma
grids it offers; a summary line per (model, NFE) sets the best of each side against the other.
Text models: classifier-free guidance with the prompt against the empty prompt, diffusers' way
(eps_u + g (eps_c - eps_u) on a doubled batch) and kuosan's (the same on x0_hat, a linear map of it).

Random weights give no pictures, but their probability-flow ODE is as real an ODE as a trained
model's: what is measured is how well each solver follows it.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from oracle_samplers import diffusers_configs  # noqa: E402  (diffusers' side, as on the oracles)

from kuosan.diffusion.guidance import CFGDenoiser  # noqa: E402
from kuosan.diffusion.schedules import make_sigmas  # noqa: E402
from kuosan.interop import diffusers as hf  # noqa: E402
from kuosan.samplers import SAMPLERS  # noqa: E402

KUOSAN_RUNS = [(s, g) for s in ("unipc", "unipc-3", "dpmpp-2m", "dpmpp-3m") for g in ("trailing", "karras", "kuosan")]


class Counting:
    """A call counter on the U-Net (a CFG call on a doubled batch counts once, as one step)."""

    def __init__(self, unet: torch.nn.Module):
        self.calls = 0
        unet.register_forward_pre_hook(self._count)

    def _count(self, module, args):
        self.calls += 1


class Model:
    """A diffusers folder ready for both libraries: the U-Net, kuosan's Denoiser, the prompt's
    conditioning, the decoder."""

    def __init__(self, spec: str, prompt: str, guidance: float):
        folder = hf.folder_of(spec)
        self.name = str(folder)
        self.sd = None
        if (folder / "vae").is_dir() and (folder / "text_encoder").is_dir():
            self.sd = hf.load_stable_diffusion(folder)
            self.model = self.sd.model
            enc = self.sd.text_encoder.encode
            self.cond, self.uncond = enc([prompt]), enc([""])
        else:
            self.model = hf.load_model(folder)
            self.cond = self.uncond = {}
        self.guidance = guidance if self.sd else 1.0
        self.unet = self.model.network.unet
        self.counter = Counting(self.unet)

    def denoiser(self, n: int):
        den = self.model.denoiser(clip=False)
        if not self.sd:
            return den, {}
        cond = {k: v.expand(n, *v.shape[1:]) for k, v in self.cond.items()}
        return CFGDenoiser(den, self.uncond, self.guidance), cond

    def eps(self, x: torch.Tensor, t) -> torch.Tensor:
        """diffusers' model call: the U-Net's eps (guided for a text model) at VP input x."""
        unet = self.unet
        if not self.sd:
            return unet(x, t).sample
        n = x.shape[0]
        ctx = torch.cat([self.uncond["context"].expand(n, -1, -1), self.cond["context"].expand(n, -1, -1)])
        e_u, e_c = unet(torch.cat([x, x]), t, encoder_hidden_states=ctx).sample.chunk(2)
        return e_u + self.guidance * (e_c - e_u)

    @torch.no_grad()
    def decode(self, z: torch.Tensor) -> torch.Tensor:
        if not self.sd:
            return z.clamp(-1, 1)
        return self.sd.vae.decode(z / self.sd.scale_factor).clamp(-1, 1)


@torch.no_grad()
def run_kuosan(m: Model, sampler: str, grid: str, steps: int, x_T: torch.Tensor) -> tuple[torch.Tensor, int]:
    sigmas = make_sigmas(m.model.schedule, steps, grid)
    den, cond = m.denoiser(x_T.shape[0])
    m.counter.calls = 0
    x = SAMPLERS[sampler](den, x_T * (1 + float(sigmas[0]) ** 2) ** 0.5, sigmas, extra_args=cond)
    return m.decode(x), m.counter.calls


@torch.no_grad()
def run_diffusers(m: Model, cls_name: str, opts: dict, steps: int, x_T: torch.Tensor) -> tuple[torch.Tensor, int]:
    import diffusers

    config = {k: v for k, v in m.model.scheduler.items() if not k.startswith("_")}
    config.update(opts)
    sched = getattr(diffusers, cls_name).from_config(config)
    sched.set_timesteps(steps)
    x = x_T * sched.init_noise_sigma
    m.counter.calls = 0
    for t in sched.timesteps:
        x = sched.step(m.eps(sched.scale_model_input(x, t), t), t, x).prev_sample
    return m.decode(x), m.counter.calls


def rmse(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.double() - b.double()).pow(2).mean().sqrt())


def bench(spec: str, args, label: str) -> list[dict]:
    m = Model(spec, args.prompt, args.guidance)
    T = m.model.schedule.T
    x_T = torch.randn((args.n, *m.model.data_shape), generator=torch.Generator().manual_seed(args.seed))
    t0 = time.perf_counter()
    ref, _ = run_kuosan(m, "ddim", "trailing", T, x_T)
    ref_d, _ = run_diffusers(m, "DDIMScheduler", {"timestep_spacing": "trailing", "set_alpha_to_one": True,
                                                   "clip_sample": False, "steps_offset": 0}, T, x_T)  # fmt: skip
    base = {"bench": "diffusers_checkpoint", "model": label, "n": args.n, "seed": args.seed, "T": T,
            "guidance": m.guidance if m.sd else None, "ref_gap": rmse(ref, ref_d),
            "ref_seconds": round(time.perf_counter() - t0, 1)}  # fmt: skip
    print(json.dumps({**base, "machine": platform.processor() or platform.machine(), "torch": torch.__version__}))
    rows = []
    for nfe in args.nfe:
        for sampler, grid in KUOSAN_RUNS:
            x, calls = run_kuosan(m, sampler, grid, nfe, x_T)
            rows.append(
                {**base, "system": "kuosan", "sampler": sampler, "grid": grid, "nfe": calls, "rmse": rmse(x, ref)}
            )
            print(json.dumps(rows[-1]), flush=True)
        for name, cls_name, opts in diffusers_configs():
            if cls_name == "DDIMScheduler" or cls_name == "EulerDiscreteScheduler":
                continue  # first order: far behind the multistep solvers at these budgets
            try:
                x, calls = run_diffusers(m, cls_name, opts, nfe, x_T)
            except Exception as e:  # a scheduler that refuses a config is reported, not fatal
                print(json.dumps({**base, "system": "diffusers", "scheduler": name, "options": opts, "error": str(e)}))
                continue
            row = {**base, "system": "diffusers", "scheduler": name, "class": cls_name, "options": opts, "nfe": calls}
            rows.append({**row, "rmse": rmse(x, ref) if torch.isfinite(x).all() else None})
            print(json.dumps(rows[-1]), flush=True)
        done = [r for r in rows if r["nfe"] == nfe and r.get("rmse") is not None]
        best = {s: min((r for r in done if r["system"] == s), key=lambda r: r["rmse"]) for s in ("kuosan", "diffusers")}
        k, d = best["kuosan"], best["diffusers"]
        print(json.dumps({**base, "summary": True, "nfe": nfe,
                          "kuosan_best": {"sampler": k["sampler"], "grid": k["grid"], "rmse": k["rmse"]},
                          "diffusers_best": {"scheduler": d["scheduler"], "options": d["options"], "rmse": d["rmse"]},
                          "diffusers_over_kuosan": d["rmse"] / k["rmse"]}), flush=True)  # fmt: skip
    return rows


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", help="diffusers:DIR, a DDPM or Stable Diffusion folder (default: tiny random ones)")
    p.add_argument("--run", help="a kuosan unconditional DDPM run, exported to diffusers first")
    p.add_argument("--prompt", default="a red circle", help="text models: the prompt")
    p.add_argument("--guidance", type=float, default=7.5, help="text models: the guidance scale")
    p.add_argument("-n", type=int, default=64, help="samples per run")
    p.add_argument("--nfe", type=int, nargs="+", default=[10, 20])
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        if args.model:
            specs = [(args.model, args.model)]
        elif args.run:
            from kuosan import app

            app.export(args.run, Path(tmp) / "export")
            specs = [(str(Path(tmp) / "export"), f"run:{args.run}")]
        else:
            from kuosan.interop.tiny import tiny_ddpm, tiny_stable_diffusion

            specs = [
                (str(tiny_ddpm(Path(tmp) / "ddpm", clip_sample=False)), "tiny-random-ddpm"),
                (str(tiny_stable_diffusion(Path(tmp) / "sd")), "tiny-random-sd"),
            ]
        for spec, label in specs:
            bench(spec, args, label)
    return 0


if __name__ == "__main__":
    sys.exit(main())
