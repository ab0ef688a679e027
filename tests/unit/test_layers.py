"""Production code does not import the demo world (engine.demo: face renderer, tiny model builder)."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
PRODUCTION_PACKAGES = ["engine.core", "engine.data", "engine.backends", "engine.synth", "trainer", "actors"]


def test_production_modules_do_not_import_the_demo_world():
    code = ("import importlib, json, pkgutil, sys\n"
            f"for package in {PRODUCTION_PACKAGES!r}:\n"
            "    path = importlib.import_module(package).__path__\n"
            "    for module in pkgutil.iter_modules(path, package + '.'):\n"
            "        importlib.import_module(module.name)\n"
            "print(json.dumps(sorted(m for m in sys.modules if m.startswith(('engine.', 'trainer.', 'actors.')))))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600, cwd=REPO)
    assert done.returncode == 0, done.stderr[-3000:]
    loaded = json.loads(done.stdout.strip().splitlines()[-1])
    assert "engine.backends.hf" in loaded and "trainer.grpo" in loaded  # the modules that used to import it
    assert [m for m in loaded if m.startswith("engine.demo")] == []


def _imported_modules(path: Path) -> set[str]:
    """Every module a file imports, at its top or inside a function."""
    import ast

    names = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            names |= {node.module} | {f"{node.module}.{alias.name}" for alias in node.names}
    return names


def test_no_production_function_imports_the_demo_world_either():
    offenders = {}
    for package in PRODUCTION_PACKAGES:
        for path in sorted((REPO / package.replace(".", "/")).rglob("*.py")):
            demo = sorted(m for m in _imported_modules(path) if m == "engine.demo" or m.startswith("engine.demo."))
            if demo:
                offenders[str(path.relative_to(REPO))] = demo
    assert offenders == {}
