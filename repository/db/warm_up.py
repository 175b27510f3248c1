"""The statements a process's first requests would compile, compiled when the async
engine is made.

The hot statements (a single write's, a ``get``'s, a webhook's; their modules register
them with :func:`hot_statements`) are built once per process and compiled for each dialect
(:func:`repository.db.driver.build_plans`): tens of milliseconds of CPU that the first calls
on a new async engine would otherwise spend on the event loop while every other request
waits. :func:`~repository.db.engine.make_async_engine` spends them instead, once, where a
service starts; the same engine made again finds them compiled.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

from sqlalchemy import Engine
from sqlalchemy.sql.expression import Executable

from repository.db.backends import Backend, backend_of
from repository.db.driver import build_plans

__all__ = ["HotStatements", "build_hot_statements", "hot_statements"]

#: The statements to build for a database (given by its backend).
HotStatements = Callable[[Backend], Iterable[Executable]]

_registered: list[HotStatements] = []


def hot_statements(statements: HotStatements) -> HotStatements:
    """Register ``statements`` (a decorator): compiled for every async engine's dialect."""
    _registered.append(statements)
    return statements


def build_hot_statements(engine: Engine) -> None:
    """Build and compile the registered statements, and the backend's own, for ``engine``."""
    backend = backend_of(engine)
    build_plans(backend.hot_statements(), engine.dialect)
    for statements in _registered:
        build_plans(statements(backend), engine.dialect)
