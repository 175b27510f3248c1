"""docs/architecture.md matches the code, and the imports point one way.

The page names packages and modules (``repository/store/``, ``repository.db.engine``,
``migrations/env.py``): each must exist, and each sub-package of ``repository`` must be named.
The import graph comes from ``tools/import_graph.py``, read from the source.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from tools.import_graph import (
    LAYERS,
    REPOSITORY_LAYERS,
    cycles,
    layer_graph,
    main,
    module_imports,
    repository_graph,
    upward_edges,
)

ROOT = Path(__file__).resolve().parent.parent
ARCHITECTURE = ROOT / "docs" / "architecture.md"
_TOP = ("models", "repository", "customer_store", "migrations", "tools", "tests", "bench",
        "samples")
#: A package or module the page names in backticks: a path (``repository/db/``,
#: ``migrations/env.py``) or a dotted module name (``repository.db.engine``).
_NAMED = re.compile(rf"`((?:{'|'.join(_TOP)})(?:[./][A-Za-z0-9_]+)*(?:/|\.py)?)`")


def named_in_architecture() -> list[str]:
    return sorted(set(_NAMED.findall(ARCHITECTURE.read_text(encoding="utf-8"))))


def exists(name: str) -> bool:
    if "/" in name or name.endswith(".py"):
        return (ROOT / name).exists()
    path = ROOT.joinpath(*name.split("."))
    return path.with_suffix(".py").is_file() or (path / "__init__.py").is_file()


def test_every_package_and_module_the_page_names_exists() -> None:
    names = named_in_architecture()
    assert len(names) > 40, names  # the pattern still finds what the page names
    missing = [name for name in names if not exists(name)]
    assert not missing, f"docs/architecture.md names what is not in the code: {missing}"


def test_a_name_that_is_not_in_the_code_is_caught() -> None:
    assert exists("repository/store/") and exists("repository.db.engine")
    assert exists("migrations/env.py") and exists("customer_store.__main__")
    assert not exists("repository.db.nothing_here") and not exists("repository/sync.py")


def test_the_page_names_every_sub_package_of_the_repository() -> None:
    text = ARCHITECTURE.read_text(encoding="utf-8")
    packages = sorted(p.parent.name for p in (ROOT / "repository").glob("*/__init__.py"))
    assert packages
    missing = [name for name in packages if f"`repository/{name}/`" not in text]
    assert not missing, f"docs/architecture.md does not describe repository/{missing}/"


def test_the_layers_import_one_way() -> None:
    """customer_store -> repository -> models; models imports neither."""
    graph = layer_graph(module_imports())
    assert cycles(graph) == []
    assert upward_edges(graph, LAYERS) == []
    assert not graph.get("models"), f"models imports {dict(graph['models'])}"


def test_the_repository_sub_packages_are_acyclic_and_point_down() -> None:
    graph = repository_graph(module_imports())
    assert set(graph) >= {name for floor in REPOSITORY_LAYERS for name in floor}
    assert cycles(graph) == []
    assert upward_edges(graph, REPOSITORY_LAYERS) == []
    unplaced = set(graph) - {name for floor in REPOSITORY_LAYERS for name in floor}
    assert not unplaced, f"not on any floor of tools.import_graph.REPOSITORY_LAYERS: {unplaced}"


def test_the_tool_passes_here_and_fails_on_a_cycle(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main() == 0
    assert "repository.store -> repository.db" in capsys.readouterr().out

    for package, imported in (("store", "repository.db.engine"), ("db", "repository.store")):
        folder = tmp_path / "repository" / package
        folder.mkdir(parents=True)
        (folder / "__init__.py").write_text(f"import {imported}\n", encoding="utf-8")
    (tmp_path / "repository" / "db" / "engine.py").write_text("", encoding="utf-8")
    (tmp_path / "repository" / "__init__.py").write_text("", encoding="utf-8")

    assert main(tmp_path) == 1
    out = capsys.readouterr().out
    assert "CYCLE: repository.db <-> repository.store" in out
    assert "UPWARD: repository.db -> repository.store" in out
