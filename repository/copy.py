"""``COPY ... FROM STDIN`` through psycopg, for the sync and the async driver alike.

SQLAlchemy has no ``COPY``; this reaches the driver connection under the session's
connection, so the rows join the session's transaction.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import psycopg
from sqlalchemy import Connection
from sqlalchemy.util import await_only

from repository.driver import driver_errors
from repository.jsonb import dumps_for_jsonb

__all__ = ["copy_rows"]

_JSON_COLUMNS = frozenset({"metadata", "system_metadata", "extra"})


def copy_rows(
    connection: Connection, table: str, columns: Sequence[str], rows: Sequence[dict[str, Any]]
) -> None:
    """Append ``rows`` (dicts keyed by column name) to ``table`` with one ``COPY``."""
    if not rows:
        return
    json_positions = [i for i, name in enumerate(columns) if name in _JSON_COLUMNS]
    statement = f"COPY {table} ({', '.join(columns)}) FROM STDIN"

    def values() -> Iterator[list[Any]]:
        for row in rows:
            out = [row[name] for name in columns]
            for i in json_positions:
                if out[i] is not None:
                    # JSON as text: the jsonb column parses it, as COPY does any type.
                    out[i] = dumps_for_jsonb(out[i])
            yield out

    with driver_errors(connection):
        driver = connection.connection.driver_connection
        if isinstance(driver, psycopg.AsyncConnection):
            # The async API runs this code through run_sync: await the driver from here.
            await_only(_copy_async(driver, statement, values()))
            return
        with driver.cursor() as cursor, cursor.copy(statement) as copy:  # type: ignore[union-attr]
            for row_values in values():
                copy.write_row(row_values)


async def _copy_async(
    driver: psycopg.AsyncConnection[Any], statement: str, values: Iterator[list[Any]]
) -> None:
    async with driver.cursor() as cursor, cursor.copy(statement) as copy:
        for row_values in values:
            await copy.write_row(row_values)
