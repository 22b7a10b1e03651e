"""The import graph of the three packages: no cycle (function-level imports included),
``clipcore`` imports neither system, no production module imports the toy worlds, and the
inference APIs, command lines and audition pages import no training code."""

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
    """``from clipsep import Separator`` works, yet importing the package roots and the
    command lines (as ``--help`` does) imports none of the heavy modules."""
    code = ("import sys, clipsep.cli, clipsonic.cli; "
            "heavy = [m for m in ('open_clip', 'diffusers', 'clipsep.separate', 'clipsonic.generate') if m in sys.modules]; "
            "assert not heavy, heavy; "
            "from clipsep import Separator, SeparatorSpec; from clipsonic import Generator; "
            "import clipsep.separate, clipsonic.generate; "
            "assert Separator is clipsep.separate.Separator and Generator is clipsonic.generate.Generator")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT)


def test_clipcore_imports_neither_system_and_no_production_module_imports_the_toy_worlds():
    """README (Layout): ``clipcore`` is shared by both systems and imports neither of them;
    ``synthetic.py`` (and the quick start's miniature world built on it) serves tests and
    the quick start, and no production module imports it."""
    graph = import_graph()
    assert graph["clipcore.miniature.world"] >= {"clipcore.synthetic"}  # the check below sees such edges
    into_systems = {module: sorted(t for t in targets if not t.startswith("clipcore"))
                    for module, targets in graph.items() if module.startswith("clipcore")}
    assert not {module: targets for module, targets in into_systems.items() if targets}

    def toy(module: str) -> bool:
        return module == "clipcore.synthetic" or module.split(".")[:2] == ["clipcore", "miniature"]

    importers = {module: sorted(filter(toy, targets)) for module, targets in graph.items() if not toy(module)}
    assert not {module: targets for module, targets in importers.items() if targets}


TRAINING_CODE = ("lightning", "pytorch_lightning", "clipcore.training", "clipcore.datamodule", "clipcore.prior_system",
                 "clipsep.system", "clipsonic.system", "clipcore.synthetic")

# Builds tiny models, then separates and generates through the command lines, in one process.
_INFERENCE = """
import sys, tempfile
from pathlib import Path
import torch
from clipcore.audio import save_audio
from clipcore.query import QueryEncoder
from clipsep.model import CLIPSep
from clipsonic.model import CLIPSonic
import clipsep.audition, clipsonic.audition, clipsep.export_command
from clipsep import Separator
from clipsep.cli import main as clipsep_main
from clipsonic.cli import main as clipsonic_main
root = Path(tempfile.mkdtemp())
Separator(CLIPSep.tiny(query_dim=16), QueryEncoder.tiny(embed_dim=16)).save_pretrained(root / "clipsep")
CLIPSonic.tiny(seed=0).save_pretrained(root / "clipsonic")
QueryEncoder.tiny(seed=0).save_pretrained(root / "clipsonic" / "query_encoder")
save_audio(root / "mix.wav", 0.1 * torch.randn(1, 8000), 16000)
assert clipsep_main(["separate", "--checkpoint", str(root / "clipsep"), "-q", "violin", "-o", str(root / "stems"),
                     str(root / "mix.wav")]) == 0
assert clipsonic_main(["generate", "--checkpoint", str(root / "clipsonic"), "violin", "--mode", "zs", "--steps", "1",
                       "--duration", "0.1", "-o", str(root / "clips")]) == 0
assert (root / "stems" / "mix" / "violin.wav").is_file() and (root / "clips" / "violin.wav").is_file()
print("imported:", *[m for m in sys.argv[1:] if m in sys.modules])
"""


def test_inference_apis_command_lines_and_pages_import_no_training_code():
    """README (Layout, audition pages): ``Separator``, ``Generator``, the command lines and
    the audition pages import no training code: a separation and a generation through
    the command lines load neither Lightning nor a training system nor the toy world."""
    done = subprocess.run([sys.executable, "-c", _INFERENCE, *TRAINING_CODE], capture_output=True, text=True, cwd=ROOT,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    (line,) = [line for line in done.stdout.splitlines() if line.startswith("imported:")]
    assert line == "imported:", line
