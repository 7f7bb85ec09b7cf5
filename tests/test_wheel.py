"""The package as a user installs it: a wheel built by `pip wheel .`, installed non-editable into a
folder of its own, imports from there, trains 20 steps with the CLI and, where a compiler is present,
builds the CPU kernels from the sources and headers the wheel ships (into a fresh build cache) and
runs them."""

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
from torch.utils.cpp_extension import is_ninja_available

ROOT = Path(__file__).resolve().parents[1]

PROBE = """
import json, sys
import kuosan, kuosan.ops.cpu.autograd as autograd
from kuosan import app, ops
calls = []
apply = autograd.GroupNormAct.apply
autograd.GroupNormAct.apply = lambda *a: calls.append(1) or apply(*a)
summary = app.train(sys.argv[1], preset="digits", steps=20, progress=False, overrides=[
    "model.params.base_channels=16", "model.params.channel_mult=[1,2]", "train.batch_size=16"])
print(json.dumps({"file": kuosan.__file__, "kernels": ops.kernels_available(), "kernel_calls": len(calls),
                  "step": summary["step"]}))
"""


@pytest.mark.slow
def test_installed_wheel_trains_with_the_cpu_kernels(tmp_path):
    wheels = tmp_path / "wheels"
    r = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", str(ROOT), "--no-deps", "--no-build-isolation", "-q", "-w", str(wheels)],
        capture_output=True,
        text=True,
    )
    assert r.returncode == 0, r.stderr[-2000:]
    (wheel,) = wheels.glob("kuosan-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    cpu = sorted(p.name for p in (ROOT / "src/kuosan/ops/cpu").iterdir() if p.suffix in (".cpp", ".h"))
    assert {f"kuosan/ops/cpu/{n}" for n in cpu} <= names, "the wheel lacks kernel sources or headers"
    assert any(n.startswith("kuosan/judges/weights/") for n in names)
    site = tmp_path / "site"
    r = subprocess.run(
        [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(site), str(wheel)],
        capture_output=True,
        text=True,
    )
    assert r.returncode == 0, r.stderr[-2000:]
    env = {
        "PYTHONPATH": str(site),
        "TORCH_EXTENSIONS_DIR": str(tmp_path / "extensions"),
        "PATH": "/usr/bin:/bin",
        "HOME": str(tmp_path),
    }
    env["PATH"] = f"{Path(sys.executable).parent}:{env['PATH']}"  # ninja of this environment
    r = subprocess.run(
        [sys.executable, "-c", PROBE, str(tmp_path / "run")],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        timeout=900,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    import json

    out = json.loads(r.stdout.strip().splitlines()[-1])
    assert Path(out["file"]).is_relative_to(site), out  # the installed copy, not the checkout
    assert out["step"] == 20
    if shutil.which("c++") and is_ninja_available():
        assert out["kernels"] and out["kernel_calls"] > 0, (out, r.stderr[-2000:])
