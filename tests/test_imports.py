"""The import graph of the three packages has no cycle, function-level imports included."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("clipcore", "clipsep", "clipsonic")


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported_modules(path: Path, modules: set[str]) -> set[str]:
    """The project modules ``path`` imports anywhere (top level, functions, TYPE_CHECKING)."""
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            targets = [f"{base}.{alias.name}" for alias in node.names] + [base]
        else:
            continue
        for target in targets:
            while target and target not in modules:
                target = target.rpartition(".")[0]
            if target and target != name:
                found.add(target)
    return found


def import_graph() -> dict[str, set[str]]:
    files = [file for package in PACKAGES for file in sorted((ROOT / package).rglob("*.py"))]
    modules = {module_name(file) for file in files}
    return {module_name(file): imported_modules(file, modules) for file in files}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle (``[a, b, ..., a]``), or None."""
    state: dict[str, str] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = "open"
        stack.append(node)
        for target in sorted(graph.get(node, ())):
            if state.get(target) == "open":
                return stack[stack.index(target):] + [target]
            if target not in state and (cycle := visit(target)):
                return cycle
        state[node] = "done"
        stack.pop()
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def test_the_cycle_finder_finds_a_cycle_three_modules_long():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a", "d"}, "d": set()}
    assert find_cycle(graph) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": set()}) is None


def test_function_level_imports_are_edges():
    graph = import_graph()
    assert "clipsep.separate" in graph["clipsep.batch"]  # imported inside SeparatorSpec.load


def test_no_import_cycle_in_the_packages():
    cycle = find_cycle(import_graph())
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_package_roots_export_lazily():
    """``from clipsep import Separator`` works, yet importing the package root (as the
    command lines do for ``--help``) imports none of the heavy modules."""
    code = ("import sys, clipsep, clipsonic; "
            "heavy = [m for m in ('open_clip', 'diffusers', 'clipsep.separate', 'clipsonic.generate') if m in sys.modules]; "
            "assert not heavy, heavy; "
            "from clipsep import Separator, SeparatorSpec; from clipsonic import Generator; "
            "import clipsep.separate, clipsonic.generate; "
            "assert Separator is clipsep.separate.Separator and Generator is clipsonic.generate.Generator")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT)
