"""The newest-wins rule as SQL, shared by single and bulk writes, and what a write did.

A stored customer is replaced only by a payload at least as new, compared by
``version_at`` (``updated_at``, else ``created_at``): a stored customer without a version
is replaced by anything, a payload without one replaces nothing that has one.
"""

from __future__ import annotations

import enum
import functools
from datetime import datetime
from typing import Any

from sqlalchemy import (
    ColumnElement,
    Delete,
    and_,
    bindparam,
    cast,
    delete,
    exists,
    false,
    or_,
    select,
)
from sqlalchemy.dialects import postgresql

from repository.db.backends import Backend
from repository.db.backends.postgresql import delete_children_of
from repository.db.tables import customers, tombstones
from repository.store.mapping import CUSTOMER_COLUMNS

__all__ = [
    "UpsertOutcome",
    "clear_older_tombstones",
    "older_tombstone",
    "upsert_newest",
    "upsert_one_statement",
    "upsert_one_unless_deleted_postgresql",
    "upsert_outcome",
]


class UpsertOutcome(enum.StrEnum):
    """What an upsert did with a payload."""

    #: Stored it: a new customer, or a version newer than the stored one.
    APPLIED = "applied"
    #: The store held this very version already (rewritten as it was: not a change).
    UNCHANGED = "unchanged"
    #: Kept a newer stored state, or a deletion at least as new.
    STALE = "stale"
    #: Refused: the customer was erased on request (``forget``) and is never stored again.
    FORGOTTEN = "forgotten"


def upsert_outcome(
    *, written: bool, incoming: datetime | None, stored: datetime | None, forgotten: bool
) -> UpsertOutcome:
    """The outcome of a payload of version ``incoming``: ``written`` or not by the rule,
    ``stored`` the version held before the write, ``forgotten`` whether an erasure's
    tombstone is held."""
    if written:
        same = incoming is not None and stored is not None and incoming == stored
        return UpsertOutcome.UNCHANGED if same else UpsertOutcome.APPLIED
    return UpsertOutcome.FORGOTTEN if forgotten else UpsertOutcome.STALE


def older_tombstone(version_at: Any) -> ColumnElement[bool]:
    """Whether a tombstone is one a payload of ``version_at`` clears.

    A sweep's (``swept``: a complete listing did not show the customer) gives way to any
    payload, whatever its version (a null one too): Voucherify shows the customer again.
    A dated deletion (a ``customer.deleted`` webhook) gives way only to a newer payload.
    An erasure on request (``forgotten``) never does.
    """
    # A payload without a version is older than any dated deletion.
    newer = tombstones.c.deleted_at < version_at if version_at is not None else false()
    return and_(or_(tombstones.c.swept.is_(True), newer), tombstones.c.forgotten.is_(False))


def clear_older_tombstones(customer_id: Any, version_at: Any) -> Delete:
    """Forget deletions older than the payload (``customer_id`` and ``version_at`` are
    values, or columns of a staging table): a newer payload brings a deleted customer back
    (:func:`older_tombstone`)."""
    return delete(tombstones).where(
        tombstones.c.customer_id == customer_id, older_tombstone(version_at)
    )


def upsert_newest(insert: Any) -> Any:
    """``insert`` (PostgreSQL's or SQLite's) into customers, turned into an upsert that
    replaces a stored row only under the rule, returning the ids it wrote."""
    stored, incoming = customers.c.version_at, insert.excluded.version_at
    return insert.on_conflict_do_update(
        index_elements=[customers.c.id],
        set_={name: insert.excluded[name] for name in CUSTOMER_COLUMNS if name != "id"},
        where=or_(stored.is_(None), and_(incoming.is_not(None), incoming >= stored)),
    ).returning(customers.c.id)


@functools.cache
def upsert_one_statement(backend: Backend) -> Any:
    """:func:`upsert_newest` of one customer row, every column a bound parameter named as
    the column: built once per backend, so that each upsert skips building the ~40 column
    statement and its cache key."""
    insert = backend.insert(customers)
    return upsert_newest(insert.values({
        name: bindparam(name, type_=customers.c[name].type) for name in CUSTOMER_COLUMNS
    }))


@functools.cache
def upsert_one_unless_deleted_postgresql() -> Any:
    """PostgreSQL: the whole of a single write but its new child rows, in one statement.

    Deletions older than the payload are forgotten (:func:`clear_older_tombstones`), any
    other blocks the insert, the row is upserted newest-wins, and the stored child rows of
    the customer it wrote are deleted. It returns one row: ``written`` (the id written, or
    null), ``stored`` (the version held before) and ``forgotten`` (whether an erasure
    blocks the customer), what :func:`upsert_outcome` takes. The payload must have a
    version (``version_at``): the guard reads a null one as no deletion. Parameters are the
    customer row's columns by name, as for :func:`upsert_one_statement`.
    """
    def value(name: str) -> Any:
        column_type = customers.c[name].type
        # Cast: a SELECT gives its parameters no type of their own, unlike VALUES.
        return cast(bindparam(name, type_=column_type), column_type)

    # Every part reads the snapshot the statement started with, so the tombstones the
    # first part forgets still exist for the guard, which must pass over them itself.
    guard = ~exists().where(
        tombstones.c.customer_id == value("id"), ~older_tombstone(value("version_at"))
    )
    row = select(*(value(name).label(name) for name in CUSTOMER_COLUMNS)).where(guard)
    written = upsert_newest(
        postgresql.insert(customers).from_select(CUSTOMER_COLUMNS, row)
    ).cte("written")
    # Each reads what the upsert returned, so it runs after it.
    gone = [d.cte(f"gone_{i}") for i, d in enumerate(delete_children_of(written))]
    cleared = clear_older_tombstones(value("id"), value("version_at")).cte("cleared")
    # Read in the statement's snapshot: the version held before the upsert.
    stored = select(customers.c.version_at).where(customers.c.id == value("id"))
    forgotten = exists().where(
        tombstones.c.customer_id == value("id"), tombstones.c.forgotten.is_(True)
    )
    return select(
        select(written.c.id).scalar_subquery().label("written"),
        stored.scalar_subquery().label("stored"),
        forgotten.label("forgotten"),
    ).add_cte(cleared, *gone)
