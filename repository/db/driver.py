"""Talking to the driver directly where SQLAlchemy has no construct (COPY) or costs too
much on a hot path (``get``, a webhook's writes), with errors going through SQLAlchemy's
own error handling all the same (the one error seam: :mod:`repository.db.errors`)."""

from __future__ import annotations

import dataclasses
import logging
import re
import threading
import weakref
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, cast

import psycopg
from sqlalchemy import Connection, Dialect, Engine
from sqlalchemy.pool import PoolProxiedConnection
from sqlalchemy.sql.compiler import SQLCompiler
from sqlalchemy.sql.elements import ClauseElement
from sqlalchemy.sql.expression import Executable, ReturnsRows

from repository.db.errors import driver_errors, raise_checkout_error

__all__ = [
    "PLANS_KEPT",
    "PooledConnection",
    "Sent",
    "build_plans",
    "fetch_first",
    "needs_execute",
    "pipelined",
    "send",
]


class PooledConnection:
    """A connection checked out of an engine's pool for :func:`fetch_first`, without
    SQLAlchemy's ``Connection`` around it (whose making and closing cost about a tenth of a
    one-row read). Use as a context manager: the connection goes back to the pool at its
    end, reset as the pool resets any.

    For read-only engines (their connections in autocommit from the start, where a
    ``Connection`` would add nothing) whose statements need no ``execute``
    (:func:`needs_execute`); ValueError for an engine with a ``schema_translate_map``, which
    only SQLAlchemy's ``execute`` applies.
    """

    __slots__ = ("connection", "dialect", "engine")

    def __init__(self, engine: Engine) -> None:
        if engine.get_execution_options().get("schema_translate_map"):
            raise ValueError("schema_translate_map needs a Connection: use engine.connect()")
        self.engine = engine
        self.dialect = engine.dialect
        try:
            self.connection: PoolProxiedConnection = engine.raw_connection()
        except engine.dialect.loaded_dbapi.Error as exc:
            raise_checkout_error(engine, exc)

    def __enter__(self) -> PooledConnection:
        return self

    def __exit__(self, *exc: object) -> None:
        self.connection.close()

    def invalidate(self, exception: BaseException | None = None) -> None:
        """Discard the connection (lost): the pool opens a new one in its place."""
        self.connection.invalidate(exception)


#: What the driver-level functions run statements on.
AnyConnection = Connection | PooledConnection


def needs_execute(engine: Engine) -> bool:
    """Whether ``engine``'s statements must go through SQLAlchemy's ``execute`` rather than
    the driver's cursor: something watches them (``echo`` or the engine's logger at
    ``INFO``, a ``before_cursor_execute`` or ``after_cursor_execute`` listener, as tracing
    instrumentation adds), or the ``schema_translate_map`` execution option rewrites them."""
    return _needs_execute(engine, engine.get_execution_options(), engine.dispatch)


@dataclass(frozen=True)
class _Plan:
    """A statement compiled once for a dialect, with what running it by hand needs: all of
    it read through SQLAlchemy's public API (the compiled string and parameters, each bound
    parameter's and each result column's type, asked for its processor on the dialect)."""

    sql: str
    #: Parameter names in placeholder order for positional drivers (SQLite); None: by name.
    positions: tuple[str, ...] | None
    #: Values the statement binds itself (a literal ``LIMIT``), by parameter name.
    bound: dict[str, Any]
    bind_processors: dict[str, Callable[[Any], Any]]
    names: tuple[str, ...]
    result_processors: tuple[Callable[[Any], Any] | None, ...]
    #: ``sql`` with PostgreSQL's own ``$n`` placeholders, and the parameter names in their
    #: order, for psycopg's raw cursor; None where the dialect is not psycopg's sync one.
    raw_sql: bytes | None = None
    raw_order: tuple[str, ...] = ()


#: How many plans are kept, over all dialects: far more than the hot paths' statements (a
#: dozen per dialect), so that they stay compiled, while statements made anew for each call
#: (a caller's mistake) cannot grow the cache without end. The oldest plan goes first.
PLANS_KEPT = 1024

