"""The public faces: the entry points (the CLI and the receiver) use the library only
through ``repository`` (the service's face), its sub-packages' faces (``repository.db``,
``repository.admin``, ``repository.voucherify``...) and ``models``, by names those faces
export; names that left a face still resolve, with a
warning, for one release."""

from __future__ import annotations

import ast
import importlib
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LIBRARY = ("repository", "models")
FACES = (
    "repository",
    "repository.admin",
    "repository.db",
    "repository.importing",
    "repository.store",
    "repository.voucherify",
    "repository.webhooks",
    "models",
)
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
        if module not in FACES:
            wrong.append(f"line {line}: from {module} import {name} (import from a face)")
        elif name not in importlib.import_module(module).__all__:
            wrong.append(f"line {line}: {module}.{name} is not exported")
    assert wrong == []


@pytest.mark.parametrize("package", FACES)
def test_every_exported_name_exists(package: str) -> None:
    module = importlib.import_module(package)
    assert [name for name in module.__all__ if not hasattr(module, name)] == []
    assert len(set(module.__all__)) == len(module.__all__)


def test_the_check_notices_a_private_import(tmp_path: Path) -> None:
    probe = tmp_path / "probe.py"
    probe.write_text("def f():\n    from repository.store.queries import _conditions\n")
    assert library_imports(probe) == [("repository.store.queries", "_conditions", 2)]


def test_every_sub_package_of_repository_has_a_face() -> None:
    packages = {p.parent.name for p in (ROOT / "repository").glob("*/__init__.py")}
    assert {f"repository.{name}" for name in packages} <= set(FACES)
    for name in packages:
        assert importlib.import_module(f"repository.{name}").__all__


def test_the_check_refuses_a_sub_package_module(tmp_path: Path) -> None:
    probe = tmp_path / "probe.py"
    probe.write_text("from repository.voucherify.client import VoucherifyClient\n")
    [(module, _name, _line)] = library_imports(probe)
    assert module not in FACES


def test_the_service_face_is_small_and_holds_no_cli_helper() -> None:
    import repository

    assert len(repository.__all__) <= 25
    cli_helpers = {"require_role_name", "POOLER_HINT", "TotalCache", "fold", "FOLD_LIMIT"}
    assert cli_helpers.isdisjoint(repository.__all__)


def test_the_faces_export_what_a_service_needs() -> None:
    import repository
    import repository.admin
    import repository.db
    import repository.importing
    import repository.voucherify
    import repository.webhooks

    assert {"make_engine", "make_async_engine", "CustomerRepository", "AsyncCustomerRepository",
            "CustomerReader", "CustomerFilter", "Page", "ingest_delivery",
            "run_in_transaction", "Customer"} <= set(repository.__all__)
    assert {"forget_customer", "grant_app_role", "store_stats"} <= set(repository.admin.__all__)
    assert {"upgrade_to_head", "parse_database_url", "ReadRouter",
            "first_line"} <= set(repository.db.__all__)
    assert {"import_records", "read_records"} <= set(repository.importing.__all__)
    assert {"prune_events", "replay_rejected"} <= set(repository.webhooks.__all__)
    assert {"VoucherifyClient", "mirror_customers", "MirrorState",
            "CustomerList"} <= set(repository.voucherify.__all__)


def _moved() -> dict[str, tuple[str, str]]:
    import repository

    moved: dict[str, tuple[str, str]] = repository._MOVED
    return moved


@pytest.mark.parametrize("name", sorted(_moved()))
def test_a_name_that_left_the_service_face_still_resolves_with_a_warning(name: str) -> None:
    import repository

    face, new_name = _moved()[name]
    assert name not in repository.__all__
    with pytest.warns(DeprecationWarning, match=rf"repository\.{name} is deprecated.*{face}"):
        value = getattr(repository, name)
    assert value is getattr(importlib.import_module(face), new_name)


def test_the_old_names_cover_the_old_face() -> None:
    """Every name ``repository`` exported before the faces is still reachable."""
    import repository

    old = {
        "AsyncCustomerRepository", "AsyncReadRouter", "CONNECTION_DEFAULTS", "CustomerFilter",
        "CustomerList", "CustomerPage", "CustomerReader", "CustomerRepository",
        "DEFAULT_API_URL", "DEFAULT_BATCH_SIZE", "DEFAULT_DATABASE_URL",
        "DEFAULT_DELIVERY_TIMEOUT", "DEFAULT_MAX_BODY_BYTES", "DEFAULT_MAX_LAG",
        "DEFAULT_MAX_WAIT", "DEFAULT_OVERLAP", "DEFAULT_RESERVE", "DEFAULT_TIMEOUT",
        "DeadlineExceeded", "DeleteOutcome", "ErasureReport", "FOLD_LIMIT", "FallbackReason",
        "GrantReport", "ImportReport", "IngestResult", "InvalidArgument", "InvalidCursor",
        "InvalidCustomerId", "InvalidListParameter", "InvalidRoleName", "ListQuery",
        "MAX_METADATA_DEPTH", "MAX_METADATA_TERMS", "MAX_PAGE_SIZE", "MissingPrivilege",
        "NoDatabaseFile", "NotReplicated", "POOLER_HINT", "POOLER_PARAMETER", "Page",
        "ReadRouter", "Record", "Rejection", "RequestLimitReached", "RetryListener",
        "StoreStats", "SweepRefused", "SyncReport", "SyncState", "TieOverflow", "TotalCache",
        "UpsertOutcome", "UpsertSummary", "VoucherifyClient", "VoucherifyError",
        "alembic_config", "behind_pooler", "commit_position", "count_events", "count_listed",
        "current_revision", "decode_customer_value", "default_max_deletions",
        "estimate_customer_count", "fold", "forget_customer", "grant_app_role",
        "head_revision", "import_records", "ingest_delivery", "ingest_delivery_async",
        "ingest_or_record_refusal", "is_lost_connection", "is_pooler_clash", "is_retryable",
        "iter_customers", "iter_events", "last_applied_at", "list_customers", "list_events",
        "make_async_engine", "make_async_session_factory", "make_engine",
        "make_session_factory", "parse_database_url", "parse_list_query", "prune_events",
        "read_in_session", "read_in_session_async", "read_records", "replay_rejected",
        "require_customer_id", "require_position", "require_role_name", "run_in_transaction",
        "run_in_transaction_async", "store_stats", "sync_customers", "sync_states",
        "upgrade_to_head", "ApiUnavailable", "AuthenticationFailed", "BudgetExhausted",
    }
    assert old - set(repository.__all__) - set(_moved()) == set()


def test_an_unknown_name_is_still_an_attribute_error() -> None:
    import repository

    with pytest.raises(AttributeError, match="no attribute 'nothing_here'"):
        repository.nothing_here  # noqa: B018
    with pytest.raises(ImportError):
        from repository import nothing_here  # noqa: F401


@pytest.mark.parametrize(("old", "new"), [("SyncStateRow", "MirrorStateRow"),
                                          ("SyncListedRow", "MirrorListedRow")])
def test_the_mirror_tables_old_model_names_warn(old: str, new: str) -> None:
    import models

    with pytest.warns(DeprecationWarning, match=rf"models\.{old} is deprecated.*{new}"):
        value = getattr(models, old)
    assert value is getattr(models, new)


def test_the_faces_import_without_a_warning() -> None:
    """Importing the faces touches no deprecated name (a fresh interpreter, warnings fatal)."""
    code = "import " + ", ".join(FACES)
    subprocess.run([sys.executable, "-W", "error", "-c", code], check=True, cwd=ROOT)
