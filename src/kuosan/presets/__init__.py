"""Named experiment presets: partial config dicts layered on the Config defaults, one TOML file each
in this folder (shipped with the package; ``kuosan train --preset NAME`` or ``--config`` on a copy).

A preset may start from another with a top-level ``extends = "NAME"``: each section it writes
replaces that section of the other preset whole (the NCSN presets swap the diffusion and sample
sections of their DDPM twins and keep the rest).
"""

from __future__ import annotations

import sys
from pathlib import Path

if sys.version_info >= (3, 11):
    import tomllib
else:  # Python 3.10: the same parser, published as tomli
    import tomli as tomllib

HERE = Path(__file__).parent


def _load(name: str, seen: tuple[str, ...] = ()) -> dict:
    if name in seen:
        raise ValueError(f"preset {name!r} extends itself through {' -> '.join(seen)}")
    data = tomllib.loads((HERE / f"{name}.toml").read_text())
    base = data.pop("extends", None)
    return {**_load(base, (*seen, name)), **data} if base else data


PRESETS: dict[str, dict] = {p.stem: _load(p.stem) for p in sorted(HERE.glob("*.toml"), key=lambda p: p.stem)}

__all__ = ["PRESETS"]