# By the statement's and the dialect instance's ids (two engines of one dialect class may
# differ, a JSON serializer for one), with the statement itself (an id is only unique while
# its object lives) and a weak reference to the dialect (kept no longer than its engine).
_plans: dict[tuple[int, int], tuple[Executable, weakref.ref[Dialect], _Plan]] = {}
_plans_lock = threading.Lock()


def fetch_first(
    connection: AnyConnection, statement: Executable, params: Mapping[str, Any]
) -> dict[str, Any] | None:
    """The first row of ``statement`` (a query, or a write with ``RETURNING``; a textual
    one with its ``.columns()``) with ``params`` bound, as its columns by name, or None.

    SQLAlchemy's own compilation and type processing (bound values in, column values out),
    run on the driver's cursor of ``connection``: what a Core ``execute`` costs beyond the
    driver (per-execution context, result metadata, row objects) is left out, which is most
    of the difference on a one-row read. ``statement`` should live as long as the process
    (a module-level or cached one): it is compiled once per dialect instance and kept among
    the last :data:`PLANS_KEPT`. One with its own ``schema_translate_map`` is refused
    (ValueError): run it with ``execute``.

    When something watches the statements or an execution option rewrites them
    (:func:`needs_execute`: ``echo``, a ``before_cursor_execute`` listener as tracing
    instrumentation adds, a ``schema_translate_map``), the statement goes through
    SQLAlchemy's ``execute`` on ``connection`` instead, so that they see it or apply.
    """
    return send(connection, statement, params).first()


def send(connection: AnyConnection, statement: Executable, params: Mapping[str, Any]) -> Sent:
    """:func:`fetch_first` in two steps: the statement is sent now, its first row read when
    asked for (:meth:`Sent.first`), so that within :func:`pipelined` the statements sent
    share one round trip. Elsewhere it has run when this returns."""
    if isinstance(connection, Connection) and _connection_needs_execute(connection):
        found = connection.execute(statement, params).first()
        return Sent(connection, None, None, dict(found._mapping) if found is not None else None)
    plan = _plan(statement, connection.dialect)
    values = {**plan.bound, **params}
    for name, process in plan.bind_processors.items():
        if name in values:
            values[name] = process(values[name])
    if plan.raw_sql is not None:
        # Placeholders already in PostgreSQL's form: psycopg converts a statement of more
        # than 4 kB (the single write's is) again on every execution, and looks up any
        # other in its cache; a raw cursor sends it as it is.
        sql: Any = plan.raw_sql
        bound: Any = [values[name] for name in plan.raw_order]
        driver = cast(psycopg.Connection[Any], connection.connection.driver_connection)
        cursor: Any = psycopg.RawCursor(driver)
    else:
        sql = plan.sql
        bound = values if plan.positions is None else [values[n] for n in plan.positions]
        cursor = connection.connection.cursor()
    try:
        with driver_errors(connection, cursor):
            cursor.execute(sql, bound)
    except BaseException:
        cursor.close()
        raise
    return Sent(connection, plan, cursor, None)


class Sent:
    """A statement :func:`send` sent: its first row, once read."""

    __slots__ = ("_connection", "_cursor", "_plan", "_row")

    def __init__(
        self, connection: AnyConnection, plan: _Plan | None, cursor: Any, row: dict[str, Any] | None
    ) -> None:
        self._connection, self._plan, self._cursor, self._row = connection, plan, cursor, row

    def first(self) -> dict[str, Any] | None:
        """The first row, as its columns by name, or None (the statement returned none)."""
        if self._cursor is None or self._plan is None:
            return self._row
        try:
            with driver_errors(self._connection, self._cursor):
                row = self._cursor.fetchone()
        finally:
            self.close()
        if row is None:
            return None
        return {
            name: process(value) if process is not None else value
            for name, process, value in zip(
                self._plan.names, self._plan.result_processors, row, strict=True
            )
        }

    def close(self) -> None:
        """Leave the result unread (in a pipeline, its errors still surface at its end)."""
        if self._cursor is not None:
            self._cursor.close()


