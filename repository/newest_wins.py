"""The newest-wins rule as SQL, shared by single and bulk writes.

A stored customer is replaced only by a payload at least as new, compared by
``version_at`` (``updated_at``, else ``created_at``): a stored customer without a version
is replaced by anything, a payload without one replaces nothing that has one.
"""

from __future__ import annotations

import functools
from typing import Any

from sqlalchemy import ColumnElement, Delete, and_, bindparam, cast, delete, exists, or_, select
from sqlalchemy.dialects import postgresql

from repository.engine import native_insert
from repository.mapping import CUSTOMER_COLUMNS
from repository.tables import child_tables, customers, tombstones

__all__ = [
    "clear_older_tombstones",
    "older_tombstone",
    "upsert_newest",
    "upsert_one_statement",
    "upsert_one_unless_deleted_postgresql",
]


def older_tombstone(version_at: Any) -> ColumnElement[bool]:
    """Whether a tombstone is one a payload of ``version_at`` clears: a deletion older than
    the payload, of a customer not erased on request (``forgotten``, never brought back)."""
    return and_(tombstones.c.deleted_at < version_at, tombstones.c.forgotten.is_(False))


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
def upsert_one_statement(dialect: str) -> Any:
    """:func:`upsert_newest` of one customer row, every column a bound parameter named as
    the column: built once per dialect, so that each upsert skips building the ~40 column
    statement and its cache key."""
    insert = native_insert(dialect, customers)
    return upsert_newest(insert.values({
        name: bindparam(name, type_=customers.c[name].type) for name in CUSTOMER_COLUMNS
    }))


@functools.cache
def upsert_one_unless_deleted_postgresql() -> Any:
    """PostgreSQL: the whole of a single write but its new child rows, in one statement.

    Deletions older than the payload are forgotten (:func:`clear_older_tombstones`), any
    other blocks the insert, the row is upserted newest-wins, and the stored child rows of
    the customer it wrote are deleted; it returns the id written, if any. The payload must
    have a version (``version_at``): without one, any deletion blocks it. Parameters are
    the customer row's columns by name, as for :func:`upsert_one_statement`.
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
    gone = [
        delete(table).where(table.c.customer_id.in_(select(written.c.id))).cte(f"gone_{i}")
        for i, table in enumerate(child_tables)
    ]
    cleared = clear_older_tombstones(value("id"), value("version_at")).cte("cleared")
    return select(written.c.id).add_cte(cleared, *gone)
