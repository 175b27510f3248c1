"""The one seam of database errors, whichever way a statement ran: through SQLAlchemy's
``execute``, or on the driver's cursor (the hot paths, COPY, the privilege grants).

- A driver error becomes SQLAlchemy's ``DBAPIError`` the way SQLAlchemy makes its own
  statements' errors (:func:`driver_errors`, :func:`raise_as_sqlalchemy`): the
  ``handle_error`` listeners run, and a lost connection invalidates the pool.
- On PostgreSQL, the listeners that :func:`watch_errors` adds call an error saying the
  server or the primary is gone a disconnect (:func:`is_server_gone`), and add
  :data:`POOLER_HINT` to a clash of prepared statements behind a transaction pooler
  (:func:`is_pooler_clash`).
- What a person reads of an error is one line (:func:`first_line`): the driver's first,
  never the statement or its parameters, with the pooler hint where it applies.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, NoReturn, Protocol

from sqlalchemy import Connection, Dialect, Engine, event

if TYPE_CHECKING:
    from sqlalchemy.engine import ExceptionContext
    from sqlalchemy.pool import PoolProxiedConnection

__all__ = [
    "GONE_SQLSTATES",
    "POOLER_HINT",
    "Checkout",
    "driver_errors",
    "explain_pooler_clash",
    "first_line",
    "is_pooler_clash",
    "is_server_gone",
    "raise_as_sqlalchemy",
    "raise_checkout_error",
    "watch_errors",
    "with_pooler_hint",
]

#: Added to an error that comes from prepared statements shared through a transaction
#: pooler (shown by ``customer-store`` after the server's message, and in tracebacks).
POOLER_HINT = (
    "is a transaction pooler such as PgBouncer in between? Add ?pgbouncer=true to the "
    "database URL, so that no statements are prepared on the server"
)
# duplicate_prepared_statement, invalid_sql_statement_name, protocol_violation, each with
# the message the server gives when a statement prepared on one client connection meets
# another's on the same server connection, or is missing from the server connection.
_CLASHES = {
    "42P05": ("prepared statement",),  # prepared statement "_pg3_0" already exists
    "26000": ("prepared statement",),  # prepared statement "_pg3_0" does not exist
    "08P01": (
        "bind message supplies",  # ... 2 parameters, but prepared statement requires 1
        # The parameters bound to another client's statement of as many parameters.
        "insufficient data left in message",
    ),
}

#: SQLSTATEs that mean the server behind a connection is gone, or is no longer the primary:
#: admin_shutdown (a terminated backend), crash_shutdown, cannot_connect_now (starting
#: up or shutting down), read_only_sql_transaction (a demoted primary answering as a
#: standby); and every connection_exception (class 08) but a pooler clash.
GONE_SQLSTATES = frozenset({"57P01", "57P02", "57P03", "25006"})


# --- what an error means ------------------------------------------------------------------


def is_server_gone(exc: BaseException) -> bool:
    """Whether ``exc`` (the driver's error, or SQLAlchemy's around it) says the connection
    or the primary is gone (:data:`GONE_SQLSTATES`, class 08): the connection must not be
    used again, and a new one may reach a server that takes the work."""
    orig = _driver_error(exc)
    sqlstate = getattr(orig, "sqlstate", None) or ""
    if sqlstate in GONE_SQLSTATES:
        return True
    return sqlstate.startswith("08") and not is_pooler_clash(orig)


def is_pooler_clash(exc: BaseException) -> bool:
    """Whether ``exc`` (the driver's error, or SQLAlchemy's around it) is one a transaction
    pooler causes when the connections prepare statements on the server."""
    orig = _driver_error(exc)
    message = str(orig)
    return any(text in message for text in _CLASHES.get(getattr(orig, "sqlstate", None) or "", ()))


# --- what a person reads of it ------------------------------------------------------------


def first_line(exc: BaseException) -> str:
    """The one line to show for a database error: the first line of the driver's message
    (SQLAlchemy's own for an error of its own), never the statement or its parameters, and
    what to do when it is a clash of prepared statements behind a transaction pooler. The
    CLI, the importer, the webhook receiver and the health check all say it this way."""
    text = str(_driver_error(exc)).strip()
    return with_pooler_hint(text.splitlines()[0] if text else type(exc).__name__, exc)


def with_pooler_hint(text: str, exc: BaseException) -> str:
    """``text`` followed by ``(``:data:`POOLER_HINT```)`` when ``exc`` is a pooler clash."""
    return f"{text} ({POOLER_HINT})" if is_pooler_clash(exc) else text


def explain_pooler_clash(exc: BaseException) -> None:
    """Add :data:`POOLER_HINT` to ``exc``'s notes (once) when :func:`is_pooler_clash`, so
    that tracebacks say it too."""
    if is_pooler_clash(exc) and POOLER_HINT not in getattr(exc, "__notes__", ()):
        exc.add_note(POOLER_HINT)


def _driver_error(exc: BaseException) -> BaseException:
    """The driver's error inside SQLAlchemy's, or ``exc`` itself."""
    orig = getattr(exc, "orig", None)
    return orig if isinstance(orig, BaseException) else exc


# --- SQLAlchemy's path: its handle_error event ----------------------------------------------


def watch_errors(engine: Engine) -> None:
    """Have ``engine`` (PostgreSQL) treat a server or primary that is gone as a disconnect
    and explain pooler clashes, for its statements and, through :func:`raise_as_sqlalchemy`,
    for those run on the driver's cursor."""
    event.listen(engine, "handle_error", _explain_pooler_clash)
    event.listen(engine, "handle_error", _server_gone_is_disconnect)


def _server_gone_is_disconnect(context: ExceptionContext) -> None:
    """An error saying the server is gone or no longer the primary (a read-only answer
    after a demotion: every pooled connection then reaches a standby) counts as a
    disconnect: SQLAlchemy invalidates the connection and the pool, and the error says
    ``connection_invalidated``, which retries act on."""
    if is_server_gone(context.original_exception):
        context.is_disconnect = True


def _explain_pooler_clash(context: ExceptionContext) -> None:
    if context.sqlalchemy_exception is not None:
        explain_pooler_clash(context.sqlalchemy_exception)


# --- the driver's path: its errors handed to SQLAlchemy -------------------------------------


class Checkout(Protocol):
    """A connection checked out of an engine's pool without SQLAlchemy's ``Connection``
    around it (``repository.db.driver.PooledConnection``)."""

    @property
    def engine(self) -> Engine: ...

    @property
    def dialect(self) -> Dialect: ...

    @property
    def connection(self) -> PoolProxiedConnection: ...


class driver_errors:  # a lower-case name: used as a function, ``with driver_errors(c):``
    """Statements run on the driver's cursor within have their errors (and an interruption,
    which leaves the connection in an unknown state) handled by :func:`raise_as_sqlalchemy`,
    as SQLAlchemy handles its own statements'. Other exceptions pass as they are.

    A class rather than a generator: it wraps every statement of the hot paths.
    """

    __slots__ = ("_connection", "_cursor")

    def __init__(self, connection: Connection | Checkout, cursor: Any = None) -> None:
        self._connection = connection
        self._cursor = cursor

    def __enter__(self) -> None:
        return None

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, _: Any) -> None:
        if exc is None or isinstance(exc, GeneratorExit):
            return
        if isinstance(exc, self._connection.dialect.loaded_dbapi.Error) or not isinstance(
            exc, Exception
        ):
            raise_as_sqlalchemy(self._connection, exc, self._cursor)


