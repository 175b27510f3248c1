"""Bulk upserts for imports: many customers per statement, with the same rules as ``upsert``.

PostgreSQL: the customer rows are streamed with ``COPY`` into a temporary staging table,
merged with one ``INSERT ... ON CONFLICT DO UPDATE ... WHERE newer`` (after the newest
version per id within the batch is chosen and the tombstones checked), and the child rows
of the customers that were applied are replaced, again with ``COPY``. SQLite: multi-row
upserts.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any, cast

import psycopg
from sqlalchemy import Connection, Table, column, delete, exists, insert, select, table
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session
from sqlalchemy.util import await_only

from models.tables import (
    CustomerAddressRow,
    CustomerRow,
    CustomerTombstoneRow,
    LoyaltyCampaignRow,
    ReferralEntryRow,
)
from repository.driver import driver_errors
from repository.engine import dialect_of
from repository.jsonb import dumps_for_jsonb
from repository.locks import lock_customers
from repository.mapping import (
    ADDRESS_COLUMNS,
    CAMPAIGN_COLUMNS,
    CUSTOMER_COLUMNS,
    REFERRAL_COLUMNS,
    CustomerRows,
)
from repository.newest_wins import clear_older_tombstones, upsert_newest

__all__ = ["bulk_upsert"]

_customers = cast(Table, CustomerRow.__table__)
_addresses = cast(Table, CustomerAddressRow.__table__)
_campaigns = cast(Table, LoyaltyCampaignRow.__table__)
_referrals = cast(Table, ReferralEntryRow.__table__)
_tombstones = cast(Table, CustomerTombstoneRow.__table__)

_JSON_COLUMNS = frozenset({"metadata", "system_metadata", "extra"})


def bulk_upsert(session: Session, batch: Sequence[CustomerRows]) -> list[bool]:
    """Upsert a batch of validated customers; for each, whether it was applied.

    Within a batch, the newest version of an id wins (the later one among equals), as if
    the batch had been upserted one by one; the others count as not applied.
    """
    if not batch:
        return []
    if dialect_of(session) == "postgresql":
        applied = _merge_postgresql(session, batch)
    else:
        applied = _merge_sqlite(session, batch)
    winners = _winners(batch)
    return [index in winners and rows.id in applied for index, rows in enumerate(batch)]


def _winners(batch: Sequence[CustomerRows]) -> set[int]:
    """Index of the version of each id that sequential upserts would leave stored."""
    best: dict[str, int] = {}
    for index, rows in enumerate(batch):
        current = best.get(rows.id)
        if current is None or _at_least_as_new(rows, batch[current]):
            best[rows.id] = index
    return set(best.values())


def _at_least_as_new(incoming: CustomerRows, stored: CustomerRows) -> bool:
    if stored.version_at is None:
        return True
    return incoming.version_at is not None and incoming.version_at >= stored.version_at


# -- PostgreSQL ------------------------------------------------------------------------

def _merge_postgresql(session: Session, batch: Sequence[CustomerRows]) -> set[str]:
    winners = [batch[i] for i in sorted(_winners(batch))]
    lock_customers(session, [rows.id for rows in winners])
    connection = session.connection()
    # Only the customer rows are staged: the merge decides which customers are applied, and
    # their child rows are then copied straight into the child tables.
    connection.exec_driver_sql(
        "CREATE TEMPORARY TABLE IF NOT EXISTS _stage_customers "
        "(LIKE customers INCLUDING DEFAULTS) ON COMMIT DELETE ROWS"
    )
    # Its rows go at commit; a caller may upsert several batches in one transaction.
    connection.execute(delete(_STAGE))
    _copy(connection, "_stage_customers", CUSTOMER_COLUMNS, [r.customer for r in winners])
    # A payload newer than a remembered deletion clears it; one as old or older is blocked.
    connection.execute(clear_older_tombstones(_STAGE.c.id, _STAGE.c.version_at))
    applied = set(connection.execute(_MERGE_CUSTOMERS).scalars())
    if applied:
        connection.exec_driver_sql(_DELETE_CHILDREN, {"ids": list(applied)})
        chosen = [r for r in winners if r.id in applied]
        _copy(connection, "customer_addresses", ADDRESS_COLUMNS,
              [r.address for r in chosen if r.address is not None])
        _copy(connection, "customer_loyalty_campaigns", CAMPAIGN_COLUMNS,
              [c for r in chosen for c in r.campaigns])
        _copy(connection, "customer_referral_entries", REFERRAL_COLUMNS,
              [e for r in chosen for e in r.referrals])
    return applied


_STAGE = table("_stage_customers", *(column(name) for name in CUSTOMER_COLUMNS))
_MERGE_CUSTOMERS = upsert_newest(
    postgresql.insert(_customers).from_select(
        CUSTOMER_COLUMNS,
        select(*(_STAGE.c[name] for name in CUSTOMER_COLUMNS))
        .where(~exists().where(_tombstones.c.customer_id == _STAGE.c.id))
        .order_by(_STAGE.c.id),
    )
)
_DELETE_CHILDREN = (
    "WITH a AS (DELETE FROM customer_addresses WHERE customer_id = ANY(%(ids)s)), "
    "c AS (DELETE FROM customer_loyalty_campaigns WHERE customer_id = ANY(%(ids)s)) "
    "DELETE FROM customer_referral_entries WHERE customer_id = ANY(%(ids)s)"
)


def _copy(
    connection: Connection, table: str, columns: Sequence[str], rows: list[dict[str, Any]]
) -> None:
    """``COPY table FROM STDIN`` through the driver (SQLAlchemy has no COPY)."""
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


# -- SQLite ----------------------------------------------------------------------------

_SQLITE_ROWS_PER_STATEMENT = 200

def _merge_sqlite(session: Session, batch: Sequence[CustomerRows]) -> set[str]:
    # SQLite has one writer at a time, so the batch needs no per-customer locks; the first
    # statement is a write so the write lock is taken before anything is read.
    winners = [batch[i] for i in sorted(_winners(batch))]
    for rows in winners:
        if rows.version_at is not None:
            session.execute(clear_older_tombstones(rows.id, rows.version_at))
    ids = [rows.id for rows in winners]
    blocked = set(session.scalars(
        select(_tombstones.c.customer_id).where(_tombstones.c.customer_id.in_(ids))
    ))
    candidates = [rows for rows in winners if rows.id not in blocked]
    if not candidates:
        return set()
    applied: set[str] = set()
    # Few enough rows per statement to stay under SQLite's limit of bound parameters.
    for start in range(0, len(candidates), _SQLITE_ROWS_PER_STATEMENT):
        chunk = candidates[start:start + _SQLITE_ROWS_PER_STATEMENT]
        upsert = upsert_newest(sqlite.insert(_customers).values([r.customer for r in chunk]))
        applied.update(session.scalars(upsert))
    if applied:
        chosen = [rows for rows in candidates if rows.id in applied]
        for table in (_addresses, _campaigns, _referrals):
            session.execute(delete(table).where(table.c.customer_id.in_(applied)))
        for table, children in (
            (_addresses, [r.address for r in chosen if r.address is not None]),
            (_campaigns, [c for r in chosen for c in r.campaigns]),
            (_referrals, [e for r in chosen for e in r.referrals]),
        ):
            if children:
                session.execute(insert(table), children)
    return applied

