"""One public surface: the entry points (the CLI and the receiver) use the library only
through ``repository`` and ``models``, by names those packages export."""

from __future__ import annotations

import ast
import importlib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LIBRARY = ("repository", "models")
ENTRY_POINTS = sorted((ROOT / "customer_store").glob("*.py"))


def library_imports(path: Path) -> list[tuple[str, str, int]]:
    """(module, name, line) of every import from the library, at any depth of the file."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.module:
            if node.module.split(".")[0] in LIBRARY:
                found += [(node.module, alias.name, node.lineno) for alias in node.names]
        elif isinstance(node, ast.Import):
            found += [(alias.name, "*", node.lineno) for alias in node.names
                      if alias.name.split(".")[0] in LIBRARY]
    return found


@pytest.mark.parametrize("path", ENTRY_POINTS, ids=[p.name for p in ENTRY_POINTS])
def test_entry_points_import_only_exported_names_of_the_packages(path: Path) -> None:
    wrong = []
    for module, name, line in library_imports(path):
        if module not in LIBRARY:
            wrong.append(f"line {line}: from {module} import {name} (import from the package)")
        elif name not in importlib.import_module(module).__all__:
            wrong.append(f"line {line}: {module}.{name} is not exported")
    assert wrong == []


@pytest.mark.parametrize("package", LIBRARY)
def test_every_exported_name_exists(package: str) -> None:
    module = importlib.import_module(package)
    assert [name for name in module.__all__ if not hasattr(module, name)] == []
    assert len(set(module.__all__)) == len(module.__all__)


def test_the_check_notices_a_private_import(tmp_path: Path) -> None:
    probe = tmp_path / "probe.py"
    probe.write_text("def f():\n    from repository.store.queries import _conditions\n")
    assert library_imports(probe) == [("repository.store.queries", "_conditions", 2)]
