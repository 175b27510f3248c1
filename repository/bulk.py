"""Bulk upserts for imports: many customers per statement, with the same rules as ``upsert``.

PostgreSQL: the batch is streamed with ``COPY`` into temporary staging tables, then merged
with a handful of set-based statements (newest version per id within the batch, tombstone
check, one ``INSERT ... ON CONFLICT DO UPDATE ... WHERE newer``, children replaced for the
customers that were applied). SQLite: one multi-row upsert per table and batch.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, cast

from psycopg.types.json import Jsonb
from sqlalchemy import Table, and_, delete, insert, or_, select
from sqlalchemy.dialects import sqlite
from sqlalchemy.orm import Session

from models.tables import (
    CustomerAddressRow,
    CustomerRow,
    CustomerTombstoneRow,
    LoyaltyCampaignRow,
    ReferralEntryRow,
)
from repository.engine import dumps_for_jsonb
from repository.locks import lock_customers
from repository.mapping import (
    ADDRESS_COLUMNS,
    CAMPAIGN_COLUMNS,
    CUSTOMER_COLUMNS,
    REFERRAL_COLUMNS,
    CustomerRows,
)

__all__ = ["bulk_upsert"]

_customers = cast(Table, CustomerRow.__table__)
_addresses = cast(Table, CustomerAddressRow.__table__)
_campaigns = cast(Table, LoyaltyCampaignRow.__table__)
_referrals = cast(Table, ReferralEntryRow.__table__)
_tombstones = cast(Table, CustomerTombstoneRow.__table__)

_JSON_COLUMNS = frozenset({"metadata", "system_metadata", "extra"})
_CHILDREN = (
    ("customer_addresses", ADDRESS_COLUMNS),
    ("customer_loyalty_campaigns", CAMPAIGN_COLUMNS),
    ("customer_referral_entries", REFERRAL_COLUMNS),
)


def bulk_upsert(session: Session, batch: Sequence[CustomerRows]) -> list[bool]:
    """Upsert a batch of validated customers; for each, whether it was applied.

    Within a batch, the newest version of an id wins (the later one among equals), as if
    the batch had been upserted one by one; the others count as not applied.
    """
    if not batch:
        return []
    if session.get_bind().dialect.name == "postgresql":
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

_STAGE = {
    "customers": "_stage_customers",
    "customer_addresses": "_stage_addresses",
    "customer_loyalty_campaigns": "_stage_campaigns",
    "customer_referral_entries": "_stage_referrals",
}


def _merge_postgresql(session: Session, batch: Sequence[CustomerRows]) -> set[str]:
    winners = [batch[i] for i in sorted(_winners(batch))]
    lock_customers(session, [rows.id for rows in winners])
    cursor = session.connection().connection.driver_connection.cursor()  # type: ignore[union-attr]
    try:
        _create_staging(cursor)
        _copy(cursor, "customers", CUSTOMER_COLUMNS, [r.customer for r in winners])
        _copy(cursor, "customer_addresses", ADDRESS_COLUMNS,
              [r.address for r in winners if r.address is not None])
        _copy(cursor, "customer_loyalty_campaigns", CAMPAIGN_COLUMNS,
              [c for r in winners for c in r.campaigns])
        _copy(cursor, "customer_referral_entries", REFERRAL_COLUMNS,
              [e for r in winners for e in r.referrals])
        # A payload newer than a remembered deletion clears it; one as old or older is blocked.
        cursor.execute(
            "DELETE FROM customer_tombstones t USING _stage_customers s "
            "WHERE t.customer_id = s.id AND t.deleted_at < s.version_at"
        )
        columns = ", ".join(CUSTOMER_COLUMNS)
        updates = ", ".join(f"{c} = excluded.{c}" for c in CUSTOMER_COLUMNS if c != "id")
        cursor.execute(
            f"INSERT INTO customers ({columns}) "  # noqa: S608 (column names are constants)
            f"SELECT {columns} FROM _stage_customers s "
            "WHERE NOT EXISTS (SELECT 1 FROM customer_tombstones t WHERE t.customer_id = s.id) "
            "ORDER BY s.id "
            f"ON CONFLICT (id) DO UPDATE SET {updates} "
            "WHERE customers.version_at IS NULL OR (excluded.version_at IS NOT NULL "
            "AND excluded.version_at >= customers.version_at) "
            "RETURNING id"
        )
        applied = [row[0] for row in cursor.fetchall()]
        if applied:
            for table, child_columns in _CHILDREN:
                cursor.execute(f"DELETE FROM {table} WHERE customer_id = ANY(%s)", (applied,))  # noqa: S608
                names = ", ".join(child_columns)
                cursor.execute(
                    f"INSERT INTO {table} ({names}) SELECT {names} FROM {_STAGE[table]} "  # noqa: S608
                    "WHERE customer_id = ANY(%s)",
                    (applied,),
                )
        for stage in _STAGE.values():
            cursor.execute(f"TRUNCATE {stage}")
    finally:
        cursor.close()
    return set(applied)


def _create_staging(cursor: Any) -> None:
    # Temporary tables live as long as the connection; creating them is cheap when they
    # already exist. Rows are removed at the end of each batch.
    for table, stage in _STAGE.items():
        cursor.execute(
            f"CREATE TEMPORARY TABLE IF NOT EXISTS {stage} (LIKE {table} INCLUDING DEFAULTS)"
        )


def _copy(cursor: Any, table: str, columns: Sequence[str], rows: list[dict[str, Any]]) -> None:
    if not rows:
        return
    json_positions = [i for i, name in enumerate(columns) if name in _JSON_COLUMNS]
    statement = f"COPY {_STAGE[table]} ({', '.join(columns)}) FROM STDIN"
    with cursor.copy(statement) as copy:
        for row in rows:
            values = [row[name] for name in columns]
            for i in json_positions:
                if values[i] is not None:
                    values[i] = Jsonb(values[i], dumps=dumps_for_jsonb)
            copy.write_row(values)


# -- SQLite ----------------------------------------------------------------------------

_SQLITE_ROWS_PER_STATEMENT = 200

def _merge_sqlite(session: Session, batch: Sequence[CustomerRows]) -> set[str]:
    # SQLite has one writer at a time, so the batch needs no per-customer locks; the first
    # statement is a write so the write lock is taken before anything is read.
    winners = [batch[i] for i in sorted(_winners(batch))]
    for rows in winners:
        if rows.version_at is not None:
            session.execute(
                delete(_tombstones).where(
                    _tombstones.c.customer_id == rows.id,
                    _tombstones.c.deleted_at < rows.version_at,
                )
            )
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
        ins = sqlite.insert(_customers).values([rows.customer for rows in chunk])
        stored, incoming = _customers.c.version_at, ins.excluded.version_at
        upsert = ins.on_conflict_do_update(
            index_elements=[_customers.c.id],
            set_={name: ins.excluded[name] for name in CUSTOMER_COLUMNS if name != "id"},
            where=or_(stored.is_(None), and_(incoming.is_not(None), incoming >= stored)),
        ).returning(_customers.c.id)
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

