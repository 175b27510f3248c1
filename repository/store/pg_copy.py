"""``COPY ... FROM STDIN`` through psycopg, for the sync and the async driver alike, and
the text those statements read.

SQLAlchemy has no ``COPY``; this reaches the driver connection under the session's
connection, so the rows join the session's transaction. Rows are written in ``COPY``'s text
format by :func:`copy_line` rather than by psycopg's row writer, so that an import's worker
process can lay a batch out as the very bytes the writing process sends (:class:`CopyReady`).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime
from operator import itemgetter
from typing import Any, NamedTuple

import psycopg
from sqlalchemy import Connection
from sqlalchemy.engine import AdaptedConnection

from repository.db.backends import column_names
from repository.db.errors import driver_errors
from repository.db.jsonb import dumps_for_jsonb
from repository.db.tables import child_tables
from repository.store.mapping import CUSTOMER_COLUMNS, CustomerRows

__all__ = ["CHILD_COLUMNS", "CopyReady", "copy_line", "copy_ready", "copy_text"]

_JSON_COLUMNS = frozenset({"metadata", "system_metadata", "extra"})


_NULL = "\\N"


def _text(value: str) -> str:
    # The four characters COPY's text format escapes; a NUL never gets this far (validation
    # refuses it, as a text column would).
    return (
        value.replace("\\", "\\\\").replace("\t", "\\t").replace("\n", "\\n").replace("\r", "\\r")
    )


class _Layout:
    """How a table's rows become lines of ``COPY`` text."""

    def __init__(self, columns: Sequence[str]) -> None:
        self.values = itemgetter(*columns)
        self.json_positions = [i for i, name in enumerate(columns) if name in _JSON_COLUMNS]

    def line(self, row: Mapping[str, Any]) -> str:
        """``row`` (keyed by column name) as one line, newline included."""
        values: tuple[Any, ...] = self.values(row)
        fields = [_NULL if value is None else value for value in values]
        for i in self.json_positions:
            if values[i] is not None:
                # JSON as text: the jsonb column parses it, as COPY does any type.
                fields[i] = dumps_for_jsonb(values[i])
        # ``str`` writes each type as PostgreSQL reads it: integers, ISO dates, date-times
        # with their offset. Most lines need no escape at all: checked on the whole line.
        line = "\t".join(map(str, fields))
        if (
            line.count("\\") != values.count(None)
            or line.count("\t") != len(fields) - 1
            or "\n" in line
            or "\r" in line
        ):
            line = "\t".join([
                _NULL if value is None else _text(str(field))
                for value, field in zip(values, fields, strict=True)
            ])
        return line + "\n"


def copy_line(columns: Sequence[str], row: Mapping[str, Any]) -> str:
    """``row`` (keyed by column name) as one line of ``COPY``'s text format, newline included."""
    return _Layout(columns).line(row)


class CopyReady(NamedTuple):
    """One customer laid out for ``COPY``: what a bulk upsert on PostgreSQL needs of it.

    Small to send between processes (text, not one dict per row), and written to the
    server as it is.
    """

    id: str
    version_at: datetime | None
    #: The customer's line of ``customers`` (``CUSTOMER_COLUMNS``).
    customer: bytes
    #: Its lines of each child table, in ``CHILD_COLUMNS`` order (empty when it has none).
    children: tuple[bytes, bytes, bytes]


#: The columns of each child table (:data:`~repository.db.tables.child_tables`), in the
#: order of :attr:`CopyReady.children`.
CHILD_COLUMNS = tuple(column_names(table) for table in child_tables)


_CUSTOMER, _ADDRESS, _CAMPAIGN, _REFERRAL = (
    _Layout(columns) for columns in (CUSTOMER_COLUMNS, *CHILD_COLUMNS)
)


def copy_ready(rows: CustomerRows) -> CopyReady:
    """``rows`` as the text ``COPY`` reads."""
    address = _ADDRESS.line(rows.address) if rows.address is not None else ""
    return CopyReady(
        rows.id,
        rows.version_at,
        _CUSTOMER.line(rows.customer).encode(),
        (
            address.encode(),
            "".join([_CAMPAIGN.line(row) for row in rows.campaigns]).encode(),
            "".join([_REFERRAL.line(row) for row in rows.referrals]).encode(),
        ),
    )


def copy_text(
    connection: Connection, table: str, columns: Sequence[str], lines: Iterable[bytes]
) -> None:
    """Append ``lines`` (``COPY`` text, as :func:`copy_line` writes it) to ``table``.

    ValueError on a connection with a ``schema_translate_map``: the ``COPY`` names the table
    as it is, and would write where the other statements do not.
    """
    if connection.get_execution_options().get("schema_translate_map"):
        raise ValueError("COPY does not apply a schema_translate_map")
    data = b"".join(lines)
    if not data:
        return
    statement = f"COPY {table} ({', '.join(columns)}) FROM STDIN"
    with driver_errors(connection):
        adapted = connection.connection.dbapi_connection
        if isinstance(adapted, AdaptedConnection) and isinstance(
            adapted.driver_connection, psycopg.AsyncConnection
        ):
            # The async API runs this code through run_sync: await the driver from here.
            adapted.run_async(lambda driver: _copy_async(driver, statement, data))
            return
        driver = connection.connection.driver_connection
        with driver.cursor() as cursor, cursor.copy(statement) as copy:  # type: ignore[union-attr]
            copy.write(data)


async def _copy_async(driver: psycopg.AsyncConnection[Any], statement: str, data: bytes) -> None:
    async with driver.cursor() as cursor, cursor.copy(statement) as copy:
        await copy.write(data)
