"""SIGINT (Ctrl-C) and SIGTERM (docker stop, Slurm, Kubernetes) stop training at a step boundary with a
checkpoint, and a resume from it ends bitwise equal to a run never stopped; a second Ctrl-C stops at
once and saves nothing. The signals are sent to a `kuosan train` subprocess at random moments, as the
operating system sends them."""

import random
import shutil
import signal
import subprocess
import sys
import time

import pytest
import torch

from cli_helpers import kuosan
from kuosan.train import checkpoint as ckpt
from train_helpers import checkpoint_tensors

STEPS = 14
TINY = [
    "model.params.base_channels=8",
    "model.params.num_res_blocks=1",
    "train.batch_size=8",
    "train.log_every=1",
    "train.checkpoint_every=1000",
    "sample.steps=2",
]


def _argv(out, *extra):
    return ["train", "--out", str(out), "--steps", str(STEPS), "--no-progress", *extra]


def _train(out, *extra):
    """The command of a training that is to receive signals: its own process."""
    return [sys.executable, "-m", "kuosan", *_argv(out, *extra)]


@pytest.fixture(scope="module")
def straight(tmp_path_factory):
    out = tmp_path_factory.mktemp("straight") / "run"
    kuosan(*_argv(out, "--preset", "digits", "--seed", "0", *TINY))
    return checkpoint_tensors(out)


def _logged_steps(out) -> int:
    try:
        return len((out / "log.jsonl").read_text().splitlines())
    except FileNotFoundError:
        return 0


def _stop_and_resume(tmp_path, signum, rng: random.Random, name: str):
    """Train, signal after a random number of logged steps (and a random fraction of a step), resume;
    returns (the interrupted run's exit status, the step it saved, its final tensors)."""
    out = tmp_path / name
    proc = subprocess.Popen(
        _train(out, "--preset", "digits", "--seed", "0", *TINY), stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    wait_for = rng.randint(1, STEPS - 4)
    deadline = time.time() + 300
    while _logged_steps(out) < wait_for and proc.poll() is None and time.time() < deadline:
        time.sleep(0.01)
    time.sleep(rng.random() * 0.05)
    proc.send_signal(signum)
    _, err = proc.communicate(timeout=300)
    saved = ckpt.read_state(out)["step"]
    kuosan(*_argv(out, "--resume"))  # the resume in this process: only the stopped run needs its own
    return proc.returncode, saved, checkpoint_tensors(out), err.decode()


def _assert_bitwise(a, b):
    for part in a:
        assert a[part].keys() == b[part].keys(), part
        for k in a[part]:
            assert torch.equal(a[part][k], b[part][k]), (part, k)


@pytest.mark.parametrize("signum", [signal.SIGTERM, pytest.param(signal.SIGINT, marks=pytest.mark.slow)])
def test_a_signal_saves_at_a_step_boundary_and_resume_is_exact(tmp_path, straight, signum):
    code, saved, tensors, err = _stop_and_resume(tmp_path, signum, random.Random(int(signum)), "run")
    assert code == 128 + signum, err[-2000:]
    assert 0 < saved < STEPS, saved
    _assert_bitwise(straight, tensors)


@pytest.mark.slow
def test_signals_at_random_moments_resume_bitwise(tmp_path, straight):
    """Five SIGINTs and five SIGTERMs at random moments, each run resumed to the end."""
    rng = random.Random(2026)
    for i, signum in enumerate([signal.SIGINT, signal.SIGTERM] * 5):
        code, saved, tensors, err = _stop_and_resume(tmp_path, signum, rng, f"run{i}")
        assert code == 128 + signum, err[-2000:]
        _assert_bitwise(straight, tensors)


def test_a_second_ctrl_c_stops_at_once_and_keeps_the_last_checkpoint(tmp_path):
    """The first SIGINT asks for a stop at the next step boundary; a second one before that stops at
    once (exit 130, one line) and saves nothing more: the checkpoint on disk is the earlier one, whole,
    or (if the first was honoured in between) a newer whole one."""
    out = tmp_path / "run"
    kuosan(*_argv(out, "--preset", "digits", "--seed", "0", *TINY))
    before = checkpoint_tensors(out)
    # a much larger batch makes a step long enough for both signals to land inside it
    cmd = [
        sys.executable,
        "-m",
        "kuosan",
        "train",
        "--resume",
        "--out",
        str(out),
        "--steps",
        "1000",
        "--no-progress",
        "train.batch_size=2048",
    ]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    while _logged_steps(out) < STEPS + 1 and proc.poll() is None:
        time.sleep(0.01)
    proc.send_signal(signal.SIGINT)
    time.sleep(0.02)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=300)
    lines = err.decode().strip().splitlines()
    assert proc.returncode == 130, lines[-3:]
    # the second one lands inside the step (the usual case), or, on a busy machine, only after the
    # first was honoured and its checkpoint written
    assert lines[-1] == "kuosan train: interrupted; nothing more was written" or lines[-1].startswith(
        "stopped by a signal at step"
    ), lines[-3:]
    step = ckpt.read_state(out)["step"]
    after = checkpoint_tensors(out)  # whole: every file loads
    if step == STEPS:
        _assert_bitwise(before, after)
    else:
        assert step > STEPS


@pytest.mark.slow
def test_kill_9_at_random_moments_resumes_bitwise(tmp_path, straight):
    """SIGKILL (the OOM killer, a lost node) cannot be caught: eight of them at random moments after
    training has begun, with a checkpoint every step or two so that some land inside a checkpoint
    write; each time the run is resumed from what is on disk (started again if it had no checkpoint
    yet), and it ends bitwise equal to a run never stopped."""
    rng = random.Random(9)
    out = tmp_path / "run"
    often = ["train.checkpoint_every=0.02"]
    kills = resumed_kills = 0
    while kills < 8:
        if ckpt.find_checkpoint(out) is None:
            shutil.rmtree(out, ignore_errors=True)  # killed before its first checkpoint: start again
            cmd = _train(out, "--preset", "digits", "--seed", "0", *TINY, *often)
        elif ckpt.read_state(out)["step"] >= STEPS - 2:
            break
        else:
            cmd = _train(out, "--resume", *often)
        logged = _logged_steps(out)
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        deadline = time.time() + 300
        while _logged_steps(out) <= logged and proc.poll() is None and time.time() < deadline:
            time.sleep(0.002)
        time.sleep(rng.random() * 0.1)
        proc.kill()
        _, err = proc.communicate(timeout=60)
        assert proc.returncode in (-signal.SIGKILL, 0), err.decode()[-2000:]
        killed = proc.returncode == -signal.SIGKILL
        kills += killed
        resumed_kills += killed and "--resume" in cmd
    if ckpt.find_checkpoint(out) is None:
        shutil.rmtree(out, ignore_errors=True)
        kuosan(*_argv(out, "--preset", "digits", "--seed", "0", *TINY))
    else:
        kuosan(*_argv(out, "--resume"))
    assert resumed_kills >= 3, (kills, resumed_kills)
    _assert_bitwise(straight, checkpoint_tensors(out))
