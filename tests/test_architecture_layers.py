"""The package layout as a specification (docs/ARCHITECTURE.md): stages import only downwards, no
module imports itself back through any chain, and the top level stays a handful of entry points.

Every `import` counts: module level, inside functions and under `if TYPE_CHECKING:`, because a
function-level import that closes a cycle is still a cycle, only a later one.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "gptailor_merge"

STAGES = ("core", "family", "materialize", "scoring", "demo", "baselines", "repair", "search",
          "share", "run", "bench", "cli")
"""Lowest first: a module may import its own stage and the ones before it, never a later one.
The package's own `__init__` and `__main__` (entry points) sit above every stage."""

MAX_TOP_LEVEL_MODULES = 8


def module_files(root: Path) -> dict[str, Path]:
    """Dotted module name -> file, for every .py under `root` (a package `__init__` is the package)."""
    out = {}
    for path in sorted(root.rglob("*.py")):
        parts = (root.name, *path.relative_to(root).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


def import_graph(root: Path) -> dict[str, set[str]]:
    """Module -> the package modules it imports (anywhere in its source), itself excluded."""
    modules = module_files(root)
    graph: dict[str, set[str]] = {name: set() for name in modules}
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            targets: list[str] = []
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    base_parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                    base = ".".join(base_parts + ([node.module] if node.module else []))
                else:
                    base = node.module or ""
                # `from pkg import submodule` imports the submodule; `from mod import name` the module
                targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base
                           for a in node.names]
            for target in targets:
                while target and target not in modules:
                    target = target.rpartition(".")[0]
                if target and target != name:
                    graph[name].add(target)
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle as a path `a -> b -> ... -> a`, or None (iterative depth-first search)."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    for start in sorted(graph):
        if state.get(start):
            continue
        path: list[str] = [start]
        stack = [iter(sorted(graph[start]))]
        state[start] = 1
        while stack:
            nxt = next(stack[-1], None)
            if nxt is None:
                state[path.pop()] = 2
                stack.pop()
            elif state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt]
            elif not state.get(nxt):
                state[nxt] = 1
                path.append(nxt)
                stack.append(iter(sorted(graph.get(nxt, ()))))
    return None


def stage_of(module: str) -> int:
    """Index in STAGES of a module's sub-package; top-level modules rank above every stage."""
    parts = module.split(".")
    if len(parts) > 1 and parts[1] in STAGES:
        return STAGES.index(parts[1])
    return len(STAGES)


def upward_imports(graph: dict[str, set[str]]) -> list[str]:
    return sorted(f"{src} ({STAGES[stage_of(src)]}) imports {dst} ({STAGES[stage_of(dst)]})"
                  for src, dsts in graph.items() for dst in dsts
                  if stage_of(src) < len(STAGES) and stage_of(dst) > stage_of(src))


GRAPH = import_graph(PACKAGE)


def test_no_import_cycle():
    cycle = find_cycle(GRAPH)
    assert cycle is None, ("import cycle: " + " -> ".join(cycle or [])
                           + "; move the shared code down to the module that owns it")


def test_stages_import_only_downwards():
    assert upward_imports(GRAPH) == [], "a lower stage imports a higher one (STAGES, docs/ARCHITECTURE.md)"


def test_every_sub_package_has_a_stage():
    subpackages = {p.name for p in PACKAGE.iterdir() if (p / "__init__.py").is_file()}
    assert subpackages == set(STAGES)


def test_top_level_is_a_handful_of_modules():
    top = sorted(p.name for p in PACKAGE.glob("*.py"))
    assert len(top) <= MAX_TOP_LEVEL_MODULES, top



def test_synthetic_families_are_fixtures_only():
    """demo.synthetic serves tests and benchmarks (the bench stage); the library never builds on random weights."""
    assert [m for m, deps in GRAPH.items() if "gptailor_merge.demo.synthetic" in deps
            and not m.startswith("gptailor_merge.bench.")] == []


BENCHMARKS = PACKAGE.parent / "benchmarks"
MAX_SCRIPT_LINES = 200
LONG_SCRIPTS = {"smollm2_family.py"}  # builds a family from downloaded sources: a tool, not a benchmark row


def test_benchmark_scripts_are_thin_and_import_the_installed_package():
    """benchmarks/*.py parse and call into gptailor_merge.bench; no path tricks, no logic to copy."""
    scripts = sorted(BENCHMARKS.glob("*.py"))
    assert scripts
    long = [p.name for p in scripts if p.name not in LONG_SCRIPTS
            and len(p.read_text().splitlines()) > MAX_SCRIPT_LINES]
    assert long == [], f"over {MAX_SCRIPT_LINES} lines: move the work into gptailor_merge/bench/"
    assert [p.name for p in scripts if "sys.path.insert" in p.read_text()] == []
    assert not list((BENCHMARKS / "results").rglob("*.py")), "results hold data, not code"


def test_benchmark_scripts_import_no_higher_stage_than_bench():
    """A script may use any stage (it sits above them all) but no other script: shared code lives in bench."""
    local = {p.stem for p in BENCHMARKS.glob("*.py")}
    offenders = []
    for path in BENCHMARKS.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                     else [node.module or ""] if isinstance(node, ast.ImportFrom) and not node.level else [])
            offenders += [f"{path.name} imports {n}" for n in names if n.split(".")[0] in local]
    assert offenders == []


# ---- the checker itself can fail ------------------------------------------------------------------
def _package(tmp_path: Path, files: dict[str, str]) -> Path:
    root = tmp_path / "gptailor_merge"
    for rel, text in {"__init__.py": "", **files}.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text)
    return root


def test_checker_finds_a_function_level_cycle(tmp_path):
    root = _package(tmp_path, {
        "core/__init__.py": "",
        "core/a.py": "from gptailor_merge.core.b import x\n",
        "core/b.py": "def f():\n    from gptailor_merge.core import a\n",
    })
    assert find_cycle(import_graph(root)) == ["gptailor_merge.core.a", "gptailor_merge.core.b",
                                              "gptailor_merge.core.a"]


@pytest.mark.parametrize("line", ["from gptailor_merge.search.s import x",
                                  "from ..search import s",
                                  "if TYPE_CHECKING:\n    import gptailor_merge.search.s"])
def test_checker_finds_an_upward_import(tmp_path, line):
    root = _package(tmp_path, {
        "core/__init__.py": "",
        "core/a.py": line + "\n",
        "search/__init__.py": "",
        "search/s.py": "from gptailor_merge.core.a import y\n",
    })
    graph = import_graph(root)
    assert upward_imports(graph) == ["gptailor_merge.core.a (core) imports gptailor_merge.search.s (search)"]
    assert find_cycle(graph) is not None
