"""Talking to psycopg directly where SQLAlchemy has no construct (COPY) or costs too much
on a hot path (``get``), with errors surfacing as SQLAlchemy's all the same."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, cast

import psycopg
from sqlalchemy import Connection
from sqlalchemy.exc import DBAPIError

__all__ = ["driver_errors"]


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
        raise DBAPIError.instance(
            None, None, exc, psycopg.Error, connection_invalidated=lost, dialect=connection.dialect
        ) from exc