@contextmanager
def pipelined(connection: Connection) -> Iterator[None]:
    """Statements :func:`send` sends within go to the server together and are answered
    together at the end: one round trip for all of them (psycopg's pipeline mode). Read
    their rows after the block. The server runs them one after the other as ever (each
    sees what the ones before it did, and takes its own snapshot), and an error in one
    skips the rest and is raised at the end. Where there is no such mode (SQLite, the
    asyncio driver) or something watches the statements, each runs as it is sent.
    """
    driver = connection.connection.driver_connection
    if not isinstance(driver, psycopg.Connection) or _connection_needs_execute(connection):
        yield
        return
    with driver_errors(connection), driver.pipeline():
        yield


def _connection_needs_execute(connection: Connection) -> bool:
    options = connection.get_execution_options()
    return _needs_execute(connection.engine, options, connection.dispatch)


def _needs_execute(engine: Engine, options: Mapping[str, Any], dispatch: Any) -> bool:
    return bool(
        dispatch.before_cursor_execute
        or dispatch.after_cursor_execute
        or options.get("schema_translate_map")
        # What a Connection asks its engine before logging a statement.
        or engine.logger.isEnabledFor(logging.INFO)
    )


def build_plans(statements: Iterable[Executable], dialect: Dialect) -> None:
    """Build what :func:`send` needs to run each of ``statements`` on ``dialect`` (its SQL
    and processors) ahead of their first use: in a worker thread, so that an event loop's
    first requests do not compile them."""
    for statement in statements:
        _plan(statement, dialect)


def _plan(statement: Executable, dialect: Dialect) -> _Plan:
    key = (id(statement), id(dialect))
    found = _plans.get(key)
    if found is not None and found[0] is statement and found[1]() is dialect:
        return found[2]
    plan = _compile(statement, dialect)
    with _plans_lock:
        while len(_plans) >= PLANS_KEPT:
            del _plans[next(iter(_plans))]
        _plans[key] = (statement, weakref.ref(dialect), plan)
    return plan


def _compile(statement: Executable, dialect: Dialect) -> _Plan:
    if statement.get_execution_options().get("schema_translate_map"):
        raise ValueError("a statement with a schema_translate_map runs only with execute()")
    compiled = cast(SQLCompiler, cast(ClauseElement, statement).compile(dialect=dialect))
    columns = cast(ReturnsRows, statement).exported_columns
    names = tuple(columns.keys())
    if len(set(names)) != len(names):
        raise ValueError(f"give each column of the statement a name of its own: {names}")
    plan = _Plan(
        sql=compiled.string,
        positions=tuple(compiled.positiontup) if compiled.positional and compiled.positiontup
        else None,
        bound={k: v for k, v in compiled.params.items() if v is not None},
        bind_processors={
            name: process
            for name, parameter in compiled.binds.items()
            if (process := parameter.type.dialect_impl(dialect).bind_processor(dialect))
        },
        names=names,
        result_processors=tuple(
            column.type.dialect_impl(dialect).result_processor(dialect, None)
            for column in columns
        ),
    )
    if dialect.driver == "psycopg" and not dialect.is_async and not plan.positions:
        plan = _with_raw_placeholders(plan)
    return plan


# SQLAlchemy's pyformat placeholders, and the ``%%`` that stands for a literal ``%``.
_PYFORMAT = re.compile(r"%\(([^)]+)\)s|%%")


def _with_raw_placeholders(plan: _Plan) -> _Plan:
    """``plan`` with its SQL also in ``$n`` placeholders (a name used twice keeps its number)."""
    order: dict[str, int] = {}

    def placeholder(match: re.Match[str]) -> str:
        name = match.group(1)
        if name is None:
            return "%"
        return f"${order.setdefault(name, len(order) + 1)}"

    raw = _PYFORMAT.sub(placeholder, plan.sql)
    return dataclasses.replace(plan, raw_sql=raw.encode(), raw_order=tuple(order))
