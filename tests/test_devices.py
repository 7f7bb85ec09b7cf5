"""The device and precision policy (kuosan.devices) for machines this one is not: the capability
queries are stood in for, never the computation; and train / sample / eval through the device code
with --device cpu, as a user would."""

import json

import numpy as np
import pytest
import torch

from cli_helpers import fails_cleanly, kuosan
from kuosan import devices
from kuosan.devices import DeviceError, resolve_device, resolve_precision


@pytest.fixture
def machine(monkeypatch):
    """Stand in for a machine: machine(cuda=2, capability=(8, 0), mps=False, cpu_bf16=False)."""

    def make(*, cuda: int = 0, capability=(8, 0), mps: bool = False, cpu_bf16: bool = False, local_rank=None):
        monkeypatch.setattr(devices, "cuda_available", lambda: cuda > 0)
        monkeypatch.setattr(devices, "cuda_count", lambda: cuda)
        monkeypatch.setattr(devices, "cuda_capability", lambda index: capability)
        monkeypatch.setattr(devices, "mps_available", lambda: mps)
        monkeypatch.setattr(devices, "cpu_has_fast_bf16", lambda: cpu_bf16)
        if local_rank is None:
            monkeypatch.delenv("LOCAL_RANK", raising=False)
        else:
            monkeypatch.setenv("LOCAL_RANK", str(local_rank))

    return make


def test_auto_is_cuda_when_there_else_the_cpu_and_mps_only_when_asked(machine):
    machine(cuda=0, mps=True)
    assert resolve_device("auto") == torch.device("cpu") and resolve_device(None) == torch.device("cpu")
    assert resolve_device("mps") == torch.device("mps")
    machine(cuda=1)
    assert resolve_device("auto") == torch.device("cuda", 0) and resolve_device("cpu") == torch.device("cpu")


def test_under_torchrun_each_process_takes_its_local_gpu(machine):
    machine(cuda=4, local_rank=3)
    assert resolve_device("auto") == torch.device("cuda", 3) and resolve_device("cuda") == torch.device("cuda", 3)
    assert resolve_device("cuda:1") == torch.device("cuda", 1)  # an explicit index wins


@pytest.mark.parametrize(
    "spec, cuda, needle",
    [
        ("cuda", 0, "PyTorch sees no CUDA GPU"),
        ("cuda:2", 2, "this machine has 2 CUDA GPU(s)"),
        ("cuda:x", 1, "cuda:N"),
        ("mps", 0, "no Apple GPU"),
        ("tpu", 0, "is not one of auto, cpu, cuda, cuda:N, mps"),
    ],
)
def test_a_device_that_is_not_there_is_one_line(machine, spec, cuda, needle):
    machine(cuda=cuda)
    with pytest.raises(DeviceError, match=None) as e:
        resolve_device(spec)
    assert needle in str(e.value) and "\n" not in str(e.value)


def test_precision_follows_the_device(machine):
    machine(cuda=1, capability=(9, 0), cpu_bf16=False)
    cuda, cpu = torch.device("cuda", 0), torch.device("cpu")
    assert resolve_precision(cuda, "auto") == "bf16"  # Ampere and newer
    assert resolve_precision(cpu, "auto") == "fp32"  # no bf16 units: bf16 would be emulated, slower
    machine(cuda=1, capability=(7, 5), cpu_bf16=True)
    assert resolve_precision(cuda, "auto") == "fp16"  # Turing: fp16 with a gradient scaler
    assert resolve_precision(cpu, "auto") == "bf16"  # AMX / AVX512-BF16
    assert devices.needs_grad_scaler("fp16") and not devices.needs_grad_scaler("bf16")
    with pytest.raises(DeviceError, match="no bf16"):
        resolve_precision(cuda, "bf16")
    with pytest.raises(DeviceError, match="fp16 is for GPUs"):
        resolve_precision(cpu, "fp16")
    assert resolve_precision(cpu, "fp32") == "fp32" and resolve_precision(torch.device("mps"), "auto") == "fp32"


