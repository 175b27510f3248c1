"""The customer repository: writes customers into the tables and reads them back.

The caller owns the transaction: methods run inside the session's transaction and never
commit. Writes are native upserts guarded by the newest-wins rule, so concurrent writers
of one customer end in the newest state rather than colliding.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from datetime import datetime
from functools import partial
from operator import attrgetter
from typing import Any, TypeVar

from sqlalchemy import (
    ColumnElement,
    Connection,
    and_,
    bindparam,
    case,
    delete,
    or_,
    select,
)
from sqlalchemy.orm import Session, sessionmaker
from sqlalchemy.sql.expression import Executable

from models.customer import Customer
from models.deprecation import warn_renamed
from models.validation import parse_customer
from repository.db.backends import Backend, backend_of
from repository.db.driver import fetch_first
from repository.db.keyset import check_page_size, keyset_pages
from repository.db.retry import read_in_session, retries_reads, run_read
from repository.db.tables import customers, tombstones
from repository.db.warm_up import hot_statements
from repository.store import queries
from repository.store.bulk import Laid, bulk_upsert, lay_out
from repository.store.children import replace_children
from repository.store.lookups import Lookups
from repository.store.mapping import CustomerRows, customer_to_rows
from repository.store.newest_wins import (
    UpsertOutcome,
    clear_older_tombstones,
    upsert_one_statement,
    upsert_one_unless_deleted_postgresql,
    upsert_outcome,
)
from repository.store.queries import CustomerFilter, Page
from repository.store.reads import (
    customer_select,
    decode_customer,
    get_by_id_statement,
    get_by_source_id_statement,
)

__all__ = [
    "CustomerRepository",
    "DeleteOutcome",
    "UpsertOutcome",
    "UpsertSummary",
    "iter_customers",
    "summarized",
]

T = TypeVar("T")


class DeleteOutcome(enum.StrEnum):
    """What a delete did: removed a stored customer, only remembered the deletion (none
    was stored, or only a dated tombstone), or nothing (a later deletion is known)."""

    REMOVED = "removed"
    RECORDED = "recorded"
    STALE = "stale"


@dataclass
class UpsertSummary:
    """How many payloads had each :class:`UpsertOutcome`."""

    applied: int = 0
    stale: int = 0
    unchanged: int = 0
    forgotten: int = 0

    def count(self, outcome: UpsertOutcome) -> None:
        setattr(self, outcome.value, getattr(self, outcome.value) + 1)


def summarized(outcomes: Iterable[UpsertOutcome]) -> UpsertSummary:
    """How many of ``outcomes`` there are of each kind."""
    summary = UpsertSummary()
    for outcome in outcomes:
        summary.count(outcome)
    return summary


# The statements of a single write's tombstone check, built once (a write runs both).
_P_ID = bindparam("p_id", type_=tombstones.c.customer_id.type)
_P_VERSION_AT = bindparam("p_version_at", type_=tombstones.c.deleted_at.type)
_DELETED_AT = select(tombstones.c.deleted_at).where(tombstones.c.customer_id == _P_ID)
_FORGOTTEN = select(tombstones.c.forgotten).where(tombstones.c.customer_id == _P_ID)
_STORED_VERSION = select(customers.c.version_at).where(customers.c.id == _P_ID)
_CLEAR_OLDER = clear_older_tombstones(_P_ID, _P_VERSION_AT)


@hot_statements
def _hot_statements(backend: Backend) -> list[Executable]:
    """A single write's and a ``get``'s statements sent through the driver, built when an
    async engine is made (:mod:`repository.db.warm_up`)."""
    statements = [
        upsert_one_statement(backend),
        get_by_id_statement(backend),
        get_by_source_id_statement(backend),
    ]
    if backend.writes_in_one_statement:
        statements.append(upsert_one_unless_deleted_postgresql())
    return statements


class CustomerRepository(Lookups):
    """Customers in the relational tables, read and written in the documented shape."""

    def __init__(self, session: Session) -> None:
        self.session = session
        self._backend = backend_of(session)

    # -- writes ----------------------------------------------------------------------

    def upsert(self, customer: Customer | Mapping[str, Any]) -> UpsertOutcome:
        """Store ``customer`` unless a newer state (or a later deletion) is already stored.

        Newest wins by ``updated_at`` (``created_at`` where it is missing); a payload as
        new as the stored one replaces it, so delivering the same payload twice is
        harmless. Raises :class:`models.CustomerValidationError` for bad input, before
        anything is written.
        """
        return self.upsert_row(customer_to_rows(parse_customer(customer)))

    def upsert_many(self, customers: Iterable[Customer | Mapping[str, Any]]) -> UpsertSummary:
        """Upsert several customers with set-based statements (``COPY`` on PostgreSQL).

        All are validated before the first is written. Within the batch the newest version
        of an id wins (the later one among equals); the versions it supersedes count as stale.
        """
        return summarized(self.upsert_rows(lay_out(self.session, customers)))

    def upsert_row(self, rows: CustomerRows) -> UpsertOutcome:
        """:meth:`upsert` of a customer already validated and mapped to rows
        (:func:`~repository.store.mapping.customer_to_rows`): nothing is validated again."""
        return self._write(rows)

    def upsert_rows(self, batch: Sequence[Laid]) -> list[UpsertOutcome]:
        """:meth:`upsert_many` of customers already validated and mapped to rows, or on
        PostgreSQL to ``COPY`` text (:func:`repository.store.pg_copy.copy_ready`; what an import
        pipelines): for each, what was done with it."""
        return bulk_upsert(self.session, batch)

    def delete(
        self, customer_id: str, *, deleted_at: datetime, swept: bool = False
    ) -> DeleteOutcome:
        """Delete a customer and remember the deletion, so older updates cannot revive it.

        The tombstone is kept (or moved later) even when the customer was never stored:
        its creation may still be on its way. ``swept``: the deletion is only a full sync's
        finding that Voucherify no longer lists the customer, which any later payload of it
        undoes (:func:`repository.store.newest_wins.older_tombstone`); a deletion that is not
        swept makes a swept tombstone final.
        """
        if deleted_at.tzinfo is None:
            raise ValueError("deleted_at must carry a time zone")
        self._lock(customer_id)
        ins = self._backend.insert(tombstones).values(
            customer_id=customer_id, deleted_at=deleted_at, swept=swept
        )
        later = ins.excluded.deleted_at > tombstones.c.deleted_at
        remembered = self.session.execute(
            ins.on_conflict_do_update(
                index_elements=[tombstones.c.customer_id],
                set_={
                    "deleted_at": case((later, ins.excluded.deleted_at),
                                       else_=tombstones.c.deleted_at),
                    "swept": and_(tombstones.c.swept, ins.excluded.swept),
                },
                where=or_(later, and_(tombstones.c.swept, ~ins.excluded.swept)),
            ).returning(tombstones.c.customer_id)
        ).first()
        removed = self.session.execute(
            delete(customers).where(customers.c.id == customer_id).returning(customers.c.id)
        ).first()
        if removed is not None:
            return DeleteOutcome.REMOVED
        return DeleteOutcome.RECORDED if remembered is not None else DeleteOutcome.STALE

    # -- reads -----------------------------------------------------------------------

    def deleted_at(self, customer_id: str) -> datetime | None:
        """When the customer was deleted, if a tombstone says so."""
        def read() -> datetime | None:
            value: datetime | None = self.session.connection().scalar(
                _DELETED_AT, {"p_id": customer_id}
            )
            return value

        return self._read(read)

    def is_deleted(self, customer_id: str) -> datetime | None:
        """Deprecated: :meth:`deleted_at` (the name said a bool; it returns a datetime)."""
        warn_renamed("CustomerRepository.is_deleted()", "deleted_at()")
        return self.deleted_at(customer_id)

    def count(self, filters: CustomerFilter | None = None) -> int:
        """How many stored customers match ``filters`` (all of them without)."""
        return self._read(partial(queries.count, self.session, filters))

    def find(
        self,
        filters: CustomerFilter | None = None,
        *,
        cursor: str | None = None,
        limit: int = 100,
    ) -> Page:
        """One page of matching customers ordered by id; ``page.next_cursor`` continues."""
        return self._read(
            partial(queries.find, self.session, filters, cursor=cursor, limit=limit)
        )

    def iter_all(self, *, batch_size: int = 500) -> Iterator[Customer]:
        """Every stored customer, ordered by id, in pages: memory stays constant.

        Pages follow the primary key (keyset pagination), so late pages cost what the
        first one does and rows written meanwhile are seen at most once.
        """
        check_page_size("batch_size", batch_size)
        pages = keyset_pages(
            partial(self.page_after, limit=batch_size), attrgetter("id"), size=batch_size
        )
        for page in pages:
            yield from page

    def page_after(self, after: str | None, *, limit: int) -> list[Customer]:
        """Up to ``limit`` customers ordered by id, after the id ``after`` (from the first
        without): one keyset page, one statement."""
        check_page_size("limit", limit)
        condition = customers.c.id > after if after is not None else None
        return self._read(partial(self._load, condition, limit=limit))

    # -- internals -------------------------------------------------------------------

    def _write(self, rows: CustomerRows) -> UpsertOutcome:
        self._lock(rows.id)
        connection = self.session.connection()
        if self._backend.writes_in_one_statement and rows.version_at is not None:
            # One round trip for the tombstones, the row and the old child rows.
            statement = upsert_one_unless_deleted_postgresql()
            found = fetch_first(connection, statement, rows.customer)
            assert found is not None  # a SELECT without FROM: always one row
            written = found["written"] is not None
            if written:
                replace_children(self.session, (), new=[rows])
            return upsert_outcome(
                written=written, incoming=rows.version_at, stored=found["stored"],
                forgotten=bool(found["forgotten"]),
            )
        blocking = self._blocking_tombstone(rows)
        stored = connection.scalar(_STORED_VERSION, {"p_id": rows.id})
        written = blocking is None and fetch_first(
            connection, upsert_one_statement(self._backend), rows.customer
        ) is not None
        if written:
            replace_children(self.session, [rows])
        return upsert_outcome(
            written=written, incoming=rows.version_at, stored=stored, forgotten=bool(blocking)
        )

    def _blocking_tombstone(self, rows: CustomerRows) -> bool | None:
        """A deletion that blocks this payload: None if there is none, else whether it is
        an erasure's (``forgotten``).

        The tombstones the payload clears (:func:`~repository.store.newest_wins.older_tombstone`)
        go first. That statement is a write so that SQLite takes its write lock here, before
        the check is read.
        """
        connection = self.session.connection()
        params = {"p_id": rows.id, "p_version_at": rows.version_at}
        connection.execute(_CLEAR_OLDER, params)
        forgotten: bool | None = connection.scalar(_FORGOTTEN, {"p_id": rows.id})
        return forgotten

    def _lock(self, customer_id: str) -> None:
        self._backend.lock_customers(self.session, [customer_id])

    def _connection(self) -> AbstractContextManager[Connection]:
        return nullcontext(self.session.connection())

    def _read(self, read: Callable[[], T]) -> T:
        # Every read of the repository comes here. Retried only where no transaction of
        # the caller's is lost with the connection.
        if not retries_reads(self.session):
            return read()
        attempts = 0

        def attempt() -> T:
            nonlocal attempts
            attempts += 1
            if attempts > 1:
                self.session.rollback()  # the session lets go of the lost connection
            return read()

        return run_read(attempt)

    def _load(self, condition: ColumnElement[bool] | None, *, limit: int) -> list[Customer]:
        query = customer_select(self._backend).limit(limit)
        if condition is not None:
            query = query.where(condition)
        rows = self.session.connection().execute(query)
        return [decode_customer(row._mapping) for row in rows]



def iter_customers(sessions: sessionmaker[Session], *, batch_size: int = 500) -> Iterator[Customer]:
    """:meth:`CustomerRepository.iter_all` with each page read on a session of its own
    (:func:`~repository.db.retry.read_in_session`): a page that meets a lost connection is
    read again on a new one, and a long walk holds no connection between pages."""
    check_page_size("batch_size", batch_size)

    def page(after: str | None) -> list[Customer]:
        return read_in_session(
            sessions,
            lambda session: CustomerRepository(session).page_after(after, limit=batch_size),
        )

    for customers_page in keyset_pages(page, attrgetter("id"), size=batch_size):
        yield from customers_page
