"""benchmarks/gpu.py, the script a GPU machine runs: where there is no GPU it says so in one line and
exits 0; its --smoke mode runs every part at toy sizes on the CPU (so the script works before a
GPU's time is spent on it)."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "gpu.py"


def _run(*args):
    r = subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stderr[-2000:]
    return [json.loads(line) for line in r.stdout.splitlines()]


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU")
def test_without_a_gpu_it_says_so_and_exits_0():
    (line,) = _run()
    assert line["bench"] == "gpu" and "no CUDA GPU" in line["skipped"]


@pytest.mark.slow
def test_smoke_runs_every_part():
    recs = _run("--smoke")
    parts = [r["part"] for r in recs]
    assert parts[0] == "machine" and parts[-1] == "done"
    curves = [r for r in recs if r["part"] == "loss_curve"]
    assert len(curves) == 2 and all(r["agree"] and r["mean_abs_gap_over_mean_loss"] == 0 for r in curves)  # CPU twice
    speeds = [r for r in recs if r["part"] == "train_speed"]
    assert {r["system"] for r in speeds} == {"kuosan", "diffusers"} and all(r["train_images_per_s"] > 0 for r in speeds)
    assert all(r["finite"] for r in recs if r["part"] == "sample_speed")
