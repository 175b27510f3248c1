"""The per-database backend: what differs between PostgreSQL and SQLite, chosen once.

:func:`backend_of` gives the :class:`Backend` of a session, connection or engine. It is
picked once per kind of database connection (the dialect's class) and kept, so that the
hot paths pay a dictionary look-up for it.
"""

from __future__ import annotations

from sqlalchemy import Connection, Dialect, Engine
from sqlalchemy.ext.asyncio import AsyncEngine
from sqlalchemy.orm import Session

from repository.db.backends.base import Backend, ChildRows, column_names
from repository.db.backends.postgresql import PostgreSQLBackend
from repository.db.backends.sqlite import SQLiteBackend

__all__ = [
    "Backend",
    "ChildRows",
    "PostgreSQLBackend",
    "SQLiteBackend",
    "backend_of",
    "column_names",
]

_BY_NAME: dict[str, Backend] = {
    backend.name: backend for backend in (PostgreSQLBackend(), SQLiteBackend())
}
_BY_DIALECT: dict[type[Dialect], Backend] = {}


def backend_of(bind: Session | Connection | Engine | AsyncEngine) -> Backend:
    """The backend of the database behind ``bind``; ValueError for a database the store
    does not run on."""
    dialect = bind.get_bind().dialect if isinstance(bind, Session) else bind.dialect
    try:
        return _BY_DIALECT[type(dialect)]
    except KeyError:
        pass
    backend = _BY_NAME.get(dialect.name)
    if backend is None:
        raise ValueError(f"unsupported database dialect {dialect.name!r}")
    _BY_DIALECT[type(dialect)] = backend
    return backend
