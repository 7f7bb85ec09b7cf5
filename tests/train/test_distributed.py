"""Data-parallel training with torchrun (gloo): 2 processes take the steps 1 process takes with the
same global batch, and an interrupted DDP run resumes to where an uninterrupted one ends."""

import os
import subprocess
import sys

import pytest
import torch

from kuosan.train import checkpoint as ckpt

pytestmark = pytest.mark.slow  # two processes each, minutes of set-up on 2 cores

TINY = [
    "--preset",
    "digits",
    "--no-progress",
    "model.params.base_channels=8",
    "model.params.num_res_blocks=1",
    "train.batch_size=16",
    "train.warmup_steps=2",
    "train.precision=fp32",
    "sample.steps=2",
]


def _run(out, steps, nproc=1, *extra):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    launcher = (
        [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}"]
        if nproc > 1
        else [sys.executable]
    )
    r = subprocess.run(
        [*launcher, "-m", "kuosan", "train", "--out", str(out), "--steps", str(steps), *TINY, *extra],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    return r


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("ddp")
    _run(root / "single", 4)
    _run(root / "ddp", 4, 2)
    _run(root / "ddp_resumed", 2, 2)
    _run(root / "ddp_resumed", 4, 2, "--resume")
    _run(root / "accum", 4, 1, "train.grad_accum=2")
    return root


def _weights(run):
    return ckpt.load_tensors(run, "model")


def _init_weights():
    from kuosan.build import build_network
    from kuosan.config import resolve_config

    torch.manual_seed(0)  # the trainer's initialisation: build_trainer seeds with train.seed = 0
    cfg = resolve_config("digits", None, [a for a in TINY if "=" in a])
    return build_network(cfg, (1, 8, 8)).state_dict()


def test_two_processes_equal_one(runs):
    """2 processes x 8 samples == 1 process x (2 micro-batches of 8), bit for bit; and == 1 process x
    16 up to floating-point rounding of the batch mean (which Adam's normalisation amplifies for
    parameters whose gradients are near zero, so the comparison is relative to the whole update)."""
    single, accum, ddp = _weights(runs / "single"), _weights(runs / "accum"), _weights(runs / "ddp")
    assert ckpt.read_state(runs / "ddp")["world_size"] == 2
    assert all(torch.equal(accum[k], ddp[k]) for k in ddp)
    init = _init_weights()
    diff = sum(((single[k] - ddp[k]) ** 2).sum() for k in single).sqrt()
    update = sum(((single[k] - init[k]) ** 2).sum() for k in single).sqrt()
    assert update > 0.1 and diff < 1e-2 * update, (diff, update)


def test_ddp_resume_equals_uninterrupted(runs):
    a, b = _weights(runs / "ddp"), _weights(runs / "ddp_resumed")
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert ckpt.read_state(runs / "ddp_resumed")["step"] == 4


def test_two_processes_each_decode_their_slice_of_a_streamed_folder(tmp_path):
    """A streamed image folder under torchrun: each process decodes its own half of the global batch
    (data/streaming.py), so 2 processes x 8 == 1 process x 2 micro-batches of 8, bit for bit."""
    import numpy as np
    from PIL import Image

    folder = tmp_path / "pngs"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for k in range(24):
        Image.fromarray(rng.integers(0, 256, (10, 9), dtype=np.uint8), "L").save(folder / f"{k}.png")
    data = [f"data.name=folder:{folder}", "data.size=8", "data.loader=stream", "data.workers=1", "data.flip=true"]
    _run(tmp_path / "ddp", 3, 2, *data)
    _run(tmp_path / "accum", 3, 1, "train.grad_accum=2", *data)
    ddp, accum = _weights(tmp_path / "ddp"), _weights(tmp_path / "accum")
    assert ckpt.read_state(tmp_path / "ddp")["world_size"] == 2
    assert all(torch.equal(accum[k], ddp[k]) for k in ddp)
