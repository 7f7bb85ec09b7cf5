"""The training-objective protocol the Trainer uses.

An objective splits a loss evaluation into its random draw and its deterministic part:

    drawn = objective.draw(x0, generator)     # per-sample random inputs (t, noise, ...), batch-first
    loss = objective.loss(net, x0, **drawn)   # per-sample losses, shape (B,)

so a data-parallel trainer can draw a whole global batch once (the same on every process) and
evaluate each process's slice of it: k processes then take exactly the steps one process would.
"""

from __future__ import annotations

import torch


class Objective:
    def draw(self, x0: torch.Tensor, generator: torch.Generator | None = None) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    def loss(self, net, x0: torch.Tensor, **drawn) -> torch.Tensor:
        raise NotImplementedError

    def __call__(self, net, x0: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        return self.loss(net, x0, **self.draw(x0, generator))
