"""kuosan on a GPU, in one short run (under 8 minutes on one recent GPU):

    python benchmarks/gpu.py              # on the GPU machine; prints one line and exits 0 where there is none
    python benchmarks/gpu.py --smoke      # every part at toy sizes, on the CPU (checks the script itself)

JSON lines:

(a) ``loss_curve``: the digits preset and a 32x32x3 U-Net (shapes data) trained for a fixed number of
    steps with the same seed on the GPU and on this machine's CPU, in fp32 (TF32 off on both), through
    kuosan's Trainer; the per-step losses agree when the mean absolute difference over the steps is
    under 3% of the mean loss (float rounding grows slowly through the optimizer; a device bug shows
    as a different curve from the first steps).
(b) ``train_speed``: training images/s of kuosan's U-Net and diffusers' UNet2DModel at the matched
    architecture of benchmarks/train_speed.py (32x32x3, channels 64-128-128, 2 res blocks, attention at
    16x16), each mode (fp32 with TF32, bf16 autocast, + channels-last, + torch.compile), the FLOPs of
    a step (torch.utils.flop_counter), the achieved share of the GPU's measured bf16 matmul peak and the
    peak GPU memory; then each system's best mode and the ratio.
(c) ``sample_speed``: images/s of DDIM sampling at 10 and 50 network evaluations, kuosan's sampler
    loop against diffusers' DDIMScheduler loop over its own U-Net (bf16 autocast, batch 256).
(d) ``commands``: every command that runs a network, once on the device and once on the CPU, from
    the same seed (the noise is drawn on the CPU, so the outputs differ by float error only): sample
    and nll of a digits run, reconstruct of a VAE run, txt2img / img2img / inpaint of a tiny random
    Stable Diffusion folder, sample of a tiny random DDPM folder; the largest difference of each,
    and ``agree`` when it is under 1e-3 (TF32 off).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from train_speed import build  # noqa: E402  (the matched architectures)

from kuosan import devices  # noqa: E402


def emit(rec: dict) -> None:
    print(json.dumps(rec), flush=True)


def matmul_peak(device: torch.device, dtype: torch.dtype, n: int, reps: int = 20) -> float:
    a, b = torch.randn(n, n, device=device, dtype=dtype), torch.randn(n, n, device=device, dtype=dtype)
    for _ in range(3):
        a @ b
    devices.synchronize(device)
    t0 = time.perf_counter()
    for _ in range(reps):
        a @ b
    devices.synchronize(device)
    return 2 * n**3 * reps / (time.perf_counter() - t0) / 1e9


# --- (a) loss curves -------------------------------------------------------------------------------


def losses_of(config: str, overrides: list[str], device: str, steps: int) -> tuple[list[float], float]:
    """Per-step losses of ``steps`` steps of the Trainer on ``device`` (fp32, TF32 off), and its steps/s."""
    from kuosan.app import build_trainer
    from kuosan.config import resolve_config

    cfg = resolve_config(
        config,
        overrides=[
            *overrides,
            f"train.device={device}",
            "train.precision=fp32",
            "train.tf32=false",
            "train.log_every=1",
            "train.checkpoint_every=1e9",
            "train.seed=0",
        ],
    )
    with tempfile.TemporaryDirectory() as out:
        trainer = build_trainer(cfg, out, progress=False)
        trainer.sample_fn = None  # no pictures: the curve only
        t0 = time.perf_counter()
        trainer.fit(steps=steps)
        seconds = time.perf_counter() - t0
        log = [json.loads(line) for line in (Path(out) / "log.jsonl").read_text().splitlines()]
    devices.set_tf32(torch.device(device), True)
    return [r["loss"] for r in log], steps / seconds


def loss_curves(device: str, smoke: bool) -> None:
    shapes32 = [
        "data.name=shapes",
        "data.n=512",
        "model.params.in_channels=3",
        "model.params.channel_mult=[1, 2, 2]",
        "model.params.num_heads=1",
    ]
    steps = 6 if smoke else 40
    small = ["model.params.base_channels=16", "model.params.num_res_blocks=1", "train.batch_size=16"] if smoke else []
    for name, overrides in (("digits", []), ("shapes-32x32x3", shapes32)):
        gpu, gpu_speed = losses_of("digits", overrides + small, device, steps)
        cpu, cpu_speed = losses_of("digits", overrides + small, "cpu", steps)
        gap = statistics.fmean(abs(a - b) for a, b in zip(gpu, cpu)) / statistics.fmean(cpu)
        emit(
            {
                "bench": "gpu",
                "part": "loss_curve",
                "config": name,
                "steps": steps,
                "device_losses": [round(v, 5) for v in gpu],
                "cpu_losses": [round(v, 5) for v in cpu],
                "mean_abs_gap_over_mean_loss": round(gap, 5),
                "agree": gap < 0.03,
                "tolerance": 0.03,
                "device_steps_per_s": round(gpu_speed, 2),
                "cpu_steps_per_s": round(cpu_speed, 2),
            }
        )


# --- (b) training speed ----------------------------------------------------------------------------


def train_speed(device: torch.device, smoke: bool, peak_bf16: float) -> None:
    modes = ["fp32", "bf16", "bf16-cl"] if smoke else ["fp32", "bf16", "bf16-cl", "compile-bf16-cl"]
    best = {}
    for system in ("kuosan", "diffusers"):
        for mode in modes:
            rec = _time_training(system, mode, device, smoke, peak_bf16)
            emit(rec)
            if system not in best or rec["train_images_per_s"] > best[system]["train_images_per_s"]:
                best[system] = rec
            if device.type == "cuda":
                torch.cuda.empty_cache()
    k, d = best["kuosan"], best["diffusers"]
    emit(
        {
            "bench": "gpu",
            "part": "train_speed_best",
            "kuosan": {"mode": k["mode"], "train_images_per_s": k["train_images_per_s"]},
            "diffusers": {"mode": d["mode"], "train_images_per_s": d["train_images_per_s"]},
            "ratio": round(k["train_images_per_s"] / d["train_images_per_s"], 3),
        }
    )


def _time_training(system: str, mode: str, device: torch.device, smoke: bool, peak_bf16: float) -> dict:
    from torch.nn.attention import SDPBackend, sdpa_kernel
    from torch.utils.flop_counter import FlopCounterMode

    c, h, batch = 3, 32, (4 if smoke else 128)
    warm, timed = (1, 2) if smoke else (5, 30)
    torch.manual_seed(0)
    net = build(system, c, h).to(device)
    cl, precision = "-cl" in mode, ("bf16" if "bf16" in mode else "fp32")
    if cl:
        net = net.to(memory_format=torch.channels_last)
    model = torch.compile(net) if mode.startswith("compile") else net
    opt = torch.optim.AdamW(net.parameters(), lr=1e-4, fused=True)
    x = torch.randn(batch, c, h, h, device=device)
    if cl:
        x = x.contiguous(memory_format=torch.channels_last)
    t = torch.randint(0, 1000, (batch,), device=device).float()

    def step():
        with devices.autocast(device, precision):
            loss = (model(x, t).float() - x).pow(2).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    # the CPU's flash attention has no FLOP formula: count its math form there
    math_attention = sdpa_kernel(SDPBackend.MATH) if device.type == "cpu" else contextlib.nullcontext()
    with FlopCounterMode(display=False) as fc, math_attention:
        with devices.autocast(device, precision):
            loss = (net(x, t).float() - x).pow(2).mean()
        loss.backward()
    flops = fc.get_total_flops()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    for _ in range(warm):
        step()
    devices.synchronize(device)
    t0 = time.perf_counter()
    for _ in range(timed):
        step()
    devices.synchronize(device)
    seconds = (time.perf_counter() - t0) / timed
    memory = torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else None
    return {
        "bench": "gpu",
        "part": "train_speed",
        "system": system,
        "mode": mode,
        "batch": batch,
        "params": sum(p.numel() for p in net.parameters()),
        "train_images_per_s": round(batch / seconds, 1),
        "step_ms": round(seconds * 1000, 2),
        "gflop_per_step": round(flops / 1e9, 2),
        "achieved_tflops": round(flops / seconds / 1e12, 2),
        "share_of_bf16_peak": round(flops / seconds / 1e9 / peak_bf16, 3),
        "peak_memory_mb": None if memory is None else round(memory, 1),
    }


# --- (c) sampling speed ----------------------------------------------------------------------------


@torch.inference_mode()
def sample_speed(device: torch.device, smoke: bool) -> None:
    c, h, n = 3, 32, (4 if smoke else 256)
    precision = "fp32" if device.type == "cpu" else "bf16"
    torch.manual_seed(0)
    nets = {"kuosan": build("kuosan", c, h).to(device).eval(), "diffusers": build("diffusers", c, h).to(device).eval()}
    for nfe in (10, 50) if not smoke else (2,):
        for system, net in nets.items():
            run = _kuosan_ddim if system == "kuosan" else _diffusers_ddim
            with devices.autocast(device, precision):
                run(net, nfe, n, device)  # warm-up
                devices.synchronize(device)
                t0 = time.perf_counter()
                out = run(net, nfe, n, device)
                devices.synchronize(device)
            seconds = time.perf_counter() - t0
            emit(
                {
                    "bench": "gpu",
                    "part": "sample_speed",
                    "system": system,
                    "sampler": "ddim",
                    "nfe": nfe,
                    "batch": n,
                    "precision": precision,
                    "images_per_s": round(n / seconds, 1),
                    "finite": bool(torch.isfinite(out).all()),
                }
            )


def _kuosan_ddim(net, nfe: int, n: int, device: torch.device) -> torch.Tensor:
    from kuosan.diffusion import DiscreteSchedule, VPDenoiser
    from kuosan.samplers.loop import generate

    schedule = DiscreteSchedule.from_name("linear", 1000)
    g = torch.Generator().manual_seed(0)
    return generate(VPDenoiser(net, schedule), schedule, (3, 32, 32), n, steps=nfe, generator=g, device=device)


def _diffusers_ddim(net, nfe: int, n: int, device: torch.device) -> torch.Tensor:
    from diffusers import DDIMScheduler

    sched = DDIMScheduler(num_train_timesteps=1000, beta_schedule="linear", timestep_spacing="trailing")
    sched.set_timesteps(nfe)
    x = torch.randn(n, 3, 32, 32, generator=torch.Generator().manual_seed(0)).to(device)
    for t in sched.timesteps:
        eps = net(x, t.to(device).float().expand(n))
        x = sched.step(eps.float(), t, x).prev_sample
    return x


# --- (d) every command on the device ------------------------------------------------------------------


def commands(device: torch.device) -> None:
    from kuosan import app
    from kuosan.interop.tiny import tiny_ddpm, tiny_stable_diffusion

    devices.set_tf32(device, False)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        tiny = ["model.params.base_channels=32", "model.params.num_res_blocks=1", "train.batch_size=16"]
        app.train(tmp / "digits", preset="digits", steps=3, seed=0, device="cpu", progress=False, overrides=tiny)
        vae = ["data.n=32", "model.params.block_out_channels=[8,8,8]", "model.params.groups=4", "train.batch_size=8"]
        app.train(tmp / "vae", preset="shapes-vae", steps=2, seed=0, device="cpu", progress=False, overrides=vae)
        sd, ddpm = tiny_stable_diffusion(tmp / "sd"), tiny_ddpm(tmp / "ddpm", clip_sample=False)
        image = torch.rand(1, 3, 32, 32, generator=torch.Generator().manual_seed(0)) * 2 - 1
        mask = torch.zeros(1, 1, 32, 32)
        mask[..., 8:24, 8:24] = 1
        sd_spec = f"diffusers:{sd}"
        jobs = {
            "sample": lambda d: app.sample(tmp / "digits", 16, steps=5, seed=1, device=d),
            "nll": lambda d: app.likelihood(tmp / "digits", n=16, steps=10, device=d)[1],
            "reconstruct": lambda d: torch.tensor(app.reconstruct(tmp / "vae", eval_n=16, device=d)[0]["psnr_db"]),
            "txt2img": lambda d: app.text_to_image(sd_spec, "a red circle", n=2, steps=5, device=d),
            "img2img": lambda d: app.text_to_image(sd_spec, "blue", task="img2img", image=image, steps=5, device=d),
            "inpaint": lambda d: app.text_to_image(
                sd_spec, "green", task="inpaint", image=image, mask=mask, steps=5, device=d
            ),
            "sample_diffusers": lambda d: app.sample(f"diffusers:{ddpm}", 8, steps=5, seed=2, device=d),
        }
        for name, job in jobs.items():
            try:
                here, there = job("cpu"), job(str(device))
                gap = float((here.double() - there.double().cpu()).abs().max())
                emit({"bench": "gpu", "part": "commands", "command": name, "max_abs_gap": gap, "agree": gap < 1e-3})
            except Exception as e:  # a device bug is a finding: report it and go on
                emit({"bench": "gpu", "part": "commands", "command": name, "error": f"{type(e).__name__}: {e}"})
    devices.set_tf32(device, True)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--smoke", action="store_true", help="every part at toy sizes on the CPU (checks the script)")
    p.add_argument("--device", default="cuda", help="the device to measure (default cuda)")
    args = p.parse_args()
    if args.smoke:
        args.device = "cpu"
    elif not devices.cuda_available():
        emit({"bench": "gpu", "skipped": "no CUDA GPU here (torch.cuda.is_available() is False); nothing measured"})
        return 0
    device = devices.resolve_device(args.device)
    start = time.perf_counter()
    info = {"bench": "gpu", "part": "machine", "device": str(device), "torch": torch.__version__}
    n = 256 if args.smoke else 8192
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        info.update(name=props.name, capability=list(torch.cuda.get_device_capability(device)))
        info["memory_gb"] = round(props.total_memory / 2**30, 1)
    peak_bf16 = matmul_peak(device, torch.bfloat16, n)
    info["matmul_peak_tflops"] = {"bf16": round(peak_bf16 / 1e3, 1), "fp32": None}
    devices.set_tf32(device, False)
    info["matmul_peak_tflops"]["fp32"] = round(matmul_peak(device, torch.float32, n, reps=5) / 1e3, 1)
    devices.set_tf32(device, True)
    info["matmul_peak_tflops"]["tf32"] = round(matmul_peak(device, torch.float32, n) / 1e3, 1)
    info["date"] = time.strftime("%Y-%m-%d")
    emit(info)
    loss_curves(str(device), args.smoke)
    train_speed(device, args.smoke, peak_bf16)
    sample_speed(device, args.smoke)
    commands(device)
    emit({"bench": "gpu", "part": "done", "seconds": round(time.perf_counter() - start, 1)})
    return 0


if __name__ == "__main__":
    sys.exit(main())
