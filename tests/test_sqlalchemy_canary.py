"""SQLAlchemy's private names the store still relies on, each pinned by an assertion here, so
that an upgrade that changes one fails loudly in this file rather than somewhere in the error
handling; and the SQLAlchemy version the store is tested with.

The driver path (``repository.db.driver``) reads statements through public API only; the
error seam hands the driver's errors to SQLAlchemy's own handling, which has no public
entry point. A new private name used anywhere in ``repository`` fails
:func:`test_repository_touches_no_other_private_sqlalchemy_name` until it has an assertion
of its own here.
"""

from __future__ import annotations

import ast
import inspect
import logging
import re
import tomllib
from importlib.metadata import version
from pathlib import Path

import sqlalchemy
from packaging.requirements import Requirement
from sqlalchemy import Connection, create_engine

ROOT = Path(__file__).resolve().parent.parent

#: The private names in ``repository`` and what each is (the assertions below check them).
PRIVATE_NAMES = {
    # The error seam: SQLAlchemy's handling of a statement's error (handle_error listeners,
    # the disconnect rule, invalidation), for the driver's cursor's statements.
    "_handle_dbapi_exception": "Connection method",
    # ... and of an error at checkout, for a connection taken without a Connection.
    "_handle_dbapi_exception_noconnection": "Connection class method",
    # A Connection around a checked-out connection, not announced to engine_connect.
    "_has_events": "Connection.__init__ keyword",
    # Row._mapping is public API despite its underscore (documented, for named access).
    "_mapping": "Row attribute (public)",
}


def _parameters(function: object) -> list[str]:
    return list(inspect.signature(function).parameters)  # type: ignore[arg-type]


def test_sqlalchemy_is_the_minor_version_pyproject_pins() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    (pin,) = (
        Requirement(text) for text in project["dependencies"] if text.startswith("SQLAlchemy")
    )
    assert version("sqlalchemy") in pin.specifier, (version("sqlalchemy"), str(pin.specifier))
    assert sqlalchemy.__version__ == version("sqlalchemy")


def test_connection_handles_a_statements_dbapi_error_with_these_arguments() -> None:
    assert _parameters(Connection._handle_dbapi_exception)[:6] == [
        "self", "e", "statement", "parameters", "cursor", "context",
    ]


def test_connection_handles_an_error_at_checkout_with_these_arguments() -> None:
    method = inspect.getattr_static(Connection, "_handle_dbapi_exception_noconnection")
    assert isinstance(method, classmethod)
    assert _parameters(Connection._handle_dbapi_exception_noconnection)[:3] == [
        "e", "dialect", "engine",
    ]


def test_a_connection_can_be_made_without_its_engine_connect_events() -> None:
    parameters = inspect.signature(Connection.__init__).parameters
    assert _parameters(Connection.__init__)[:3] == ["self", "engine", "connection"]
    assert parameters["_has_events"].default is None


def test_an_engines_logger_says_whether_it_logs_statements() -> None:
    # Not underscored, but not documented either: what Connection asks before logging.
    engine = create_engine("sqlite://", echo=True)
    try:
        assert engine.logger.isEnabledFor(logging.INFO)
    finally:
        engine.dispose()


def test_a_rows_mapping_is_public() -> None:
    engine = create_engine("sqlite://")
    try:
        with engine.connect() as connection:
            row = connection.exec_driver_sql("SELECT 1 AS one").one()
        assert dict(row._mapping) == {"one": 1}
    finally:
        engine.dispose()


def test_repository_touches_no_other_private_sqlalchemy_name() -> None:
    # Private names used on something other than self or cls, that SQLAlchemy's own source
    # has too (the store's names from its own modules are not meant); and sqlalchemy.util.
    sqlalchemy_names = {"sqlalchemy.util"} | {
        word
        for path in Path(sqlalchemy.__file__).parent.rglob("*.py")
        for word in re.findall(r"\b_[A-Za-z]\w*", path.read_text())
    }
    found: dict[str, set[str]] = {}
    for path in (ROOT / "repository").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Attribute):
                owner, name = node.value, node.attr
                if isinstance(owner, ast.Name) and owner.id in ("self", "cls"):
                    continue
            elif isinstance(node, ast.keyword) and node.arg is not None:
                name = node.arg
            elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith(
                "sqlalchemy.util"
            ):
                # Internal helpers, renamed between releases (await_only on the main branch).
                name = node.module or ""
            else:
                continue
            if name in sqlalchemy_names:
                found.setdefault(name, set()).add(str(path.relative_to(ROOT)))
    assert set(found) <= set(PRIVATE_NAMES), {
        name: sorted(paths) for name, paths in found.items() if name not in PRIVATE_NAMES
    }
