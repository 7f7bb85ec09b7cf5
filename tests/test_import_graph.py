"""The one-way import graph of DESIGN.md: lower layers never import higher ones."""
import ast
from pathlib import Path

import kuosan

ROOT = Path(kuosan.__file__).parent

# what each package may import from kuosan (besides itself)
ALLOWED = {
    "utils": set(),
    "imaging": {"utils"},
    "networks": {"utils"},
    "data": {"utils"},
    "diffusion": {"utils"},
    "samplers": {"utils", "diffusion"},
    "losses": {"utils", "diffusion"},
    "distill": {"utils", "diffusion", "samplers", "losses", "networks"},
    "metrics": {"utils", "data", "networks"},
    "train": {"utils", "diffusion", "losses", "imaging"},
}


def _kuosan_imports(path: Path, package: str):
    tree = ast.parse(path.read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            if node.level:  # relative: stays inside the package unless it climbs out
                if node.level > 1 or (path.name == "__init__.py" and node.level > 1):
                    yield "?"
                continue
            mod = node.module or ""
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.startswith("kuosan."):
                    yield alias.name.split(".")[1]
            continue
        else:
            continue
        if mod.startswith("kuosan."):
            yield mod.split(".")[1]


def test_import_graph_is_one_way():
    bad = []
    for path in ROOT.rglob("*.py"):
        rel = path.relative_to(ROOT)
        package = rel.parts[0].removesuffix(".py")
        if package not in ALLOWED:
            continue  # top layer: config, build, pipeline(s), cli may import anything
        for target in _kuosan_imports(path, package):
            if target != package and target not in ALLOWED[package]:
                bad.append(f"{rel} imports kuosan.{target}")
    assert not bad, bad


def test_every_layer_is_checked():
    top = {"config", "presets", "build", "pipeline", "pipelines", "cli", "__main__", "__init__"}
    packages = {p.name.removesuffix(".py") for p in ROOT.iterdir()
                if (p.suffix == ".py" or (p.is_dir() and (p / "__init__.py").exists()))}
    assert packages - top <= set(ALLOWED), packages - top - set(ALLOWED)
