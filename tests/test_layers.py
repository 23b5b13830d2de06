"""The package imports downward only, and no modules import each other in a circle (README: Architecture).

Read from the source (every import statement, also those inside functions), so an import that
only runs on some code path counts as well.
"""

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# Lowest first: a module may import its own package and any package of a lower layer.
LAYERS = [
    ["host_memory"],
    ["errors"],
    ["ranges"],
    ["data"],
    ["extract"],
    ["cache"],
    ["models"],
    ["metrics"],
    ["train"],
    ["config"],
    ["eval"],
    ["report", "browse", "bench", "export"],
]
LAYER = {package: level for level, packages in enumerate(LAYERS) for package in packages}


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports(path: Path) -> set[str]:
    """The ctxsae modules ``path`` imports (``from ctxsae.x import y`` counts as ctxsae.x.y where that is a module)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.startswith("ctxsae")}
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("ctxsae"):
            for a in node.names:
                sub = f"{node.module}.{a.name}"
                is_module = (ROOT / Path(*sub.split("."))).is_dir() or (ROOT / Path(*sub.split("."))).with_suffix(".py").exists()
                found.add(sub if is_module else node.module)
    return found


def graph() -> dict[str, set[str]]:
    return {module_name(p): imports(p) for p in sorted((ROOT / "ctxsae").rglob("*.py"))}


def package_of(module: str) -> str:
    return module.split(".")[1] if module.count(".") else ""


def test_every_package_has_a_layer():
    packages = {package_of(m) for m in graph() if m != "ctxsae"}
    assert packages <= set(LAYER), f"add {sorted(packages - set(LAYER))} to LAYERS"


def test_imports_run_downward_only():
    upward = [f"{m} -> {i}" for m, targets in graph().items() if m != "ctxsae" for i in targets
              if package_of(i) != package_of(m) and LAYER[package_of(i)] >= LAYER[package_of(m)]]
    assert upward == []


def test_no_import_circle():
    edges = graph()
    state: dict[str, int] = {}  # 1: on the current path, 2: done

    def visit(m: str, path: list[str]) -> None:
        state[m] = 1
        for nxt in sorted(edges.get(m, ())):
            nxt = nxt if nxt in edges else nxt.rsplit(".", 1)[0]  # `from pkg import name`: the package
            assert state.get(nxt) != 1, " -> ".join([*path, m, nxt])
            if nxt in edges and nxt not in state:
                visit(nxt, [*path, m])
        state[m] = 2

    for m in edges:
        if m not in state:
            visit(m, [])
