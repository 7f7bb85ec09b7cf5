"""The one-way import graph of docs/architecture.md: every module of kuosan, the top layer and the
CLI included, imports only rooms below its own; and no module imports one that imports it back.

Every import statement counts, also those inside functions (a function-local import hides a
circle from Python but not from a reader)."""

import ast
from pathlib import Path

import kuosan

ROOT = Path(kuosan.__file__).parent

# rooms from the bottom up; a room may import the rooms of LAYERS[room] (and itself)
LAYERS = {
    "utils": set(),
    "devices": {"utils"},  # the device and precision policy
    "ops": {"utils"},
    "imaging": {"utils"},
    "plots": {"utils", "imaging"},  # pictures drawn with matplotlib: curves, trajectories, score fields
    "config": {"presets"},  # presets: the TOML parser and the named presets
    "presets": set(),
    "networks": {"utils", "ops"},
    "data": {"utils"},
    "diffusion": {"utils"},
    "samplers": {"utils", "devices", "diffusion"},
    "losses": {"utils", "diffusion"},
    "metrics": {"utils", "networks"},
    "judges": {"utils", "data", "networks", "metrics"},
    "train": {"utils", "devices", "diffusion", "losses", "imaging"},
    "interop": {"utils", "devices", "diffusion", "networks"},  # other libraries' checkpoints in, exports out
    "distill": {"utils", "devices", "diffusion"},  # score distillation on the Denoiser contract
}
LAYERS["build"] = {
    "config",
    "presets",
    "data",
    "devices",
    "diffusion",
    "losses",
    "networks",
    "samplers",
    "utils",
    "train",
}
LAYERS["init_from"] = LAYERS["build"] | {"build", "interop"}  # a new run's weights and its LoRA adapter
LAYERS["runs"] = LAYERS["init_from"] | {"init_from"}
LAYERS["pipelines"] = LAYERS["runs"] | {"runs"}
LAYERS["app"] = LAYERS["pipelines"] | {"pipelines", "metrics", "judges", "imaging", "ops", "distill", "plots"}
LAYERS["web"] = LAYERS["app"] | {"app"}  # kuosan serve: the web app over the application functions
LAYERS["cli"] = LAYERS["web"] | {"web"}
LAYERS["__main__"] = {"cli"}
LAYERS["__init__"] = set(LAYERS) - {"__main__", "__init__"}  # lazily, by name (kuosan.__getattr__)


def _room(module: str) -> str:
    """kuosan.a.b -> a; kuosan.a -> a."""
    return module.split(".")[1] if module.count(".") else module


def _module_name(path: Path) -> str:
    rel = path.relative_to(ROOT.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts = parts[:-1] if len(parts) > 1 else parts
    return ".".join(parts)


def _is_module(name: str) -> bool:
    path = ROOT.parent / name.replace(".", "/")
    return path.with_suffix(".py").exists() or (path / "__init__.py").exists()


def _imports(path: Path) -> set[str]:
    """The kuosan modules a file imports (absolute names, relative imports resolved)."""
    tree = ast.parse(path.read_text())
    package = _module_name(path) if path.name == "__init__.py" else _module_name(path).rsplit(".", 1)[0]
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.startswith("kuosan")}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            if mod.startswith("kuosan"):
                # `from kuosan.x import y` imports the submodule kuosan.x.y when there is one, else
                # the name y of kuosan.x
                subs = {f"{mod}.{a.name}" for a in node.names if _is_module(f"{mod}.{a.name}")}
                found |= subs
                if len(subs) < len(node.names):
                    found.add(mod)
    return found


def _graph() -> dict[str, set[str]]:
    return {_module_name(p): _imports(p) for p in ROOT.rglob("*.py")}


def test_every_room_is_placed():
    rooms = {
        p.name.removesuffix(".py")
        for p in ROOT.iterdir()
        if p.suffix == ".py" or (p.is_dir() and (p / "__init__.py").exists())
    }
    assert rooms <= set(LAYERS), rooms - set(LAYERS)


def test_rooms_import_only_rooms_below():
    bad = []
    for module, targets in _graph().items():
        room = "__init__" if module == "kuosan" else _room(module)
        for target in targets:
            other = _room(target)
            if target != "kuosan" and other != room and other not in LAYERS[room]:
                bad.append(f"{module} imports {target}")
    assert not bad, bad


def test_no_module_imports_one_that_imports_it_back():
    """No circle of any length between modules (the package __init__ files count as modules)."""
    graph = _graph()
    edges = {m: {t for t in ts if t in graph and t != m} for m, ts in graph.items() if m != "kuosan"}
    state, cycles = {}, []

    def visit(m, stack):
        state[m] = "open"
        stack.append(m)
        for t in sorted(edges.get(m, ())):
            if state.get(t) == "open":
                cycles.append(stack[stack.index(t) :] + [t])
            elif t not in state:
                visit(t, stack)
        stack.pop()
        state[m] = "done"

    for m in sorted(edges):
        if m not in state:
            visit(m, [])
    assert not cycles, [" -> ".join(c) for c in cycles]


def test_the_graph_sees_function_local_imports(tmp_path):
    """The checker reads imports inside functions and resolves relative ones."""
    assert "kuosan.app" in _imports(ROOT / "cli" / "commands.py")
    assert "kuosan.ops" in _imports(ROOT / "networks" / "blocks.py")
    assert "kuosan.networks.attention" in _imports(ROOT / "networks" / "unet.py")  # from .attention import ...
