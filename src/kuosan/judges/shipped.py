"""Small networks whose weights ship with kuosan (digit and shapes classifiers, the shapes CLIP): one
safetensors file each, with the constructor arguments as JSON in the file's metadata, so the file alone
rebuilds the network (nothing is unpickled)."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import load_file


def read_shipped_metadata(path: str | Path, *, what: str, script: str) -> dict[str, str]:
    """The safetensors metadata of a weights file; FileNotFoundError naming the script that re-creates it."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(
            f"{what} weights not found at {path} (the package ships them in "
            f"kuosan/judges/weights/; re-create them with {script})"
        )
    with safe_open(str(path), framework="pt") as f:
        return f.metadata() or {}


def load_shipped(
    path: str | Path, build: Callable[[dict, dict], torch.nn.Module], *, what: str, script: str
) -> torch.nn.Module:
    """``build(config, metadata)`` with the file's JSON "config" (lists named "channels" as tuples),
    loaded with the file's weights, in eval mode."""
    metadata = read_shipped_metadata(path, what=what, script=script)
    config = json.loads(metadata.get("config", "{}"))
    if "channels" in config:
        config["channels"] = tuple(config["channels"])
    model = build(config, metadata)
    model.load_state_dict(load_file(str(path)))
    return model.eval()
