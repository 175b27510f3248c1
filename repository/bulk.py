"""Bulk upserts for imports: many customers per statement, with the same rules as ``upsert``.

PostgreSQL: customers neither stored nor deleted are streamed with ``COPY`` straight into
the table; the others into a temporary staging table, merged with one ``INSERT ... ON
CONFLICT DO UPDATE ... WHERE newer`` (after the newest version per id within the batch is
chosen and the tombstones checked). The customers arrive as rows or already as ``COPY``
text (:class:`~repository.copy.CopyReady`, what an import's workers send). SQLite:
multi-row upserts. The child rows of the customers that were applied are then replaced
(:mod:`repository.children`).
"""

from __future__ import annotations

from collections.abc import Sequence

from sqlalchemy import Connection, column, delete, exists, select, table, text
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from repository.children import copy_children, delete_children, replace_children
from repository.copy import CopyReady, copy_ready, copy_text
from repository.engine import dialect_of
from repository.locks import lock_customers
from repository.mapping import CUSTOMER_COLUMNS, CustomerRows
from repository.newest_wins import clear_older_tombstones, upsert_newest
from repository.tables import customers, tombstones

__all__ = ["bulk_upsert"]


#: A customer as a bulk upsert takes it: rows, or (PostgreSQL only) ``COPY`` text.
Laid = CustomerRows | CopyReady


def bulk_upsert(session: Session, batch: Sequence[Laid]) -> list[bool]:
    """Upsert a batch of validated customers; for each, whether it was applied.

    Within a batch, the newest version of an id wins (the later one among equals), as if
    the batch had been upserted one by one; the others count as not applied.
    """
    if not batch:
        return []
    if dialect_of(session) == "postgresql":
        applied = _merge_postgresql(session, batch)
    else:
        applied = _merge_sqlite(session, [_rows_of(laid) for laid in batch])
    winners = _winners(batch)
    return [index in winners and rows.id in applied for index, rows in enumerate(batch)]


def _rows_of(laid: Laid) -> CustomerRows:
    if isinstance(laid, CopyReady):
        raise TypeError("COPY text is for PostgreSQL: lay customers out as rows for SQLite")
    return laid


def _winners(batch: Sequence[Laid]) -> set[int]:
    """Index of the version of each id that sequential upserts would leave stored."""
    best: dict[str, int] = {}
    for index, rows in enumerate(batch):
        current = best.get(rows.id)
        if current is None or _at_least_as_new(rows, batch[current]):
            best[rows.id] = index
    return set(best.values())


def _at_least_as_new(incoming: Laid, stored: Laid) -> bool:
    if stored.version_at is None:
        return True
    return incoming.version_at is not None and incoming.version_at >= stored.version_at


# -- PostgreSQL ------------------------------------------------------------------------

def _merge_postgresql(session: Session, batch: Sequence[Laid]) -> set[str]:
    winners = [
        laid if isinstance(laid, CopyReady) else copy_ready(laid)
        for laid in (batch[i] for i in sorted(_winners(batch)))
    ]
    lock_customers(session, [rows.id for rows in winners])
    connection = session.connection()
    # Customers neither stored nor deleted are copied straight into the table. Checking
    # first is safe only because every writer holds the customer's lock (taken above) while
    # it writes: no one can store or delete these ids before this transaction ends.
    known = set(connection.execute(_KNOWN, {"ids": [rows.id for rows in winners]}).scalars())
    new = [rows for rows in winners if rows.id not in known]
    copy_text(connection, "customers", CUSTOMER_COLUMNS, [rows.customer for rows in new])
    applied = {rows.id for rows in new}
    stored = [rows for rows in winners if rows.id in known]  # or remembered as deleted
    if stored:
        applied |= _merge_staged(connection, stored)
    # A payload carries the whole customer: the stored versions' child rows all go.
    delete_children(session, [rows.id for rows in stored if rows.id in applied])
    copy_children(connection, [rows for rows in winners if rows.id in applied])
    return applied


def _merge_staged(connection: Connection, winners: Sequence[CopyReady]) -> set[str]:
    """Upsert customers that are stored or remembered as deleted, under the rules: staged,
    then merged in one statement; the ids applied."""
    # Only the customer rows are staged: the merge decides which customers are applied, and
    # their child rows are then copied straight into the child tables.
    connection.exec_driver_sql(
        "CREATE TEMPORARY TABLE IF NOT EXISTS _stage_customers "
        "(LIKE customers INCLUDING DEFAULTS) ON COMMIT DELETE ROWS"
    )
    # Its rows go at commit; a caller may upsert several batches in one transaction.
    connection.execute(delete(_STAGE))
    copy_text(connection, "_stage_customers", CUSTOMER_COLUMNS, [r.customer for r in winners])
    # A payload newer than a remembered deletion clears it; one as old or older is blocked.
    connection.execute(clear_older_tombstones(_STAGE.c.id, _STAGE.c.version_at))
    return set(connection.execute(_MERGE_CUSTOMERS).scalars())


# Joined with the ids rather than ``= ANY(:ids)``, which the planner may answer with a
# sequential scan of the whole table when the list is long.
_KNOWN = text(
    "SELECT c.id FROM unnest(CAST(:ids AS text[])) AS k(id) JOIN customers c ON c.id = k.id"
    " UNION ALL SELECT t.customer_id FROM unnest(CAST(:ids AS text[])) AS k(id)"
    " JOIN customer_tombstones t ON t.customer_id = k.id"
)
_STAGE = table("_stage_customers", *(column(name) for name in CUSTOMER_COLUMNS))
_MERGE_CUSTOMERS = upsert_newest(
    postgresql.insert(customers).from_select(
        CUSTOMER_COLUMNS,
        select(*(_STAGE.c[name] for name in CUSTOMER_COLUMNS))
        .where(~exists().where(tombstones.c.customer_id == _STAGE.c.id))
        .order_by(_STAGE.c.id),
    )
)


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
        select(tombstones.c.customer_id).where(tombstones.c.customer_id.in_(ids))
    ))
    candidates = [rows for rows in winners if rows.id not in blocked]
    if not candidates:
        return set()
    applied: set[str] = set()
    # Few enough rows per statement to stay under SQLite's limit of bound parameters.
    for start in range(0, len(candidates), _SQLITE_ROWS_PER_STATEMENT):
        chunk = candidates[start:start + _SQLITE_ROWS_PER_STATEMENT]
        upsert = upsert_newest(sqlite.insert(customers).values([r.customer for r in chunk]))
        applied.update(session.scalars(upsert))
    replace_children(session, [rows for rows in candidates if rows.id in applied])
    return applied

