"""The layering of STYLE.md: dependencies point one way, public surfaces are explicit."""

from __future__ import annotations

import ast
import importlib
import pkgutil
from pathlib import Path

import scriptgen

SRC = Path(scriptgen.__file__).parent
# Each package may import only the packages listed for it (and itself).
ALLOWED = {
    "errors": set(),
    "params": set(),
    "model": set(),
    "capture": {"errors", "params", "model"},
    "learn": {"errors", "params", "model"},
    "modelfile": {"errors", "model"},
    "emulate": set(),
    "export": set(),
    "serve": {"errors", "params", "model", "modelfile", "emulate"},
    "evaluate": {"errors", "params", "model", "capture", "learn", "modelfile", "emulate"},
    "cli": {"errors", "params", "model", "capture", "learn", "modelfile", "export", "emulate", "serve", "evaluate"},
}


def _imports(path: Path) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("scriptgen."):
            found.add(node.module.split(".")[1])
        elif isinstance(node, ast.Import):
            found |= {a.name.split(".")[1] for a in node.names if a.name.startswith("scriptgen.")}
    return found


def test_dependencies_point_one_way():
    for path in SRC.rglob("*.py"):
        rel = path.relative_to(SRC)
        package = rel.parts[0].removesuffix(".py")
        if package in ("__init__", "__main__"):
            continue
        assert package in ALLOWED, f"{rel}: add its package to ALLOWED"
        bad = _imports(path) - ALLOWED[package] - {package, "__init__"}
        assert not bad, f"{rel} imports {bad}"


def test_every_module_declares_all():
    for info in pkgutil.walk_packages([str(SRC)], "scriptgen."):
        if info.name.startswith("scriptgen.cli") or info.name == "scriptgen.__main__":
            continue
        module = importlib.import_module(info.name)
        assert hasattr(module, "__all__"), info.name
        for name in module.__all__:
            assert hasattr(module, name), f"{info.name}.__all__ names missing {name}"
