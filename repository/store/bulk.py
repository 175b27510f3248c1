"""Bulk upserts for imports: many customers per statement, with the same rules as ``upsert``.

PostgreSQL: customers neither stored nor deleted are streamed with ``COPY`` straight into
the table; the others into a temporary staging table, merged with one ``INSERT ... ON
CONFLICT DO UPDATE ... WHERE newer`` (after the newest version per id within the batch is
chosen and the tombstones checked). The customers arrive as rows or already as ``COPY``
text (:class:`~repository.store.pg_copy.CopyReady`, what an import's workers send). SQLite:
multi-row upserts. The child rows of the customers that were applied are then replaced
(:mod:`repository.store.children`).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import Boolean, Connection, column, delete, exists, select, table, text
from sqlalchemy.dialects import postgresql
from sqlalchemy.orm import Session

from models.customer import Customer
from models.validation import parse_customer
from repository.db.backends import Backend, backend_of
from repository.db.tables import customers, tombstones
from repository.store.children import copy_children, replace_children
from repository.store.mapping import CUSTOMER_COLUMNS, CustomerRows, customer_to_rows
from repository.store.newest_wins import (
    UpsertOutcome,
    clear_older_tombstones,
    upsert_newest,
    upsert_outcome,
)
from repository.store.pg_copy import CopyReady, copy_ready, copy_text

__all__ = ["Laid", "bulk_upsert", "lay_out"]


#: A customer as a bulk upsert takes it: rows, or (PostgreSQL only) ``COPY`` text.
Laid = CustomerRows | CopyReady


@dataclass
class _Merged:
    """What a merge did: the ids it wrote, and what it found before writing."""

    applied: set[str] = field(default_factory=set)
    #: The versions stored before the merge, by id (stored customers only).
    stored: dict[str, datetime | None] = field(default_factory=dict)
    #: Ids erased on request (``forget``).
    forgotten: set[str] = field(default_factory=set)


def lay_out(session: Session, batch: Iterable[Customer | Mapping[str, Any]]) -> list[Laid]:
    """Validate ``batch`` and lay each customer out as :func:`bulk_upsert` takes it (``COPY``
    text on PostgreSQL, so that the write only sends it). Raises
    :class:`models.CustomerValidationError` at the first bad one. Needs no connection, only
    the session's database: the async face runs it in a worker thread.
    """
    for_copy = backend_of(session).copies
    laid: list[Laid] = []
    for customer in batch:
        rows = customer_to_rows(parse_customer(customer))
        laid.append(copy_ready(rows) if for_copy else rows)
    return laid


def bulk_upsert(session: Session, batch: Sequence[Laid]) -> list[UpsertOutcome]:
    """Upsert a batch of validated customers; for each, what was done with it.

    Within a batch, the newest version of an id wins (the later one among equals), as if
    the batch had been upserted one by one; the others count as stale (or forgotten).
    """
    if not batch:
        return []
    backend = backend_of(session)
    if backend.copies:
        merged = _merge_copied(session, backend, batch)
    else:
        merged = _merge_rows(session, backend, [_rows_of(laid) for laid in batch])
    winners = _winners(batch)
    return [
        upsert_outcome(
            written=index in winners and rows.id in merged.applied,
            incoming=rows.version_at,
            stored=merged.stored.get(rows.id),
            forgotten=rows.id in merged.forgotten,
        )
        for index, rows in enumerate(batch)
    ]


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


# -- PostgreSQL: COPY ------------------------------------------------------------------

def _merge_copied(session: Session, backend: Backend, batch: Sequence[Laid]) -> _Merged:
    winners = [
        laid if isinstance(laid, CopyReady) else copy_ready(laid)
        for laid in (batch[i] for i in sorted(_winners(batch)))
    ]
    backend.lock_customers(session, [rows.id for rows in winners])
    connection = session.connection()
    # Customers neither stored nor deleted are copied straight into the table. Checking
    # first is safe only because every writer holds the customer's lock (taken above) while
    # it writes: no one can store or delete these ids before this transaction ends.
    merged, known = _Merged(), set[str]()
    for row in connection.execute(_KNOWN, {"ids": [rows.id for rows in winners]}):
        known.add(row.id)
        if row.tombstone:
            if row.forgotten:
                merged.forgotten.add(row.id)
        else:
            merged.stored[row.id] = row.version_at
    new = [rows for rows in winners if rows.id not in known]
    copy_text(connection, "customers", CUSTOMER_COLUMNS, [rows.customer for rows in new])
    merged.applied = {rows.id for rows in new}
    stored = [rows for rows in winners if rows.id in known]  # or remembered as deleted
    if stored:
        merged.applied |= _merge_staged(connection, stored)
    # A payload carries the whole customer: the stored versions' child rows all go.
    backend.delete_children(
        connection, [rows.id for rows in stored if rows.id in merged.applied]
    )
    copy_children(connection, [rows for rows in winners if rows.id in merged.applied])
    return merged


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
# Each stored customer with its version, each tombstone with whether it is an erasure's.
_KNOWN = text(
    "SELECT c.id, c.version_at, false AS tombstone, false AS forgotten"
    " FROM unnest(CAST(:ids AS text[])) AS k(id) JOIN customers c ON c.id = k.id"
    " UNION ALL SELECT t.customer_id, NULL, true, t.forgotten"
    " FROM unnest(CAST(:ids AS text[])) AS k(id)"
    " JOIN customer_tombstones t ON t.customer_id = k.id"
).columns(
    column("id", customers.c.id.type),
    column("version_at", customers.c.version_at.type),
    column("tombstone", Boolean),
    column("forgotten", Boolean),
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


# -- SQLite: multi-row upserts ---------------------------------------------------------

_SQLITE_ROWS_PER_STATEMENT = 200


def _merge_rows(session: Session, backend: Backend, batch: Sequence[CustomerRows]) -> _Merged:
    # SQLite has one writer at a time, so the batch needs no per-customer locks; the first
    # statement is a write so the write lock is taken before anything is read.
    winners = [batch[i] for i in sorted(_winners(batch))]
    for rows in winners:
        session.execute(clear_older_tombstones(rows.id, rows.version_at))
    ids = [rows.id for rows in winners]
    blocked = {cid: forgotten for cid, forgotten in session.execute(
        select(tombstones.c.customer_id, tombstones.c.forgotten)
        .where(tombstones.c.customer_id.in_(ids))
    )}
    merged = _Merged(forgotten={cid for cid, forgotten in blocked.items() if forgotten})
    candidates = [rows for rows in winners if rows.id not in blocked]
    if not candidates:
        return merged
    merged.stored = {cid: version for cid, version in session.execute(
        select(customers.c.id, customers.c.version_at)
        .where(customers.c.id.in_([rows.id for rows in candidates]))
    )}
    # Few enough rows per statement to stay under SQLite's limit of bound parameters.
    for start in range(0, len(candidates), _SQLITE_ROWS_PER_STATEMENT):
        chunk = candidates[start:start + _SQLITE_ROWS_PER_STATEMENT]
        upsert = upsert_newest(backend.insert(customers).values([r.customer for r in chunk]))
        merged.applied.update(session.scalars(upsert))
    replace_children(session, [rows for rows in candidates if rows.id in merged.applied])
    return merged