def test_noise_is_drawn_on_the_cpu_generator_whatever_the_device():
    from kuosan.samplers.common import noise_like

    x = torch.zeros(3, 4, dtype=torch.float64)
    a = noise_like(x, torch.Generator().manual_seed(5))
    b = devices.randn((3, 4), generator=torch.Generator().manual_seed(5), device=torch.device("cpu"), dtype=x.dtype)
    assert torch.equal(a, b) and a.dtype == torch.float64


def test_train_sample_eval_nll_with_an_explicit_cpu_device(tmp_path):
    run, tiny = (
        tmp_path / "run",
        ["model.params.base_channels=8", "model.params.num_res_blocks=1", "train.batch_size=8"],
    )
    kuosan("train", "--preset", "digits", "--steps", 2, "--out", run, "--device", "cpu", "--no-progress", *tiny)
    state = json.loads((run / "checkpoint" / "state.json").read_text())
    config = json.loads((run / "checkpoint" / "config.json").read_text())
    assert state["device"] == "cpu" and state["precision"] in ("fp32", "bf16") and config["train"]["device"] == "cpu"
    auto = tmp_path / "auto.npy"
    kuosan("sample", run, "-n", 12, "--steps", 3, "--seed", 4, "--out", auto)
    kuosan("sample", run, "-n", 12, "--steps", 3, "--seed", 4, "--device", "cpu", "--out", tmp_path / "cpu.npy")
    assert np.array_equal(np.load(auto), np.load(tmp_path / "cpu.npy"))  # auto is the CPU here
    np.save(tmp_path / "many.npy", np.concatenate([np.load(auto)] * 2))
    assert "fd" in json.loads(kuosan("eval", tmp_path / "many.npy", "--dataset", "digits", "--device", "cpu").stdout)
    nll = [json.loads(kuosan("nll", run, "-n", 8, "--steps", 4, *extra).stdout) for extra in ([], ["--device", "cpu"])]
    assert nll[0]["bpd"] == nll[1]["bpd"] and np.isfinite(nll[0]["bpd"])
    kuosan("train", "--resume", "--out", run, "--steps", 3, "--device", "cpu", "--no-progress")
    assert json.loads((run / "checkpoint" / "state.json").read_text())["step"] == 3


@pytest.mark.skipif(torch.cuda.is_available(), reason="a machine with a GPU has CUDA")
def test_asking_for_a_gpu_on_a_machine_without_one_is_one_line(tmp_path):
    out = tmp_path / "run"
    line = fails_cleanly(
        kuosan("train", "--preset", "digits", "--steps", 1, "--out", out, "--device", "cuda", check=False), "cuda"
    )
    assert "no CUDA GPU" in line and not out.exists()
    fails_cleanly(kuosan("sample", "nowhere", "--device", "cuda:0", "--out", tmp_path / "a.npy", check=False))
    fails_cleanly(
        kuosan("train", "--preset", "digits", "--steps", 1, "--out", out, "train.precision=fp16", check=False),
        "fp16 is for GPUs",
    )


def test_sampling_precision_is_the_networks_autocast(tmp_path):
    """bf16 autocast moves the samples by rounding only (2-D data: nothing is clamped)."""
    run = tmp_path / "toy"
    kuosan("train", "--preset", "toy2d", "--steps", 20, "--out", run, "--device", "cpu", "--no-progress")
    out = {p: tmp_path / f"{p}.npy" for p in ("fp32", "bf16")}
    for p, path in out.items():
        kuosan("sample", run, "-n", 200, "--steps", 5, "--precision", p, "--out", path)
    a, b = np.load(out["fp32"]), np.load(out["bf16"])
    assert 0 < np.abs(a - b).max() < 0.1 * np.abs(a).max(), np.abs(a - b).max()
