"""Faults injected as a user or the operating system would: lost files, a second process, corrupt or
non-finite bytes, impossible sizes, unwritable places. Each must end in one line on stderr, a non-zero
exit, and nothing saved before lost or overwritten. (Signals: tests/train/test_signals.py; a kernel
build killed midway: tests/ops/test_kernel_build.py.)"""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file, save_file

from cli_helpers import kuosan
from kuosan.cli import main
from kuosan.train import checkpoint as ckpt

TINY = ["model.params.base_channels=8", "model.params.num_res_blocks=1", "train.batch_size=8", "sample.steps=2"]


def _digest(run) -> dict:
    return {p.relative_to(run).as_posix(): p.read_bytes() for p in sorted(run.rglob("*")) if p.is_file()}


def _fails(capsys, argv, *needles, code=2) -> str:
    assert main([str(a) for a in argv]) == code, argv
    # the one error line (a resume first says where it resumes)
    lines = [line for line in capsys.readouterr().err.strip().splitlines() if not line.startswith("resuming ")]
    assert len(lines) == 1 and lines[0].startswith("kuosan "), lines
    for n in needles:
        assert n in lines[0], lines[0]
    return lines[0]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    run = tmp_path_factory.mktemp("faults") / "run"
    assert main(["train", "--preset", "digits", "--steps", "2", "--out", str(run), "--no-progress", *TINY]) == 0
    return run


@pytest.fixture
def run(trained, tmp_path):
    copy = tmp_path / "run"
    shutil.copytree(trained, copy)
    return copy


def test_a_run_whose_config_is_lost_is_never_overwritten(run, capsys):
    (run / "checkpoint" / "config.json").unlink()
    before = _digest(run)
    _fails(capsys, ["train", "--preset", "digits", "--steps", 1, "--out", run, *TINY], "holds a run", "checkpoint")
    _fails(capsys, ["train", "--resume", "--out", run, "--steps", 3], "no checkpoint", "config.json")
    assert _digest(run) == before


def test_a_second_training_in_the_same_folder_is_refused(run, capsys):
    """While one process trains in a folder (holding its lock), a second train or resume there is
    refused with one line; the lock dies with its holder, so none is ever stale."""
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time\nfrom kuosan.train import checkpoint as c\n"
            "with c.run_lock(sys.argv[1]):\n    print('held', flush=True)\n    time.sleep(60)",
            str(run),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "held"
        before = _digest(run)
        _fails(capsys, ["train", "--resume", "--out", run, "--steps", 3], "is in use", f"process {holder.pid}")
        assert {k: v for k, v in _digest(run).items() if k != ".lock"} == {
            k: v for k, v in before.items() if k != ".lock"
        }
    finally:
        holder.kill()
        holder.wait()
    assert main(["train", "--resume", "--out", str(run), "--steps", "3", "--no-progress"]) == 0  # freed by the kill


def test_16_bit_pngs_keep_their_values(tmp_path):
    from kuosan.data import load_image_folder

    values = (np.arange(64, dtype=np.uint16).reshape(8, 8) * 1000).astype(np.uint16)
    Image.fromarray(values).save(tmp_path / "a.png")  # Pillow writes mode I;16
    x = load_image_folder(tmp_path, channels=1)
    want = torch.from_numpy(np.round(values / 257.0).astype(np.float32) / 127.5 - 1)
    torch.testing.assert_close(x[0, 0], want)
    assert x.min() == -1 and x.max() < 0.95  # was 1.0 nearly everywhere


@pytest.mark.parametrize(
    "argv, needle",
    [
        (["--steps", 0], "at least 1"),
        (["diffusion.T=1000000000"], "GiB"),
        (["train.checkpoint_every=-1"], "train.checkpoint_every"),
        (["train.betas=[2, 3]"], "train.betas"),
        (["data.n=0"], "data.n must be at least 1"),
        (["train.log_every=0"], "train.log_every"),
    ],
)
def test_impossible_training_options(tmp_path, capsys, argv, needle):
    out = tmp_path / "x"
    args = ["train", "--preset", "digits", "--out", out, *TINY, *argv]
    if "--steps" not in argv:
        args += ["--steps", 1]
    _fails(capsys, args, needle)
    assert not (out / "checkpoint").exists()


def test_impossible_sampling_requests(run, tmp_path, capsys):
    before = _digest(run)
    _fails(capsys, ["sample", run, "--batch-size", 0, "--out", tmp_path / "a.npy"], "batch size")
    _fails(capsys, ["sample", run, "-n", 2_000_000_000_000, "--out", tmp_path / "a.npy"], "GiB")
    (tmp_path / "file").write_text("")
    _fails(capsys, ["sample", run, "--out", tmp_path / "file" / "a.npy"], "--out")
    _fails(capsys, ["sample", run, "--out", tmp_path], "--out")
    assert _digest(run) == before and not (tmp_path / "a.npy").exists()


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes anywhere")
def test_a_read_only_out_fails_before_any_work(run, tmp_path, capsys):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    _fails(capsys, ["sample", run, "--out", ro / "a.npy"], "not writable")


def test_corrupt_state_or_config_is_one_line(run, tmp_path, capsys):
    (run / "checkpoint" / "state.json").write_text("{}")
    _fails(capsys, ["sample", run, "--out", tmp_path / "a.npy"], "state.json", "lacks")
    (run / "checkpoint" / "config.json").write_text("[]")
    _fails(capsys, ["sample", run, "--out", tmp_path / "a.npy"], "config.json", "JSON object")


def test_resume_with_a_missing_or_misshapen_tensor_is_one_line(run, capsys):
    path = run / "checkpoint" / "state.safetensors"
    state = load_file(str(path))
    state.pop("rng.generator")
    save_file(state, str(path))
    before = _digest(run)
    _fails(capsys, ["train", "--resume", "--out", run, "--steps", 3], "does not fit this run")
    assert {k: v for k, v in _digest(run).items() if k != ".lock"} == {k: v for k, v in before.items() if k != ".lock"}


