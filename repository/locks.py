"""Per-customer write locks on PostgreSQL (transaction-scoped advisory locks).

A race the upsert alone cannot close: a deletion committing between an upsert's tombstone
check and its insert would let the customer come back. Every writer of a customer takes
its lock first, so writers of one customer take turns. Locks are taken in one global
order (by key), so two writers of several customers never wait on each other in a cycle.
SQLite has a single writer and needs none.
"""

from __future__ import annotations

from collections.abc import Sequence

from sqlalchemy import text
from sqlalchemy.orm import Session

from repository.engine import dialect_of

__all__ = ["LOCK_NAMESPACE", "lock_customers"]

#: First key of the two-key advisory locks, so they cannot clash with other users' locks.
LOCK_NAMESPACE = 0x43535431

_LOCK_MANY = text(
    "SELECT count(pg_advisory_xact_lock(:namespace, key)) FROM ("
    " SELECT DISTINCT hashtext(id) AS key FROM unnest(CAST(:ids AS text[])) AS id"
    " ORDER BY key) AS keys"
)


def lock_customers(session: Session, customer_ids: Sequence[str]) -> None:
    """Take the write locks of these customers until the end of the transaction."""
    if not customer_ids or dialect_of(session) != "postgresql":
        return
    session.execute(_LOCK_MANY, {"namespace": LOCK_NAMESPACE, "ids": list(customer_ids)})
