"""The import graph of the project's apps: no cycle, and `cases` below `retrieval`.

The graph is built from the source (ast), not by importing, so that imports inside functions
(the usual way of hiding a cycle from Python) count like module-level ones. An edge goes from
a module to each project module it imports: `from a.b import c` counts as an import of `a.b.c`
when `c` is a submodule, otherwise of `a.b`.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("cases", "retrieval", "ildreview")


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _project_modules() -> dict[str, Path]:
    return {
        _module_name(path): path
        for package in PACKAGES
        for path in sorted((ROOT / package).rglob("*.py"))
    }


def _imported(node: ast.AST, module: str, is_package: bool, known: set[str]) -> list[str]:
    """The project modules one import statement names."""
    if isinstance(node, ast.Import):
        return [alias.name for alias in node.names]
    if not isinstance(node, ast.ImportFrom):
        return []
    if node.level:  # relative: resolve against the importing module's package
        base = module.split(".") if is_package else module.split(".")[:-1]
        base = base[: len(base) - (node.level - 1)]
        target = ".".join(base + ([node.module] if node.module else []))
    else:
        target = node.module or ""
    names = []
    for alias in node.names:
        sub = f"{target}.{alias.name}"
        names.append(sub if sub in known else target)
    return names


def import_graph() -> dict[str, set[str]]:
    """{module: project modules it imports anywhere in its source}."""
    modules = _project_modules()
    known = set(modules)
    graph: dict[str, set[str]] = {}
    for module, path in modules.items():
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        is_package = path.name == "__init__.py"
        edges = set()
        for node in ast.walk(tree):
            for name in _imported(node, module, is_package, known):
                if name in known and name != module:
                    edges.add(name)
        graph[module] = edges
    return graph


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """One cycle per strongly connected component of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for succ in sorted(graph[node]):
            if succ not in index:
                visit(succ)
                low[node] = min(low[node], low[succ])
            elif succ in on_stack:
                low[node] = min(low[node], index[succ])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                components.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return components


def test_the_graph_sees_imports_inside_functions():
    graph = import_graph()
    # `retrieval.tasks` imports its services only inside the task bodies.
    assert "retrieval.pipeline.stages" in graph["retrieval.tasks"]
    assert "retrieval.pipeline.enqueue" in graph["retrieval.pipeline.recovery"]


def test_no_import_cycle_among_project_modules():
    assert _cycles(import_graph()) == []


def test_the_pipeline_never_imports_its_tasks():
    graph = import_graph()
    importers = sorted(m for m, edges in graph.items() if "retrieval.tasks" in edges)
    assert not [m for m in importers if m.startswith("retrieval.pipeline")], importers


def test_cases_imports_nothing_from_retrieval():
    graph = import_graph()
    upward = {
        module: sorted(e for e in edges if e.split(".")[0] == "retrieval")
        for module, edges in graph.items()
        if module.split(".")[0] == "cases"
    }
    assert {m: e for m, e in upward.items() if e} == {}
