"""Checkpoints: safetensors for every tensor, JSON for everything else; nothing is ever unpickled.

A run directory holds ``checkpoint/`` with

    config.json        the experiment config (rebuilds the network and the diffusion)
    model.safetensors  the trained weights        ema.safetensors  the EMA weights
    state.safetensors  optimizer moments and RNG states       state.json  step, time, optimizer groups

A checkpoint is written to ``checkpoint.tmp/`` and swapped in by renames, so a crash at any moment
leaves either the old or the new checkpoint whole (``checkpoint.old/`` is used if the swap was cut).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file


class CheckpointError(ValueError):
    """A missing, incomplete or corrupt checkpoint."""


FILES = ("config.json", "model.safetensors", "ema.safetensors", "state.safetensors", "state.json")
STATE_KEYS = ("step", "train_seconds", "data_shape")  # what state.json must hold


def _contiguous(sd: dict) -> dict:
    return {k: v.detach().contiguous().clone() for k, v in sd.items()}


def optimizer_to_tensors(opt: torch.optim.Optimizer) -> tuple[dict, dict]:
    """Split an optimizer state dict into flat tensors ``opt.<param>.<key>`` and JSON metadata."""
    sd = opt.state_dict()
    tensors, scalars = {}, {}
    for pid, st in sd["state"].items():
        for key, val in st.items():
            if torch.is_tensor(val):
                # a contiguous CPU copy (any device loads it), made in one step from wherever it is
                tensors[f"opt.{pid}.{key}"] = val.detach().to("cpu", memory_format=torch.contiguous_format, copy=True)
            else:
                scalars[f"{pid}.{key}"] = val
    return tensors, {"param_groups": sd["param_groups"], "scalars": scalars}


def optimizer_from_tensors(opt: torch.optim.Optimizer, tensors: dict, meta: dict) -> None:
    state: dict = {}
    for name, val in tensors.items():
        if name.startswith("opt."):
            _, pid, key = name.split(".", 2)
            state.setdefault(int(pid), {})[key] = val
    for name, val in meta["scalars"].items():
        pid, key = name.split(".", 1)
        state.setdefault(int(pid), {})[key] = val
    opt.load_state_dict({"state": state, "param_groups": meta["param_groups"]})
    # moments come back contiguous; give them their parameter's memory layout (channels-last
    # weights), which the fused AdamW kernel assumes when it walks both buffers in memory order
    for group in opt.param_groups:
        for p in group["params"]:
            st = opt.state.get(p, {})
            for key, val in st.items():
                if torch.is_tensor(val) and val.shape == p.shape and val.stride() != p.stride():
                    st[key] = torch.empty_like(p, dtype=val.dtype).copy_(val)


def save_checkpoint(run_dir: str | Path, *, config: dict, model: dict, ema: dict, tensors: dict, state: dict) -> Path:
    """Write a complete checkpoint atomically; returns its directory."""
    run_dir = Path(run_dir)
    final, tmp, old = run_dir / "checkpoint", run_dir / "checkpoint.tmp", run_dir / "checkpoint.old"
    try:
        return _write_checkpoint(final, tmp, old, config=config, model=model, ema=ema, tensors=tensors, state=state)
    except (OSError, SafetensorError) as e:  # disk full, read-only, ...: the previous checkpoint stays whole
        shutil.rmtree(tmp, ignore_errors=True)
        reason = getattr(e, "strerror", None) or str(e).strip().splitlines()[0]
        raise CheckpointError(f"cannot write a checkpoint in {run_dir} ({reason}); the previous one is kept") from None


def _write_checkpoint(final: Path, tmp: Path, old: Path, *, config, model, ema, tensors, state) -> Path:
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    (tmp / "config.json").write_text(json.dumps(config, indent=2))
    save_file(_contiguous(model), str(tmp / "model.safetensors"))
    save_file(_contiguous(ema), str(tmp / "ema.safetensors"))
    save_file(_contiguous(tensors), str(tmp / "state.safetensors"))
    (tmp / "state.json").write_text(json.dumps(state, indent=2))
    for f in tmp.iterdir():
        with open(f, "rb") as fh:
            os.fsync(fh.fileno())
    if final.exists():
        shutil.rmtree(old, ignore_errors=True)
        final.rename(old)
    tmp.rename(final)
    shutil.rmtree(old, ignore_errors=True)
    return final


# what a training run leaves in its directory; any of them marks the directory as a run's
RUN_TRACES = ("checkpoint", "checkpoint.old", "checkpoint.tmp", "log.jsonl", "samples")


def run_traces(run_dir: str | Path) -> list[str]:
    """The traces of a run in ``run_dir`` (RUN_TRACES that exist), e.g. after its config.json was lost."""
    run_dir = Path(run_dir)
    return [name for name in RUN_TRACES if (run_dir / name).exists()] if run_dir.is_dir() else []


@contextlib.contextmanager
def run_lock(run_dir: str | Path):
    """Hold ``run_dir``'s exclusive lock while a process trains in it (an flock of ``run_dir/.lock``,
    released on any exit, also kill -9: a stale lock cannot exist). CheckpointError (one line) if
    another process holds it."""
    try:
        import fcntl
    except ImportError:  # not POSIX: no lock
        yield
        return
    path = Path(run_dir) / ".lock"
    with open(path, "a+") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            fh.seek(0)
            holder = fh.read().strip() or "another process"
            raise CheckpointError(f"{run_dir} is in use: {holder} is training there; wait for it or stop it") from None
        fh.seek(0)
        fh.truncate()
        fh.write(f"process {os.getpid()}")
        fh.flush()
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def find_checkpoint(run_dir: str | Path) -> Path | None:
    run_dir = Path(run_dir)
    for name in ("checkpoint", "checkpoint.old"):
        if (run_dir / name / "config.json").is_file():
            return run_dir / name
    return None


def read_config(run_dir: str | Path) -> dict:
    ckpt = _require(run_dir)
    try:
        config = json.loads((ckpt / "config.json").read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CheckpointError(f"corrupt {ckpt / 'config.json'}: {e}") from None
    if not isinstance(config, dict):
        raise CheckpointError(f"corrupt {ckpt / 'config.json'}: a config is a JSON object, got {type(config).__name__}")
    return config


def load_tensors(run_dir: str | Path, name: str) -> dict:
    """Load one safetensors file of the checkpoint ("model", "ema" or "state")."""
    path = _require(run_dir) / f"{name}.safetensors"
    if not path.is_file():
        raise CheckpointError(f"incomplete checkpoint: {path} is missing")
    try:
        tensors = load_file(str(path))
    except (SafetensorError, OSError, ValueError) as e:
        raise CheckpointError(f"corrupt checkpoint file {path}: {e}") from None
    key = first_non_finite(tensors) if name in ("model", "ema") else None
    if key is not None:  # weights with NaN or inf would only ever give NaN samples
        raise CheckpointError(
            f"{path} holds non-finite weights (NaN or inf, first in {key!r}); "
            "resume from an earlier copy of the run or retrain"
        )
    return tensors


def first_non_finite(tensors: dict[str, torch.Tensor]) -> str | None:
    """The first key whose floating-point tensor holds a NaN or an infinity, or None."""
    for key, value in tensors.items():
        if value.is_floating_point() and not bool(torch.isfinite(value).all()):
            return key
    return None


def read_state(run_dir: str | Path) -> dict:
    path = _require(run_dir) / "state.json"
    try:
        state = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CheckpointError(f"corrupt or missing {path}: {e}") from None
    missing = [k for k in STATE_KEYS if not isinstance(state, dict) or k not in state]
    if missing:
        raise CheckpointError(f"corrupt {path}: it lacks {', '.join(missing)}")
    return state


def _require(run_dir) -> Path:
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise CheckpointError(f"run directory not found: {run_dir}")
    ckpt = find_checkpoint(run_dir)
    if ckpt is None:
        raise CheckpointError(f"no checkpoint in {run_dir} (expected {run_dir}/checkpoint/config.json)")
    return ckpt
