"""No import cycles inside the package.

Every ``import`` statement counts, the ones inside functions too: a lazy import
only postpones a cycle to run time, and the two this test was written against
(config <-> launch.netns, data <-> image_data) were partly lazy. Importing
``a.b.c`` is an edge to ``a.b.c`` only, not to the packages above it, as in
import-linter and grimp: a package's ``__init__`` may name its submodules.
"""
from __future__ import annotations

import ast
from pathlib import Path
from typing import Dict, List, Optional, Set

import asyncsgd

PACKAGE = Path(asyncsgd.__file__).parent


def module_graph(package: Path) -> Dict[str, Set[str]]:
    """Module name -> the modules of the same package it imports."""
    files = {}
    for path in package.rglob("*.py"):
        parts = [package.name, *path.relative_to(package).with_suffix("").parts]
        is_package = parts[-1] == "__init__"
        files[".".join(parts[:-1] if is_package else parts)] = (path, is_package)

    def known(name: str) -> Optional[str]:
        while name and name not in files:  # from a.b import f: f is a name in a.b, not a module
            name = name.rpartition(".")[0]
        return name or None

    graph: Dict[str, Set[str]] = {}
    for name, (path, is_package) in files.items():
        here = name.split(".") if is_package else name.split(".")[:-1]  # what "." means in this file
        targets = []
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                targets += [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    base = ".".join([*here[: len(here) - node.level + 1], *([node.module] if node.module else [])])
                targets += [f"{base}.{alias.name}" for alias in node.names]  # known() trims names to modules
        graph[name] = {t for t in map(known, targets) if t is not None and t != name}
    return graph


def find_cycle(graph: Dict[str, Set[str]]) -> Optional[List[str]]:
    """One cycle as [a, b, ..., a], or None (depth-first search, modules in sorted order)."""
    done: Set[str] = set()
    path: List[str] = []

    def visit(node: str) -> Optional[List[str]]:
        if node in path:
            return path[path.index(node):] + [node]
        if node in done:
            return None
        path.append(node)
        for nxt in sorted(graph.get(node, ())):
            cycle = visit(nxt)
            if cycle:
                return cycle
        path.pop()
        done.add(node)
        return None

    for start in sorted(graph):
        cycle = visit(start)
        if cycle:
            return cycle
    return None


def test_the_package_has_no_import_cycle():
    graph = module_graph(PACKAGE)
    assert "asyncsgd.config" in graph and "asyncsgd.launch.link" in graph["asyncsgd.config"]  # the graph is real
    cycle = find_cycle(graph)
    assert cycle is None, (
        f"import cycle: {' -> '.join(cycle)}; move what both sides need into a module below them "
        "(as asyncsgd.errors, asyncsgd.launch.link and asyncsgd.dataset_base are)"
    )


def test_a_cycle_through_a_lazy_relative_import_is_found(tmp_path):
    pkg = tmp_path / "pkg"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "sub" / "__init__.py").write_text("from .b import g\n")  # a package naming its module: no cycle
    (pkg / "a.py").write_text("from .sub.b import g\n")
    (pkg / "sub" / "b.py").write_text("def g():\n    from .. import a\n    from ..c import C\n")
    (pkg / "c.py").write_text("C = 1\n")
    graph = module_graph(pkg)
    assert graph["pkg.sub.b"] == {"pkg.a", "pkg.c"}
    assert find_cycle(graph) == ["pkg.a", "pkg.sub.b", "pkg.a"]
    (pkg / "sub" / "b.py").write_text("def g():\n    from ..c import C\n")
    assert find_cycle(module_graph(pkg)) is None
