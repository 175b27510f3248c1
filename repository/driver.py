"""Talking to psycopg directly where SQLAlchemy has no construct (COPY) or costs too much
on a hot path (``get``), with errors surfacing as SQLAlchemy's all the same; and what the
driver's errors mean when a transaction pooler mixes up prepared statements."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, cast

import psycopg
from sqlalchemy import Connection
from sqlalchemy.exc import DBAPIError

__all__ = ["POOLER_HINT", "driver_errors", "explain_pooler_clash", "is_pooler_clash"]

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


@contextmanager
def driver_errors(connection: Connection) -> Iterator[None]:
    """Raise the driver's errors as SQLAlchemy's (as SQLAlchemy does for its own statements),
    with a lost connection invalidated, so callers and retries see one kind of error."""
    try:
        yield
    except psycopg.Error as exc:
        dbapi_connection = connection.connection.dbapi_connection
        lost = connection.dialect.is_disconnect(cast(Any, exc), dbapi_connection, None)
        if lost:
            connection.invalidate(exc)
        error = DBAPIError.instance(
            None, None, exc, psycopg.Error, connection_invalidated=lost, dialect=connection.dialect
        )
        explain_pooler_clash(error)
        raise error from exc


def is_pooler_clash(exc: BaseException) -> bool:
    """Whether ``exc`` (the driver's error, or SQLAlchemy's around it) is one a transaction
    pooler causes when the connections prepare statements on the server."""
    orig = getattr(exc, "orig", None) or exc
    message = str(orig)
    return any(text in message for text in _CLASHES.get(getattr(orig, "sqlstate", None) or "", ()))


def explain_pooler_clash(exc: BaseException) -> None:
    """Add :data:`POOLER_HINT` to ``exc`` (once) when :func:`is_pooler_clash`."""
    if is_pooler_clash(exc) and POOLER_HINT not in getattr(exc, "__notes__", ()):
        exc.add_note(POOLER_HINT)
