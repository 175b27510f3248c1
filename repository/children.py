"""A customer's child rows (address, loyalty campaigns, referral entries), replaced whole.

A payload carries the whole customer, so applying it deletes every child row the stored
version had and writes the payload's: one rule for a single upsert and for a batch.
"""

from __future__ import annotations

from collections.abc import Sequence

from sqlalchemy import delete, insert
from sqlalchemy.orm import Session

from repository.copy import copy_rows
from repository.engine import dialect_of
from repository.mapping import ADDRESS_COLUMNS, CAMPAIGN_COLUMNS, REFERRAL_COLUMNS, CustomerRows
from repository.tables import addresses, campaigns, referrals

__all__ = ["replace_children"]

# One statement for the three tables, one cached plan for any batch size. Joined with the
# ids: ``customer_id = ANY(ids)`` lets the planner scan a whole table for a long list.
_DELETE_CHILDREN_POSTGRESQL = (
    "WITH k AS (SELECT unnest(CAST(%(ids)s AS text[])) AS id), "
    "a AS (DELETE FROM customer_addresses t USING k WHERE t.customer_id = k.id), "
    "c AS (DELETE FROM customer_loyalty_campaigns t USING k WHERE t.customer_id = k.id) "
    "DELETE FROM customer_referral_entries t USING k WHERE t.customer_id = k.id"
)


def replace_children(
    session: Session, applied: Sequence[CustomerRows], *, new: Sequence[CustomerRows] = ()
) -> None:
    """Replace the child rows of the customers in ``applied`` (their upserts were applied)
    and write those of ``new`` (customers just inserted, who have none to delete)."""
    connection = session.connection()
    on_postgresql = dialect_of(session) == "postgresql"
    ids = [rows.id for rows in applied]
    if ids and on_postgresql:
        connection.exec_driver_sql(_DELETE_CHILDREN_POSTGRESQL, {"ids": ids})
    elif ids:
        for table in (addresses, campaigns, referrals):
            connection.execute(delete(table).where(table.c.customer_id.in_(ids)))
    written = [*new, *applied]
    for table, columns, children in (
        (addresses, ADDRESS_COLUMNS, [r.address for r in written if r.address is not None]),
        (campaigns, CAMPAIGN_COLUMNS, [c for r in written for c in r.campaigns]),
        (referrals, REFERRAL_COLUMNS, [e for r in written for e in r.referrals]),
    ):
        if not children:
            continue
        if on_postgresql:
            copy_rows(connection, table.name, columns, children)
        else:
            connection.execute(insert(table), children)