def test_non_finite_weights_are_refused_and_never_sampled(run, tmp_path, capsys):
    path = run / "checkpoint" / "ema.safetensors"
    ema = load_file(str(path))
    key = next(k for k, v in ema.items() if v.is_floating_point())
    ema[key] = torch.full_like(ema[key], float("nan"))
    save_file(ema, str(path))
    _fails(capsys, ["sample", run, "--out", tmp_path / "a.npy"], "non-finite weights", key)
    _fails(capsys, ["train", "--resume", "--out", run, "--steps", 3], "non-finite weights")
    assert not (tmp_path / "a.npy").exists() and ckpt.read_state(run)["step"] == 2


def test_a_disk_full_during_a_checkpoint_keeps_the_previous_one(run, monkeypatch, capsys):
    """The writer fails as a full disk makes it fail; the run stops with one line and the previous
    checkpoint loads as it was."""
    before = {k: v for k, v in _digest(run).items() if k.startswith("checkpoint/")}

    def full(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(ckpt, "save_file", full)
    _fails(capsys, ["train", "--resume", "--out", run, "--steps", 3, "--no-progress"], "No space left", "kept")
    assert {k: v for k, v in _digest(run).items() if k.startswith("checkpoint")} == before


def test_non_finite_guidance_is_refused():
    from kuosan.app import text_to_image
    from kuosan.config import ConfigError

    for bad in (float("nan"), float("inf")):
        with pytest.raises(ConfigError, match="guidance must be a finite number"):
            text_to_image("nowhere", "a red circle", guidance=bad)


def test_the_summary_of_a_finished_run_is_json(run):
    """The bad-input tests above leave the copied run usable: it resumes and finishes."""
    r = kuosan("train", "--resume", "--out", run, "--steps", 3, "--no-progress")
    assert json.loads(r.stdout)["step"] == 3


def test_a_pickle_named_safetensors_is_refused_unread(run, tmp_path, capsys):
    """A checkpoint file replaced by a pickle is refused as corrupt: it is never unpickled (the pickle
    would write a file if it were)."""
    import pickle

    marker = tmp_path / "unpickled"

    class Payload:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    (run / "checkpoint" / "ema.safetensors").write_bytes(pickle.dumps(Payload()))
    _fails(capsys, ["sample", run, "--out", tmp_path / "a.npy"], "corrupt checkpoint file", "ema.safetensors")
    assert not marker.exists()


def test_weights_that_overflow_in_the_last_step_are_never_saved(tmp_path, capsys):
    """A step can overflow the weights with a finite loss (here lr=1e45): the save refuses them, so no
    checkpoint of non-finite weights is ever written, and the exit status is not 0."""
    out = tmp_path / "x"
    argv = ["train", "--preset", "digits", "--steps", 1, "--out", out, "--no-progress", *TINY, "train.lr=1e45"]
    _fails(capsys, argv, "became non-finite", "no checkpoint had been written yet", code=1)
    assert not (out / "checkpoint").exists()


def test_a_failed_write_keeps_the_earlier_file(run, tmp_path, monkeypatch, capsys):
    """A write that fails midway (numpy's short write on a full disk) leaves the file an earlier
    command wrote there whole, and no partial file beside it."""
    out = tmp_path / "a.npy"
    assert main(["sample", str(run), "-n", "4", "--out", str(out)]) == 0
    capsys.readouterr()
    before = out.read_bytes()

    def short_write(path, array):
        Path(path).write_bytes(b"\x93NUMPY partial")
        raise OSError("1280000 requested and 87008 written")

    monkeypatch.setattr(np, "save", short_write)
    _fails(capsys, ["sample", run, "-n", 4, "--out", out], str(out), "87008 written", "kept", code=1)
    assert out.read_bytes() == before and sorted(p.name for p in tmp_path.iterdir()) == ["a.npy", "run"]


def test_an_out_folder_that_takes_no_files_fails_before_any_work(run, capsys):
    """Permission bits say nothing for root or /proc: the folder is tried by making a file in it."""
    if not Path("/proc/self").is_dir():
        pytest.skip("needs /proc")
    _fails(capsys, ["sample", run, "--out", "/proc/a.npy"], "--out: /proc is not writable")
    _fails(capsys, ["train", "--preset", "digits", "--steps", 1, "--out", "/proc/run", *TINY], "/proc/run")


def test_weights_of_another_network_name_what_differs(run, tmp_path, capsys):
    config = json.loads((run / "checkpoint" / "config.json").read_text())
    config["model"]["params"]["base_channels"] = 16
    (run / "checkpoint" / "config.json").write_text(json.dumps(config))
    _fails(capsys, ["sample", run, "--out", tmp_path / "a.npy"], "do not fit", "of another shape", "saved")


def test_a_run_killed_before_its_first_checkpoint_says_what_to_do(tmp_path, capsys):
    """kill -9 before the first checkpoint leaves a log and a partial checkpoint.tmp: nothing to resume,
    nothing overwritten, and the one line says how to start again."""
    out = tmp_path / "run"
    (out / "checkpoint.tmp").mkdir(parents=True)
    (out / "log.jsonl").write_text('{"step": 1, "loss": 1.0}\n')
    _fails(capsys, ["train", "--preset", "digits", "--steps", 1, "--out", out, *TINY], "before its first", "remove")
    _fails(capsys, ["train", "--resume", "--out", out, "--steps", 1], "before its first checkpoint", "remove")
    assert (out / "log.jsonl").read_text() == '{"step": 1, "loss": 1.0}\n'
