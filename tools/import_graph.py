"""Print the package-level import graph of the project, and fail on a cycle or an upward import.

Read from the source (``ast``), nothing is imported: every ``import`` and ``from ... import``
statement counts, those inside functions and under ``TYPE_CHECKING`` too, since each one is
a dependency a reader has to follow. Two graphs are printed:

- the layers: ``customer_store``, the Alembic scripts (``migrations.*``: ``env.py``, the
  revisions), ``repository``, ``models``, and the ``migrations`` package's root module,
  which only says where the scripts are (``repository.db.schema`` reads it; it imports
  nothing of the project);
- inside ``repository``: its face (``repository/__init__.py``) and its sub-packages.

Run it from the repository's root: ``python -m tools.import_graph``. It exits 1 when either
graph has a cycle or an edge points up the declared order (:data:`LAYERS`,
:data:`REPOSITORY_LAYERS`), else 0. ``tests/test_architecture.py`` runs the same checks.
"""

from __future__ import annotations

import ast
import sys
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path

__all__ = [
    "LAYERS",
    "PACKAGES",
    "REPOSITORY_LAYERS",
    "Graph",
    "cycles",
    "layer_graph",
    "main",
    "module_imports",
    "repository_graph",
    "upward_edges",
]

ROOT = Path(__file__).resolve().parent.parent

#: The top-level packages, highest first: each may import only those after it.
PACKAGES = ("customer_store", "migrations", "repository", "models")
#: The layers, highest first: each may import only those on the floors after it.
LAYERS: tuple[tuple[str, ...], ...] = (
    ("customer_store",),
    ("migrations.*",),
    ("repository",),
    ("models", "migrations"),
)
#: ``repository``'s face and sub-packages, highest first: each may import only those after it.
#: ``webhooks`` and ``importing`` share a floor: neither imports the other.
REPOSITORY_LAYERS: tuple[tuple[str, ...], ...] = (
    ("repository",),
    ("repository.admin",),
    ("repository.voucherify",),
    ("repository.webhooks", "repository.importing"),
    ("repository.store",),
    ("repository.db",),
)

#: ``{importer: Counter({imported: number of import statements})}``
Graph = dict[str, Counter[str]]


def _module_name(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _imported(node: ast.Import | ast.ImportFrom, module: str, is_package: bool) -> Iterator[str]:
    """The absolute module names one import statement names."""
    if isinstance(node, ast.Import):
        yield from (alias.name for alias in node.names)
        return
    base = node.module or ""
    if node.level:
        package = module.split(".") if is_package else module.split(".")[:-1]
        package = package[: len(package) - (node.level - 1)]
        base = ".".join([*package, base]) if base else ".".join(package)
    yield base
    # ``from repository import store`` names the sub-package, not only the face.
    yield from (f"{base}.{alias.name}" for alias in node.names)


def module_imports(root: Path = ROOT, packages: Iterable[str] = PACKAGES) -> dict[str, set[str]]:
    """Every module of ``packages`` (under ``root``) with the project modules it imports."""
    found: dict[str, set[str]] = {}
    for package in packages:
        for path in sorted((root / package).rglob("*.py")):
            module = _module_name(path, root)
            tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
            names: set[str] = set()
            for node in ast.walk(tree):
                if isinstance(node, ast.Import | ast.ImportFrom):
                    names.update(_imported(node, module, path.name == "__init__.py"))
            found[module] = names
    known = set(found)
    return {
        module: {name for name in names if name in known and name != module}
        for module, names in found.items()
    }


def _collapse(imports: Mapping[str, set[str]], node_of: Mapping[str, str | None]) -> Graph:
    graph: Graph = {}
    for module, names in imports.items():
        source = node_of.get(module)
        if source is None:
            continue
        edges = graph.setdefault(source, Counter())
        for name in names:
            target = node_of.get(name)
            if target is not None and target != source:
                edges[target] += 1
    return graph


def layer_graph(imports: Mapping[str, set[str]]) -> Graph:
    """The graph between the layers (:data:`LAYERS`)."""
    return _collapse(imports, {module: _layer_of(module) for module in imports})


def _layer_of(module: str) -> str:
    top = module.split(".")[0]
    return "migrations.*" if top == "migrations" and module != "migrations" else top


def repository_graph(imports: Mapping[str, set[str]]) -> Graph:
    """The graph inside ``repository``: its face (the package's ``__init__``) and each
    sub-package (a module directly in ``repository/`` is a node of its own)."""
    node_of: dict[str, str | None] = {}
    for module in imports:
        parts = module.split(".")
        node_of[module] = ".".join(parts[:2]) if parts[0] == "repository" else None
    return _collapse(imports, node_of)


def cycles(graph: Graph) -> list[list[str]]:
    """The strongly connected components of more than one node (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in graph.get(node, ()):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def upward_edges(graph: Graph, layers: Iterable[Iterable[str]]) -> list[tuple[str, str]]:
    """Edges from a node to one on its own floor or above it (``layers`` highest first);
    nodes on no floor are left out."""
    floor = {node: rank for rank, nodes in enumerate(layers) for node in nodes}
    return sorted(
        (source, target)
        for source, targets in graph.items()
        for target in targets
        if source in floor and target in floor and floor[target] <= floor[source]
    )


def _render(title: str, graph: Graph) -> str:
    lines = [title]
    for source in sorted(graph):
        targets = ", ".join(f"{t} ({n})" for t, n in sorted(graph[source].items()))
        lines.append(f"  {source} -> {targets or '(nothing)'}")
    return "\n".join(lines)


def main(root: Path = ROOT) -> int:
    imports = module_imports(root)
    graphs = {
        "layers": (layer_graph(imports), list(LAYERS)),
        "repository": (repository_graph(imports), list(REPOSITORY_LAYERS)),
    }
    failed = False
    for title, (graph, layers) in graphs.items():
        print(_render(f"{title} (importer -> imported (import statements)):", graph))
        for cycle in cycles(graph):
            print(f"  CYCLE: {' <-> '.join(cycle)}")
            failed = True
        for source, target in upward_edges(graph, layers):
            print(f"  UPWARD: {source} -> {target}")
            failed = True
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
