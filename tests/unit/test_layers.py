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


def _module_names() -> dict[str, Path]:
    names = {}
    for package in ("engine", "trainer", "actors"):
        for path in (REPO / package).rglob("*.py"):
            parts = path.relative_to(REPO).with_suffix("").parts
            names[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return names


def _project_imports(nodes, modules: dict[str, Path]) -> set[str]:
    """The project modules that these import statements load (a name is resolved to its module)."""
    import ast

    found = set()
    for node in nodes:
        names = [a.name for a in node.names] if isinstance(node, ast.Import) else (
            [node.module] + [f"{node.module}.{a.name}" for a in node.names]
            if isinstance(node, ast.ImportFrom) and node.module else [])
        for name in names:
            while name and name not in modules:
                name = name.rpartition(".")[0]
            if name:
                found.add(name)
    return found


def test_no_import_inside_a_function_hides_a_cycle():
    """A function-level import is for speed (heavy libraries) or the demo, never to dodge a cycle: what it
    imports must not import, at its top, the module that holds the function."""
    import ast

    modules = _module_names()
    at_top, in_functions = {}, {}
    for name, path in modules.items():
        tree = ast.parse(path.read_text(encoding="utf-8"))
        packages = {".".join(name.split(".")[:i]) for i in range(1, name.count(".") + 1)}
        at_top[name] = (_project_imports(tree.body, modules) | (packages & modules.keys())) - {name}
        functions = [n for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))]
        in_functions[name] = _project_imports([n for f in functions for n in ast.walk(f)], modules) - {name}

    def reaches(start: str, goal: str) -> bool:
        seen, todo = set(), [start]
        while todo:
            current = todo.pop()
            if current == goal:
                return True
            if current not in seen:
                seen.add(current)
                todo.extend(at_top[current])
        return False

    hidden = sorted(f"{name} -> {target}" for name, targets in in_functions.items() for target in targets
                    if reaches(target, name))
    assert hidden == []
