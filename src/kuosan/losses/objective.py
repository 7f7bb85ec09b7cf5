"""The training-objective protocol the Trainer uses.

An objective splits a loss evaluation into its random draw and its deterministic part:

    drawn = objective.draw(x0, generator)     # per-sample random inputs (t, noise, ...), batch-first
    loss = objective.loss(net, x0, **drawn)   # per-sample losses, shape (B,)

so a data-parallel trainer can draw a whole global batch once (the same on every process) and
evaluate each process's slice of it: k processes then take exactly the steps one process would.
"""

from __future__ import annotations

import dataclasses

import torch


class Objective:
    """``to(device)`` moves the objective's constant tensors (schedules, noise levels, prompt
    embeddings) beside the network; the draw stays on the CPU generator (the trainer moves it)."""

    def to(self, device: torch.device | str) -> Objective:
        for name, value in vars(self).items():
            moved = _moved(value, torch.device(device))
            if moved is not value:
                setattr(self, name, moved)
        return self

    def draw(self, x0: torch.Tensor, generator: torch.Generator | None = None) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    def loss(self, net, x0: torch.Tensor, **drawn) -> torch.Tensor:
        raise NotImplementedError

    def __call__(self, net, x0: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        return self.loss(net, x0, **self.draw(x0, generator))


def _moved(value, device: torch.device):
    """``value`` on ``device``: a tensor, an Objective (in place), or a dataclass of tensors (a
    schedule); anything else (numbers, the timestep sampler's CPU history) as it is."""
    if torch.is_tensor(value):
        return value.to(device)
    if isinstance(value, Objective):
        return value.to(device)
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        changes = {
            f.name: getattr(value, f.name).to(device)
            for f in dataclasses.fields(value)
            if torch.is_tensor(getattr(value, f.name))
        }
        return dataclasses.replace(value, **changes) if changes else value
    return value
