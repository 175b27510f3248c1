"""The customer repository for asyncio services: the sync repository's rules, awaited.

Each method runs :class:`~repository.store.customers.CustomerRepository`'s own code on the async
session's connection through ``AsyncSession.run_sync`` (SQLAlchemy's greenlet bridge): the
newest-wins upserts, tombstones, mapping and queries exist once, and every database round
trip is awaited on the event loop instead of blocking it. Like the sync repository, it
never commits: the caller owns the transaction (``async with sessions.begin(): ...``).

Writes validate and lay out their customers before that, once, and a batch of more than a
few customers in a worker thread (:mod:`repository.store.off_loop`): the greenlet then
only talks to the database, and the loop is not held for the batch's validation. The
statements a first call would compile on the loop are compiled when the engine is made
(:mod:`repository.db.warm_up`).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterable, Mapping, Sequence
from datetime import datetime
from operator import attrgetter
from typing import Any, Concatenate, ParamSpec, TypeVar

from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import Session

from models.customer import Customer
from models.deprecation import warn_renamed
from models.validation import parse_customer
from repository.db.keyset import check_page_size, keyset_pages_async
from repository.store.bulk import Laid, lay_out
from repository.store.customers import (
    CustomerRepository,
    DeleteOutcome,
    UpsertOutcome,
    UpsertSummary,
    summarized,
)
from repository.store.mapping import customer_to_rows
from repository.store.off_loop import INLINE_BATCH, off_loop
from repository.store.queries import CustomerFilter, Page

__all__ = ["AsyncCustomerRepository"]

P = ParamSpec("P")
T = TypeVar("T")


class AsyncCustomerRepository:
    """:class:`~repository.store.customers.CustomerRepository` on an ``AsyncSession``: the same
    methods with the same outcomes, awaited."""

    def __init__(self, session: AsyncSession) -> None:
        self.session = session

    async def upsert(self, customer: Customer | Mapping[str, Any]) -> UpsertOutcome:
        """See :meth:`CustomerRepository.upsert`. One customer is validated on the loop
        (a fraction of a millisecond), before the database is touched."""
        rows = customer_to_rows(parse_customer(customer))
        return await self._run(CustomerRepository.upsert_row, rows)

    async def upsert_many(
        self, customers: Iterable[Customer | Mapping[str, Any]]
    ) -> UpsertSummary:
        """See :meth:`CustomerRepository.upsert_many` (``COPY`` on PostgreSQL here too).
        The batch is validated and laid out before the database is touched, in a worker
        thread when it holds more than :data:`~repository.store.off_loop.INLINE_BATCH`."""
        batch = list(customers)
        heavy = len(batch) > INLINE_BATCH
        laid = await off_loop(heavy, lay_out, self.session.sync_session, batch)
        return summarized(await self._run(CustomerRepository.upsert_rows, laid))

    async def upsert_rows(self, batch: Sequence[Laid]) -> list[UpsertOutcome]:
        """See :meth:`CustomerRepository.upsert_rows`."""
        return await self._run(CustomerRepository.upsert_rows, batch)

    async def delete(
        self, customer_id: str, *, deleted_at: datetime, swept: bool = False
    ) -> DeleteOutcome:
        """See :meth:`CustomerRepository.delete`."""
        return await self._run(
            CustomerRepository.delete, customer_id, deleted_at=deleted_at, swept=swept
        )

    async def get(self, customer_id: str) -> Customer | None:
        """See :meth:`CustomerRepository.get`."""
        return await self._run(CustomerRepository.get, customer_id)

    async def get_json(self, customer_id: str, *, or_source_id: bool = False) -> str | None:
        """See :meth:`CustomerRepository.get_json`."""
        return await self._run(CustomerRepository.get_json, customer_id, or_source_id=or_source_id)

    async def get_json_by_source_id(self, source_id: str) -> str | None:
        """See :meth:`CustomerRepository.get_json_by_source_id`."""
        return await self._run(CustomerRepository.get_json_by_source_id, source_id)

    async def get_one_or_none(self, customer_id: str) -> Customer | None:
        """Alias of :meth:`get`, under the name SQLAlchemy users know."""
        return await self.get(customer_id)

    async def get_by_source_id(self, source_id: str) -> Customer | None:
        """See :meth:`CustomerRepository.get_by_source_id`."""
        return await self._run(CustomerRepository.get_by_source_id, source_id)

    async def deleted_at(self, customer_id: str) -> datetime | None:
        """See :meth:`CustomerRepository.deleted_at`."""
        return await self._run(CustomerRepository.deleted_at, customer_id)

    async def is_deleted(self, customer_id: str) -> datetime | None:
        """Deprecated: :meth:`deleted_at` (the name said a bool; it returns a datetime)."""
        warn_renamed("AsyncCustomerRepository.is_deleted()", "deleted_at()")
        return await self.deleted_at(customer_id)

    async def count(self, filters: CustomerFilter | None = None) -> int:
        """See :meth:`CustomerRepository.count`."""
        return await self._run(CustomerRepository.count, filters)

    async def find(
        self,
        filters: CustomerFilter | None = None,
        *,
        cursor: str | None = None,
        limit: int = 100,
    ) -> Page:
        """See :meth:`CustomerRepository.find`."""
        return await self._run(CustomerRepository.find, filters, cursor=cursor, limit=limit)

    async def iter_all(self, *, batch_size: int = 500) -> AsyncIterator[Customer]:
        """See :meth:`CustomerRepository.iter_all`: a page per round trip, awaited."""
        check_page_size("batch_size", batch_size)

        async def fetch(after: str | None) -> list[Customer]:
            return await self._run(CustomerRepository.page_after, after, limit=batch_size)

        async for page in keyset_pages_async(fetch, attrgetter("id"), size=batch_size):
            for customer in page:
                yield customer

    async def _run(
        self,
        method: Callable[Concatenate[CustomerRepository, P], T],
        *args: P.args,
        **kwargs: P.kwargs,
    ) -> T:
        def call(session: Session) -> T:
            return method(CustomerRepository(session), *args, **kwargs)

        return await self.session.run_sync(call)
