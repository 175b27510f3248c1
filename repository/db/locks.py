"""Per-customer write locks on PostgreSQL (transaction-scoped advisory locks).

A race the upsert alone cannot close: a deletion committing between an upsert's tombstone
check and its insert would let the customer come back. Every writer of a customer takes
its lock first, so writers of one customer take turns. Locks are taken in one global
order (by key), so two writers of several customers never wait on each other in a cycle.
SQLite has a single writer and needs none.
"""

from __future__ import annotations

from collections.abc import Sequence

from sqlalchemy import Integer, column, text
from sqlalchemy.orm import Session

from repository.db.driver import send
from repository.db.engine import dialect_of

__all__ = ["LOCK_NAMESPACE", "LOCK_STATEMENTS", "lock_customers"]

#: First key of the two-key advisory locks, so they cannot clash with other users' locks.
LOCK_NAMESPACE = 0x43535431

# Where a session keeps (its transaction, the ids locked in it).
_HELD = "customer_store.locked_customers"
_LOCK_MANY = text(
    "SELECT count(pg_advisory_xact_lock(:namespace, key)) AS locked FROM ("
    " SELECT DISTINCT hashtext(id) AS key FROM unnest(CAST(:ids AS text[])) AS id"
    " ORDER BY key) AS keys"
).columns(column("locked", Integer))
# One customer's (a webhook's): a text parameter costs the driver less than an array.
_LOCK_ONE = text(
    "SELECT count(pg_advisory_xact_lock(:namespace, hashtext(:id))) AS locked"
).columns(column("locked", Integer))

#: The statements :func:`lock_customers` sends (PostgreSQL), for building ahead of use.
LOCK_STATEMENTS = (_LOCK_ONE, _LOCK_MANY)


def lock_customers(session: Session, customer_ids: Sequence[str]) -> None:
    """Take the write locks of these customers until the end of the transaction.

    Locks this transaction already took are not asked for again (a delivery locks its
    customer before recording the event, then the write would lock it once more): the
    session remembers them per transaction, savepoint included, since rolling a savepoint
    back releases the locks taken within it.
    """
    if not customer_ids or dialect_of(session) != "postgresql":
        return
    connection = session.connection()  # begins the transaction if none has: it keeps the locks
    transaction = session.get_nested_transaction() or session.get_transaction()
    held: tuple[object, set[str]] | None = session.info.get(_HELD)
    if held is None or held[0] is not transaction:
        held = (transaction, set())
        session.info[_HELD] = held
    wanted = [customer_id for customer_id in customer_ids if customer_id not in held[1]]
    if not wanted:
        return
    # Its count is not needed: within a pipeline the statement after it goes along.
    if len(wanted) == 1:
        sent = send(connection, _LOCK_ONE, {"namespace": LOCK_NAMESPACE, "id": wanted[0]})
    else:
        sent = send(connection, _LOCK_MANY, {"namespace": LOCK_NAMESPACE, "ids": wanted})
    sent.close()
    held[1].update(wanted)
