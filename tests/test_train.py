"""Trainer behaviour: exact resume, EMA, checkpoints, divergence."""
import hashlib
from pathlib import Path

import pytest
import torch

from kuosan.build import build_trainer, load_run
from kuosan.config import resolve_config
from kuosan.train import TrainingDiverged, ema_decay_at
from kuosan.train import checkpoint as ckpt

from train_helpers import assert_resume_equals_uninterrupted, checkpoint_tensors

TINY = ["model.params.base_channels=8", "model.params.num_res_blocks=1", "model.params.dropout=0.1",
        "train.batch_size=8", "train.warmup_steps=2", "train.log_every=1"]


def _cfg(*extra):
    return resolve_config("digits", None, TINY + list(extra))



def _digest(run: Path) -> dict:
    return {f.name: hashlib.sha256(f.read_bytes()).hexdigest() for f in sorted((run / "checkpoint").iterdir())}


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_resume_equals_uninterrupted(tmp_path, precision):
    """3 steps, stop, resume for 3 more == 6 steps straight: weights, EMA, optimizer and RNG bitwise."""
    assert_resume_equals_uninterrupted(lambda: _cfg(f"train.precision={precision}"), tmp_path)


def test_ema_is_the_running_average(tmp_path):
    assert ema_decay_at(0, 0.999) == pytest.approx(0.1) and ema_decay_at(10**6, 0.999) == 0.999
    tr = build_trainer(_cfg("train.ema_decay=0.5", "train.ema_warmup=false"), tmp_path, progress=False)
    p0 = [p.detach().clone() for p in tr.net.parameters()]
    tr.train_step()
    for e, p, q in zip(tr.ema.shadow.parameters(), tr.net.parameters(), p0):
        assert torch.allclose(e, 0.5 * q + 0.5 * p.detach(), atol=1e-7)


def test_nan_loss_stops_and_keeps_last_good_checkpoint(tmp_path):
    cfg = _cfg()
    tr = build_trainer(cfg, tmp_path, progress=False)
    tr.fit(steps=2)
    before = _digest(tmp_path)
    data = tr.data.clone()
    data[:] = float("nan")
    bad = build_trainer(cfg, tmp_path, data=data, progress=False)
    bad.resume()
    with pytest.raises(TrainingDiverged, match="loss became nan at step 2"):
        bad.fit(steps=5)
    assert _digest(tmp_path) == before


def test_checkpoint_swap_is_atomic(tmp_path):
    tr = build_trainer(_cfg(), tmp_path, progress=False)
    tr.fit(steps=1)
    # a crash between the two renames leaves only checkpoint.old: it is found and loads
    (tmp_path / "checkpoint").rename(tmp_path / "checkpoint.old")
    cfg, net = load_run(tmp_path)
    assert net.data_shape == (1, 8, 8)
    # a half-written new checkpoint (checkpoint.tmp) is never read
    (tmp_path / "checkpoint.tmp").mkdir()
    assert ckpt.find_checkpoint(tmp_path) == tmp_path / "checkpoint.old"


def test_corrupt_checkpoint_is_a_clear_error(tmp_path):
    tr = build_trainer(_cfg(), tmp_path, progress=False)
    tr.fit(steps=1)
    (tmp_path / "checkpoint" / "ema.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(ckpt.CheckpointError, match="corrupt checkpoint file"):
        load_run(tmp_path)


def test_log_and_pictures_are_written(tmp_path):
    tr = build_trainer(_cfg("train.sample_every=2", "sample.steps=2"), tmp_path, progress=False)
    tr.fit(steps=2)
    lines = (tmp_path / "log.jsonl").read_text().splitlines()
    assert len(lines) == 2 and '"loss"' in lines[0]
    assert (tmp_path / "samples" / "step_0000002.png").is_file()


def test_compiled_training_computes_the_same_gradients(tmp_path):
    """train.compile=true (torch.compile of the network): the compiled module gives eager's loss and
    gradients on the same batch to float tolerance, it trains, and the checkpoint keeps the plain
    parameter names. (Weights after Adam steps are not compared with eager training's: Adam's first step
    moves every weight by lr * sign(g), so rounding that flips a near-zero gradient's sign differs by 2 lr.)"""
    cfg = resolve_config("toy2d", None, ["model.params.hidden=32", "model.params.depth=2", "train.batch_size=64",
                                         "data.n=512", "train.warmup_steps=2", "train.compile=true"])
    tr = build_trainer(cfg, tmp_path / "run", progress=False)
    assert tr.model is not tr.net
    x0, drawn = tr.draw_batch()
    grads = []
    for module in (tr.net, tr.model):
        tr.net.zero_grad(set_to_none=True)
        loss = tr.objective.loss(module, x0, **drawn).mean()
        loss.backward()
        grads.append((loss.detach(), [p.grad.clone() for p in tr.net.parameters()]))
    torch.testing.assert_close(grads[0][0], grads[1][0], rtol=1e-5, atol=1e-6)
    for g_eager, g_compiled in zip(grads[0][1], grads[1][1]):
        torch.testing.assert_close(g_eager, g_compiled, rtol=1e-4, atol=1e-6)
    before = {k: v.clone() for k, v in tr.net.state_dict().items()}
    assert tr.fit(steps=3)["step"] == 3
    saved = checkpoint_tensors(tmp_path / "run")["model"]
    assert saved.keys() == before.keys()
    assert all(torch.equal(saved[k], v) for k, v in tr.net.state_dict().items())
    assert not all(torch.equal(saved[k], before[k]) for k in saved)
