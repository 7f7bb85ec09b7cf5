"""Two-dimensional toy distributions for diffusion: two moons, swiss roll, 8 Gaussians, checkerboard.

Each sampler draws from a fixed distribution with torch ops driven by ``generator`` (never a global or
scikit-learn RNG), so a seeded generator gives the same points on every call and machine.

Standardisation. Every distribution is moved and scaled by *fixed* constants (derived in closed form
below, never estimated from the batch) so that it has mean 0 and ``E|x|^2 = 2``, i.e. unit variance
per coordinate averaged over the two axes. The scaling is the same on both axes, so each shape keeps
its aspect ratio (the per-axis variances of moons and swiss roll therefore differ somewhat from 1).

- ``moons``: scikit-learn's ``make_moons`` shape. Upper arc ``(cos t, sin t)``, lower arc
  ``(1 - cos t, 1/2 - sin t)``, ``t ~ U[0, pi]``, arc chosen with probability 1/2, plus Gaussian
  noise of std 0.1; then centred at (0.5, 0.25) and scaled by ``1 / sqrt(0.507) ~ 1.404``.
- ``swissroll``: scikit-learn's 2-D swiss roll ``(t cos t, t sin t)``, ``t ~ U[1.5 pi, 4.5 pi]``,
  plus Gaussian noise of std 0.5; then centred at ``(2, 2 / (3 pi))`` and scaled by ``~ 1/6.81``.
- ``8gaussians``: an equal mixture of 8 isotropic Gaussians centred on a circle of radius
  ``r = sqrt(64/33) ~ 1.393`` at angles ``2 pi k / 8``, std ``r / 8 ~ 0.174`` (FFJORD's ratio).
- ``checkerboard``: uniform on the 8 "black" squares of a 4x4 board (squares ``(i, j)`` with
  ``i + j`` even, ``i, j`` in -2..1) of side 1 on ``[-2, 2]^2``, scaled by ``sqrt(3)/2 ~ 0.866``:
  the board covers ``[-sqrt 3, sqrt 3]^2`` with squares of side ``CHECKERBOARD_SQUARE ~ 0.866``.
"""

from __future__ import annotations

import math

import torch

from kuosan.data.errors import DataError

TOY2D_NAMES = ("moons", "swissroll", "8gaussians", "checkerboard")

MOONS_NOISE = 0.1
SWISSROLL_NOISE = 0.5
EIGHT_GAUSSIANS_RADIUS = math.sqrt(64.0 / 33.0)  # r^2 (1 + 2/64) = 2
EIGHT_GAUSSIANS_STD = EIGHT_GAUSSIANS_RADIUS / 8.0
CHECKERBOARD_SQUARE = math.sqrt(3.0) / 2.0  # x uniform on [-2, 2] has E x^2 = 4/3 per axis

# Moons: x has between-arc variance 1/4 plus within-arc variance Var(cos t) = 1/2; y has within-arc
# variance Var(sin t) = 1/2 - 4/pi^2 plus between-arc variance (2/pi - 1/4)^2.
_MOONS_MEAN = (0.5, 0.25)
_MOONS_VAR = (0.75 + (0.5 - 4 / math.pi**2 + (2 / math.pi - 0.25) ** 2)) / 2 + MOONS_NOISE**2
# Swiss roll, t ~ U[a, b] = U[1.5 pi, 4.5 pi]: E[t cos t] = (a + b)/(b - a) = 2,
# E[t sin t] = 2 / (3 pi), E[t^2] = (b^3 - a^3) / (3 (b - a)) = 9.75 pi^2.
_SWISSROLL_MEAN = (2.0, 2.0 / (3.0 * math.pi))
_SWISSROLL_VAR = (9.75 * math.pi**2 - _SWISSROLL_MEAN[0] ** 2 - _SWISSROLL_MEAN[1] ** 2) / 2 + SWISSROLL_NOISE**2


def _device(generator: torch.Generator | None) -> torch.device:
    return generator.device if generator is not None else torch.device("cpu")


def _uniform(n: int, generator: torch.Generator | None) -> torch.Tensor:
    return torch.rand(n, generator=generator, device=_device(generator))


def _normal(n: int, generator: torch.Generator | None) -> torch.Tensor:
    return torch.randn(n, 2, generator=generator, device=_device(generator))


def _coin(n: int, high: int, generator: torch.Generator | None) -> torch.Tensor:
    return torch.randint(0, high, (n,), generator=generator, device=_device(generator))


def _standardise(x: torch.Tensor, mean: tuple[float, float], var: float) -> torch.Tensor:
    return (x - x.new_tensor(mean)) / math.sqrt(var)


def _moons(n: int, generator: torch.Generator | None) -> torch.Tensor:
    t = math.pi * _uniform(n, generator)
    lower = _coin(n, 2, generator).bool()
    upper_arc = torch.stack([torch.cos(t), torch.sin(t)], dim=1)
    lower_arc = torch.stack([1.0 - torch.cos(t), 0.5 - torch.sin(t)], dim=1)
    x = torch.where(lower[:, None], lower_arc, upper_arc) + MOONS_NOISE * _normal(n, generator)
    return _standardise(x, _MOONS_MEAN, _MOONS_VAR)


def _swissroll(n: int, generator: torch.Generator | None) -> torch.Tensor:
    t = 1.5 * math.pi * (1.0 + 2.0 * _uniform(n, generator))
    x = torch.stack([t * torch.cos(t), t * torch.sin(t)], dim=1) + SWISSROLL_NOISE * _normal(n, generator)
    return _standardise(x, _SWISSROLL_MEAN, _SWISSROLL_VAR)


def _eight_gaussians(n: int, generator: torch.Generator | None) -> torch.Tensor:
    angle = _coin(n, 8, generator).float() * (2.0 * math.pi / 8.0)
    centres = EIGHT_GAUSSIANS_RADIUS * torch.stack([torch.cos(angle), torch.sin(angle)], dim=1)
    return centres + EIGHT_GAUSSIANS_STD * _normal(n, generator)


def _checkerboard(n: int, generator: torch.Generator | None) -> torch.Tensor:
    x = 4.0 * _uniform(n, generator) - 2.0  # column i = floor(x) in -2..1, uniform
    column = torch.floor(x)
    # Rows j in -2..1 with i + j even: {-2, 0} for even i, {-1, 1} for odd i.
    row = 2.0 * _coin(n, 2, generator).float() - 2.0 + torch.remainder(column, 2.0)
    y = row + _uniform(n, generator)
    return CHECKERBOARD_SQUARE * torch.stack([x, y], dim=1)


_SAMPLERS = {
    "moons": _moons,
    "swissroll": _swissroll,
    "8gaussians": _eight_gaussians,
    "checkerboard": _checkerboard,
}


def sample_toy2d(name: str, n: int, *, generator: torch.Generator | None = None) -> torch.Tensor:
    """Draw ``n`` points of the toy distribution ``name`` (one of ``TOY2D_NAMES``): shape (n, 2), float32.

    Points are standardised to mean 0 and ``E|x|^2 = 2`` (see the module docstring for each shape's
    constants). They live on ``generator.device`` (CPU without a generator).
    """
    if name not in _SAMPLERS:
        raise DataError(f"unknown toy2d dataset {name!r}; known: {', '.join(TOY2D_NAMES)}")
    if isinstance(n, bool) or not isinstance(n, int) or n < 0:
        raise DataError(f"toy2d {name}: n must be a non-negative integer, got {n!r}")
    return _SAMPLERS[name](n, generator).to(torch.float32)
