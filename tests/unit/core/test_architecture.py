"""The package's imports flow one way: no import cycles (lazy, function-level imports included)
and the layer rules of the README's layout section. The test reads the source with ``ast`` (it
imports nothing), so a new import that breaks a rule fails here, naming the file and line."""

from __future__ import annotations

import ast
from dataclasses import dataclass
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[3] / "src" / "obliviate"

# layer -> the layers it must not import (a layer is obliviate.<layer>, a package or a module)
# (cli.py parses and dispatches into jobs.py, the commands as Python functions, which run pipelines/)
LAYER_RULES: dict[str, tuple[str, ...]] = {
    "data": ("models", "methods", "engine", "pipelines", "jobs", "cli"),
    "metrics": ("methods", "engine", "pipelines", "jobs", "cli"),
    "methods": ("pipelines", "jobs", "cli"),
    "engine": ("pipelines", "jobs", "cli"),
    "models": ("methods", "pipelines", "jobs", "cli"),
    "pruning": ("pipelines", "jobs", "cli"),
    "report": ("pipelines", "jobs", "cli"),
    "pipelines": ("jobs", "cli"),
}


@dataclass(frozen=True)
class Import:
    source: str  # importing module
    target: str  # imported obliviate module
    line: int
    file: str = ""  # the importing file, relative to the repository

    def __str__(self) -> str:
        return f"{self.source} -> {self.target} ({self.file or self.source}, line {self.line})"


def modules(root: Path = PACKAGE) -> dict[str, tuple[Path, bool]]:
    """``{dotted name: (file, is_package)}`` for every module of the package."""
    out = {}
    for path in root.rglob("*.py"):
        parts = list(path.relative_to(root.parent).with_suffix("").parts)
        is_pkg = parts[-1] == "__init__"
        out[".".join(parts[:-1] if is_pkg else parts)] = (path, is_pkg)
    return out


def _resolve(name: str, known: dict) -> str | None:
    while name and name not in known:
        name = name.rpartition(".")[0]
    return name or None


def imports(known: dict[str, tuple[Path, bool]], root: Path = PACKAGE) -> list[Import]:
    """Every import of an obliviate module anywhere in a file (module level or inside a function)."""
    out = []
    for name, (path, is_pkg) in known.items():
        package = name if is_pkg else name.rpartition(".")[0]
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            targets: list[str] = []
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    parts = package.split(".")
                    base = ".".join(parts[: len(parts) - node.level + 1] + ([node.module] if node.module else []))
                # `from pkg import submodule` imports the submodule; `from mod import name` the module
                targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in known else base for a in node.names]
            for target in targets:
                if target.split(".")[0] != "obliviate":
                    continue
                resolved = _resolve(target, known)
                if resolved and resolved != name:
                    out.append(Import(name, resolved, node.lineno, str(path.relative_to(root.parents[1]))))
    return out


def cycles(edges: list[Import]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    graph: dict[str, set[str]] = {}
    for e in edges:
        graph.setdefault(e.source, set()).add(e.target)
        graph.setdefault(e.target, set())
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                found.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def _layer(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


def rule_breaks(edges: list[Import]) -> list[Import]:
    return [e for e in edges if _layer(e.target) in LAYER_RULES.get(_layer(e.source), ())]


@pytest.fixture(scope="module")
def edges() -> list[Import]:
    return imports(modules())


def test_the_walk_sees_the_package_and_lazy_imports(edges):
    known = modules()
    assert len(known) > 100 and "obliviate.cli" in known and "obliviate.registry" in known
    # a function-level import is an edge too (cli imports its pipelines inside the command functions)
    assert any(e.source == "obliviate.cli" and e.target.startswith("obliviate.pipelines.") for e in edges)


def test_no_import_cycles(edges):
    found = cycles(edges)
    detail = ["\n".join(f"  {e}" for e in dict.fromkeys(e for e in edges if e.source in comp and e.target in comp)) for comp in found]
    assert not found, "import cycles (move the shared piece below both modules):\n" + "\n".join(detail)


def test_layer_rules(edges):
    broken = rule_breaks(edges)
    assert not broken, "layer rules broken (see LAYER_RULES):\n" + "\n".join(map(str, broken))


def test_only_the_entry_points_import_the_cli(edges):
    users = sorted({e.source for e in edges if e.target == "obliviate.cli"} - {"obliviate.__main__"})
    assert not users, f"cli.py parses and dispatches; {users} import it (use obliviate.jobs instead)"


def test_the_checker_finds_a_cycle_and_a_broken_rule():
    """The test can fail: a planted cycle and a planted data -> models import are reported."""
    planted = [Import("obliviate.a", "obliviate.b", 1), Import("obliviate.b", "obliviate.c", 2), Import("obliviate.c", "obliviate.a", 3),
               Import("obliviate.data.x", "obliviate.models.llm", 4), Import("obliviate.data.x", "obliviate.io", 5)]
    assert cycles(planted) == [["obliviate.a", "obliviate.b", "obliviate.c"]]
    assert rule_breaks(planted) == [planted[3]]
    assert "line 4" in str(planted[3])