def raise_as_sqlalchemy(
    connection: Connection | Checkout, exc: BaseException, cursor: Any = None
) -> NoReturn:
    """Raise ``exc``, the driver's error in a statement run on ``connection``'s cursor, the
    way SQLAlchemy raises its own statements' errors: the ``handle_error`` listeners run
    (tracing, error reporting, custom disconnect rules: they may change ``is_disconnect``
    or raise another error), a lost connection is invalidated, and with it the whole pool
    (every connection opened before is replaced at its next checkout), and the error is
    SQLAlchemy's ``DBAPIError`` saying ``connection_invalidated``. An interruption
    (``KeyboardInterrupt``, a cancelled task) invalidates the connection alone and is
    raised as it is. The error carries no statement: the driver's message is all it says.

    This is SQLAlchemy's own ``Connection._handle_dbapi_exception`` (engine/base.py), the
    one private method relied on here, rather than a copy of it: the listeners, the
    disconnect rule and ``invalidate_pool_on_disconnect`` stay exactly SQLAlchemy's. A
    connection checked out without a ``Connection`` (:class:`Checkout`) gets one around it
    for this; it is never closed (the checkout is given back by its owner).
    """
    if isinstance(connection, Connection):
        wrapper = connection
    else:
        # _has_events=False: not a new connection for the engine_connect listeners.
        wrapper = Connection(connection.engine, connection.connection, _has_events=False)
    wrapper._handle_dbapi_exception(exc, None, None, cursor, None)
    raise AssertionError("unreachable: SQLAlchemy raises the error")  # pragma: no cover


def raise_checkout_error(engine: Engine, exc: BaseException) -> NoReturn:
    """Raise ``exc``, the driver's error in checking a connection out of ``engine``'s pool
    by hand, as ``Engine.connect()`` raises it (``handle_error`` listeners included)."""
    Connection._handle_dbapi_exception_noconnection(exc, engine.dialect, engine)
    raise AssertionError("unreachable: SQLAlchemy raises the error")  # pragma: no cover
