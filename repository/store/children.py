"""A customer's child rows (address, loyalty campaigns, referral entries), replaced whole.

A payload carries the whole customer, so applying it deletes every child row the stored
version had and writes the payload's: one rule for a single upsert and for a batch.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, Table, delete, insert
from sqlalchemy.orm import Session

from repository.db.engine import dialect_of
from repository.db.jsonb import dumps_for_jsonb
from repository.db.tables import addresses, campaigns, child_tables, referrals
from repository.store.mapping import (
    ADDRESS_COLUMNS,
    CAMPAIGN_COLUMNS,
    REFERRAL_COLUMNS,
    CustomerRows,
)
from repository.store.pg_copy import CopyReady, copy_rows, copy_text

__all__ = ["copy_children", "delete_children", "replace_children"]

# One statement for the three tables, one cached plan for any batch size. Joined with the
# ids: ``customer_id = ANY(ids)`` lets the planner scan a whole table for a long list.
_DELETE_CHILDREN_POSTGRESQL = (
    "WITH k AS (SELECT unnest(CAST(%(ids)s AS text[])) AS id), "
    "a AS (DELETE FROM customer_addresses t USING k WHERE t.customer_id = k.id), "
    "c AS (DELETE FROM customer_loyalty_campaigns t USING k WHERE t.customer_id = k.id) "
    "DELETE FROM customer_referral_entries t USING k WHERE t.customer_id = k.id"
)

#: Each child table, its columns, and the parameter that carries its rows as JSON.
_TABLES: tuple[tuple[Table, list[str], str], ...] = (
    (addresses, ADDRESS_COLUMNS, "addresses"),
    (campaigns, CAMPAIGN_COLUMNS, "campaigns"),
    (referrals, REFERRAL_COLUMNS, "referrals"),
)
#: Up to this many child rows are written by one INSERT for the three tables (one round
#: trip, what a single upsert needs); more are streamed with COPY, one per table.
_FEW_ROWS = 50


def _insert_from_json(table: Table, columns: Sequence[str], name: str) -> str:
    quoted = ", ".join(f'"{column}"' for column in columns)
    return (
        # Names from the tables' own metadata; the rows are a bound parameter.
        f"INSERT INTO {table.name} ({quoted}) SELECT {quoted} FROM "  # noqa: S608
        f"jsonb_populate_recordset(NULL::{table.name}, CAST(%({name})s AS jsonb))"
    )


# The rows as a JSON array per table, each made a row of its table by PostgreSQL; the
# three inserts touch different tables, so running together they cannot disturb each other.
_first, _second, _last = (_insert_from_json(*entry) for entry in _TABLES)
_INSERT_CHILDREN_POSTGRESQL = f"WITH a AS ({_first}), c AS ({_second}) {_last}"


def replace_children(
    session: Session, applied: Sequence[CustomerRows], *, new: Sequence[CustomerRows] = ()
) -> None:
    """Replace the child rows of the customers in ``applied`` (their upserts were applied)
    and write those of ``new`` (customers with none stored: just inserted, or their old
    ones deleted already)."""
    connection = session.connection()
    on_postgresql = dialect_of(session) == "postgresql"
    delete_children(session, [rows.id for rows in applied])
    written = [*new, *applied]
    children = (
        [r.address for r in written if r.address is not None],
        [c for r in written for c in r.campaigns],
        [e for r in written for e in r.referrals],
    )
    if not any(children):
        return
    if not on_postgresql:
        for (table, _, _), rows in zip(_TABLES, children, strict=True):
            if rows:
                connection.execute(insert(table), rows)
    elif sum(map(len, children)) <= _FEW_ROWS:
        _insert_few(connection, children)
    else:
        for (table, columns, _), rows in zip(_TABLES, children, strict=True):
            copy_rows(connection, table.name, columns, rows)


def copy_children(connection: Connection, written: Sequence[CopyReady]) -> None:
    """Write the child rows of customers laid out for ``COPY`` (:class:`CopyReady`), whose
    stored ones are gone: one ``COPY`` per table."""
    for index, (table, columns, _) in enumerate(_TABLES):
        copy_text(connection, table.name, columns, [rows.children[index] for rows in written])


def delete_children(session: Session, customer_ids: Sequence[str]) -> None:
    """Delete every child row of these customers."""
    if not customer_ids:
        return
    connection = session.connection()
    if dialect_of(session) == "postgresql":
        connection.exec_driver_sql(_DELETE_CHILDREN_POSTGRESQL, {"ids": customer_ids})
        return
    for table in child_tables:
        connection.execute(delete(table).where(table.c.customer_id.in_(customer_ids)))


def _insert_few(connection: Connection, children: tuple[list[dict[str, Any]], ...]) -> None:
    params = {
        name: dumps_for_jsonb([_json_ready(row) for row in rows])
        for (_, _, name), rows in zip(_TABLES, children, strict=True)
    }
    connection.exec_driver_sql(_INSERT_CHILDREN_POSTGRESQL, params)


def _json_ready(row: dict[str, Any]) -> dict[str, Any]:
    """``row`` with its date-times in ISO 8601 (offset included), as PostgreSQL reads them."""
    return {k: v.isoformat() if isinstance(v, datetime) else v for k, v in row.items()}
