"""Per-customer write locks (on PostgreSQL, transaction-scoped advisory locks).

A race the upsert alone cannot close: a deletion committing between an upsert's tombstone
check and its insert would let the customer come back. Every writer of a customer takes
its lock first, so writers of one customer take turns. Locks are taken in one global
order (by key), so two writers of several customers never wait on each other in a cycle.
SQLite has a single writer and needs none. The backend takes them
(:meth:`~repository.db.backends.Backend.lock_customers`).
"""

from __future__ import annotations

from collections.abc import Sequence

from sqlalchemy.orm import Session

from repository.db.backends import backend_of
from repository.db.backends.postgresql import LOCK_NAMESPACE

__all__ = ["LOCK_NAMESPACE", "lock_customers"]


def lock_customers(session: Session, customer_ids: Sequence[str]) -> None:
    """Take the write locks of these customers until the end of the transaction.

    Locks this transaction already took are not asked for again (a delivery locks its
    customer before recording the event, then the write would lock it once more): the
    session remembers them per transaction, savepoint included, since rolling a savepoint
    back releases the locks taken within it.
    """
    backend_of(session).lock_customers(session, customer_ids)
