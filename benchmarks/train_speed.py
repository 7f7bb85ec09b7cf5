"""Training and sampling speed of kuosan's U-Net against diffusers' UNet2DModel at a matched
architecture, on this CPU, in one run.

    python benchmarks/train_speed.py [--steps 12] [--shapes 32x32x3:32,8x8x1:128] [--repeats 1]

JSON lines: the machine's matrix-product peak (fp32, bf16); then per (shape, system, mode):
training images/s, achieved GFLOP/s (FLOPs of one forward+backward counted by
torch.utils.flop_counter) and its share of the bf16 peak, sampling images/s (one network evaluation
per image), and the process's peak resident memory. Each configuration runs in its own subprocess
so the memory figure is its own; with ``--repeats R`` every configuration runs R times, round-robin
(so a slow spell of a shared machine hits all of them alike), each repeat is printed, and the
configuration's line is its median run (with the range of images/s).
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time

import torch


def matmul_peak(dtype: torch.dtype, n: int = 2048, reps: int = 10) -> float:
    a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
    a @ b
    t0 = time.perf_counter()
    for _ in range(reps):
        a @ b
    return 2 * n**3 * reps / (time.perf_counter() - t0) / 1e9


def build(system: str, c: int, h: int):
    """Matched DDPM-layout U-Nets: channels (64, 128, 128) [(64, 128) at 8x8], 2 res blocks per
    level, attention at the second level, additive time conditioning (diffusers' default)."""
    mult = (1, 2, 2) if h >= 16 else (1, 2)
    if system == "kuosan":
        from kuosan.networks import UNet

        return UNet(
            in_channels=c,
            base_channels=64,
            channel_mult=mult,
            num_res_blocks=2,
            attention_levels=(1,),
            num_heads=1,
            scale_shift=False,
        )
    from diffusers import UNet2DModel

    chans = tuple(64 * m for m in mult)
    down = ("DownBlock2D", "AttnDownBlock2D", "DownBlock2D")[: len(mult)]
    up = ("UpBlock2D", "AttnUpBlock2D", "UpBlock2D")[-len(mult) :]
    net = UNet2DModel(
        sample_size=h,
        in_channels=c,
        out_channels=c,
        layers_per_block=2,
        block_out_channels=chans,
        down_block_types=down,
        up_block_types=up,
        norm_num_groups=32,
        attention_head_dim=chans[1],
    )
    return _Unwrap(net)


class _Unwrap(torch.nn.Module):
    def __init__(self, net):
        super().__init__()
        self.net = net

    def forward(self, x, t):
        return self.net(x, t).sample


def one(system: str, shape: str, batch: int, mode: str, steps: int) -> dict:
    """Time one configuration in this process. mode: fp32 or bf16 (autocast), "-cl" for channels-last
    network and data, "compile-" for torch.compile (under which kuosan's fused norm kernel is off:
    inductor fuses the PyTorch operations instead). Both systems run with the C library's allocator
    set as kuosan's trainer sets it (freed memory kept for the next step; it speeds both up) and with
    kuosan's AdamW."""
    from torch.utils.flop_counter import FlopCounterMode

    from kuosan.train.cpu import AdamW, retain_freed_memory

    retained = retain_freed_memory()

    h, _, c = (int(v) for v in shape.split("x"))
    torch.manual_seed(0)
    net = build(system, c, h)
    cl = "-cl" in mode
    bf16 = "bf16" in mode
    if cl:
        net = net.to(memory_format=torch.channels_last)
    model = torch.compile(net) if mode.startswith("compile") else net
    # both systems: the fastest AdamW here (torch's fused kernel, given channels-last weights as dense views)
    opt = AdamW(net.parameters(), lr=1e-4, fused=True)
    x = torch.randn(batch, c, h, h)
    if cl:
        x = x.contiguous(memory_format=torch.channels_last)
    t = torch.randint(0, 1000, (batch,)).float()

    def step():
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            loss = (model(x, t).float() - x).pow(2).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    # FLOPs with attention in its math form (bmm + softmax) for both systems: the flop counter has no
    # formula for the CPU flash kernel, so attention would otherwise count for whichever side used bmm
    from torch.nn.attention import SDPBackend, sdpa_kernel

    with FlopCounterMode(display=False) as fc, sdpa_kernel(SDPBackend.MATH):
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            loss = (net(x, t).float() - x).pow(2).mean()
        loss.backward()
    flops = fc.get_total_flops()
    for _ in range(3):
        step()
    times = []
    for _ in range(steps):
        t0 = time.perf_counter()
        step()
        times.append(time.perf_counter() - t0)
    med = statistics.median(times)
    with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        xs = torch.randn(256, c, h, h)
        model(xs, t[:1].expand(256))
        t0 = time.perf_counter()
        for _ in range(3):
            model(xs, t[:1].expand(256))
        sample_ips = 3 * 256 / (time.perf_counter() - t0)
    fused = False
    if system == "kuosan":
        from kuosan.ops import kernels_available as fused_available

        fused = cl and fused_available() and not mode.startswith("compile")
    return {
        "system": system,
        "shape": shape,
        "batch": batch,
        "mode": mode,
        "fused_norm_kernel": fused,
        "retain_freed_memory": retained,
        "params": sum(p.numel() for p in net.parameters()),
        "train_images_per_s": round(batch / med, 1),
        "step_ms_median": round(med * 1000, 1),
        "gflop_per_step": round(flops / 1e9, 2),
        "achieved_gflops": round(flops / med / 1e9, 1),
        "sample_images_per_s": round(sample_ips, 1),
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
    }


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=12)
    p.add_argument("--shapes", default="32x32x3:32,8x8x1:128", help="HxWxC:batch,...")
    p.add_argument("--modes", default="fp32,bf16,fp32-cl,bf16-cl,compile-bf16,compile-bf16-cl")
    p.add_argument(
        "--repeats",
        type=int,
        default=1,
        help="run every configuration this many times, round-robin, and report each one's median run",
    )
    p.add_argument("--one", nargs=4, metavar=("SYSTEM", "SHAPE", "BATCH", "MODE"), help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.one:
        system, shape, batch, mode = args.one
        print(json.dumps(one(system, shape, int(batch), mode, args.steps)))
        return
    peak = {"fp32": matmul_peak(torch.float32), "bf16": matmul_peak(torch.bfloat16)}
    print(
        json.dumps(
            {
                "bench": "train_speed",
                "matmul_peak_gflops": {k: round(v, 1) for k, v in peak.items()},
                "threads": torch.get_num_threads(),
                "torch": torch.__version__,
            }
        ),
        flush=True,
    )
    for item in args.shapes.split(","):
        shape, batch = item.split(":")
        configs = [(system, mode) for system in ("kuosan", "diffusers") for mode in args.modes.split(",")]
        runs = {c: [] for c in configs}
        for _ in range(args.repeats):  # round-robin: a slow spell of the machine hits every configuration alike
            for system, mode in configs:
                r = subprocess.run(
                    [sys.executable, __file__, "--steps", str(args.steps), "--one", system, shape, batch, mode],
                    capture_output=True,
                    text=True,
                )
                if r.returncode != 0:
                    print(
                        json.dumps(
                            {"system": system, "shape": shape, "mode": mode, "error": r.stderr.strip().splitlines()[-1]}
                        ),
                        flush=True,
                    )
                    continue
                rec = json.loads(r.stdout.strip().splitlines()[-1])
                rec["share_of_bf16_peak"] = round(rec["achieved_gflops"] / peak["bf16"], 3)
                runs[(system, mode)].append(rec)
                if args.repeats > 1:
                    print(json.dumps({"repeat": True, **rec}), flush=True)
        best = {}
        for (system, _mode), recs in runs.items():
            if not recs:
                continue
            rec = dict(sorted(recs, key=lambda r: r["train_images_per_s"])[(len(recs) - 1) // 2])  # the median run
            if args.repeats > 1:
                rec["repeats"] = len(recs)
                rec["train_images_per_s_range"] = [
                    min(r["train_images_per_s"] for r in recs),
                    max(r["train_images_per_s"] for r in recs),
                ]
            print(json.dumps(rec), flush=True)
            if system not in best or rec["train_images_per_s"] > best[system]["train_images_per_s"]:
                best[system] = rec
        k, d = best.get("kuosan"), best.get("diffusers")
        if k and d:
            print(
                json.dumps(
                    {
                        "summary": True,
                        "shape": shape,
                        "kuosan_best": [k["mode"], k["train_images_per_s"]],
                        "diffusers_best": [d["mode"], d["train_images_per_s"]],
                        "speedup": round(k["train_images_per_s"] / d["train_images_per_s"], 2),
                    }
                ),
                flush=True,
            )


if __name__ == "__main__":
    main()
