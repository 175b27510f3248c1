"""A customer's child rows (address, loyalty campaigns, referral entries), replaced whole.

A payload carries the whole customer, so applying it deletes every child row the stored
version had and writes the payload's: one rule for a single upsert and for a batch. The
backend deletes and writes them, one way per database
(:meth:`~repository.db.backends.Backend.delete_children`,
:meth:`~repository.db.backends.Backend.insert_children`).
"""

from __future__ import annotations

from collections.abc import Sequence

from sqlalchemy import Connection
from sqlalchemy.orm import Session

from repository.db.backends import backend_of
from repository.db.tables import child_tables
from repository.store.mapping import CustomerRows
from repository.store.pg_copy import CHILD_COLUMNS, CopyReady, copy_text

__all__ = ["copy_children", "delete_children", "replace_children"]


def replace_children(
    session: Session, applied: Sequence[CustomerRows], *, new: Sequence[CustomerRows] = ()
) -> None:
    """Replace the child rows of the customers in ``applied`` (their upserts were applied)
    and write those of ``new`` (customers with none stored: just inserted, or their old
    ones deleted already)."""
    connection = session.connection()
    backend = backend_of(connection)
    backend.delete_children(connection, [rows.id for rows in applied])
    written = [*new, *applied]
    backend.insert_children(connection, (
        [r.address for r in written if r.address is not None],
        [c for r in written for c in r.campaigns],
        [e for r in written for e in r.referrals],
    ))


def copy_children(connection: Connection, written: Sequence[CopyReady]) -> None:
    """Write the child rows of customers laid out for ``COPY`` (:class:`CopyReady`, on
    PostgreSQL), whose stored ones are gone: one ``COPY`` per table."""
    for index, (table, columns) in enumerate(zip(child_tables, CHILD_COLUMNS, strict=True)):
        copy_text(connection, table.name, columns, [rows.children[index] for rows in written])


def delete_children(session: Session, customer_ids: Sequence[str]) -> None:
    """Delete every child row of these customers."""
    connection = session.connection()
    backend_of(connection).delete_children(connection, customer_ids)
