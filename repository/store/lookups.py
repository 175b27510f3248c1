"""Single-customer reads, by id or by ``source_id``: one statement each, for the repository
on a session and for :class:`CustomerReader` straight on an engine.

:class:`Lookups` holds the reads once. :class:`~repository.store.customers.CustomerRepository`
runs them on its session's connection; :class:`CustomerReader` on a connection checked out
of the engine's pool for the one statement and given back at once, for request handlers
that only read: they then pay for no session (its transaction bookkeeping and identity
map cost about as much as the rest of a ``get`` beyond the statement itself).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from contextlib import AbstractContextManager
from typing import Any, TypeVar

from sqlalchemy import Engine, Select

from models.customer import Customer
from models.storability import text_problem
from models.wire import json_text
from repository.db.backends import Backend, backend_of
from repository.db.driver import AnyConnection, PooledConnection, fetch_first, needs_execute
from repository.db.engine import is_read_only
from repository.db.retry import run_read
from repository.store.reads import (
    decode_customer,
    decode_customer_value,
    get_by_id_statement,
    get_by_key_statement,
    get_by_source_id_statement,
)

__all__ = ["CustomerReader", "Lookups"]

T = TypeVar("T")


class Lookups:
    """The reads of one whole customer; a subclass says which connection they run on."""

    _backend: Backend

    def _connection(self) -> AbstractContextManager[AnyConnection]:
        raise NotImplementedError

    def get(self, customer_id: str) -> Customer | None:
        """The stored customer, or ``None``: one statement, however large it is."""
        row = self._fetch(get_by_id_statement, id=customer_id)
        return decode_customer(row) if row is not None else None

    def get_one_or_none(self, customer_id: str) -> Customer | None:
        """Alias of :meth:`get`, under the name SQLAlchemy users know."""
        return self.get(customer_id)

    def get_json(self, customer_id: str, *, or_source_id: bool = False) -> str | None:
        """The stored customer as compact JSON text, equal to ``get(...).to_dict()``
        serialised, or ``None``; for callers that only pass the JSON on (an HTTP answer,
        an export), without building the models.

        ``or_source_id=True`` answers, for a key that is no customer's id, what
        :meth:`get_json_by_source_id` would (as Voucherify's ``GET /v1/customers/{id}``
        does), in the same single statement.
        """
        if or_source_id:
            return _json_or_none(self._fetch(get_by_key_statement, key=customer_id))
        return _json_or_none(self._fetch(get_by_id_statement, id=customer_id))

    def get_by_source_id(self, source_id: str) -> Customer | None:
        """The live customer with this ``source_id`` and the newest version.

        Out-of-order deliveries can leave two customers with one ``source_id`` for a
        while (the old holder's rename not yet received): the newer one is the answer.
        """
        row = self._fetch(get_by_source_id_statement, source_id=source_id)
        return decode_customer(row) if row is not None else None

    def get_json_by_source_id(self, source_id: str) -> str | None:
        """:meth:`get_by_source_id` as :meth:`get_json` gives it."""
        return _json_or_none(self._fetch(get_by_source_id_statement, source_id=source_id))

    def _fetch(
        self, statement: Callable[[Backend], Select[Any]], **params: Any
    ) -> dict[str, Any] | None:
        # A key no column can hold (NUL, a lone surrogate) is no stored customer's: the
        # answer is "none", not a driver error (PostgreSQL refuses NUL in text).
        if any(text_problem(key) for key in params.values()):
            return None
        compiled = statement(self._backend)

        def read() -> dict[str, Any] | None:
            # The hot path: the driver's cursor, with SQLAlchemy's compiled statement and
            # type processing but not its per-execution machinery.
            with self._connection() as connection:
                return fetch_first(connection, compiled, params)

        return self._read(read)

    def _read(self, read: Callable[[], T]) -> T:
        """Run ``read``, retried as the connection it runs on allows."""
        return read()


class CustomerReader(Lookups):
    """Whole customers read straight from an engine, without a session: each read checks a
    connection out of the pool, runs its one statement in autocommit (no ``BEGIN``, no
    ``ROLLBACK``) and gives the connection back.

    For request handlers that only read. Give it a read-only engine
    (``make_engine(url, read_only=True)``); any other engine works too, its connections
    switched to autocommit for each read, which costs a little more.
    """

    def __init__(self, engine: Engine) -> None:
        self._read_only = is_read_only(engine)
        self.engine = engine if self._read_only else engine.execution_options(
            isolation_level="AUTOCOMMIT"
        )
        self._backend = backend_of(engine)

    def _read(self, read: Callable[[], T]) -> T:
        # Each read checks out a connection of its own: one lost is retried on a new one.
        return run_read(read)

    def _connection(self) -> AbstractContextManager[AnyConnection]:
        # Listeners may be added at any time (tracing): they see the statement only through
        # a Connection, which also applies a schema_translate_map.
        if self._read_only and not needs_execute(self.engine):
            return PooledConnection(self.engine)
        return self.engine.connect()


def _json_or_none(row: Mapping[str, Any] | None) -> str | None:
    return json_text(decode_customer_value(row)) if row is not None else None
