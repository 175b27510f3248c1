"""Voucherify's ``GET /v1/customers`` list semantics, answered from the store.

Documented by Voucherify: ``limit`` 1 to 100 (default 10), ``page`` 1 to 99, a
``starting_after`` date-time cursor, the filters ``created_at[before|after]``,
``updated_at[before|after]``, ``email``, ``city`` and ``name``, and ``order`` among
``created_at``, ``-created_at`` (the default), ``updated_at``, ``-updated_at``, ``source_id``
and ``-source_id``. Without an ``order`` (or with a descending one) ``starting_after`` keeps
the customers before it; with ``order=created_at`` or ``updated_at``, those after it. Where
Voucherify's documentation is silent, the choices are: comparisons are strict; ties are
ordered by id in the order's direction; a customer without ``updated_at`` never matches an
``updated_at`` filter or cursor and sorts last in ``updated_at`` (first in ``-updated_at``);
the ``source_id`` orders keep the default meaning of ``starting_after`` (created before it)
and compare the first 200 characters of each source_id, as its index holds them (longer
source_ids that share those follow each other by id).

A page is two statements: the ids (an index range scan plus at most 9,800 skipped entries
for page 99), then the whole customers by id. ``total`` counts the filtered customers and is
the cost to watch: :class:`TotalCache` keeps it for a few seconds per filter set.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, TypeVar, overload

from sqlalchemy import ColumnElement, Select, and_, exists, func, select
from sqlalchemy.orm import Session

from models.customer import Customer
from models.long_text import equals_indexed, indexed_prefix
from models.storability import text_problem
from repository.db.backends import backend_of
from repository.db.tables import addresses, customers
from repository.store.mapping import email_key, name_key
from repository.store.reads import customer_select, decode_customer
from repository.voucherify.client import CustomerList

__all__ = [
    "DEFAULT_LIST_LIMIT",
    "LIST_ORDERS",
    "MAX_LIST_LIMIT",
    "MAX_LIST_PAGE",
    "InvalidListParameter",
    "ListQuery",
    "TotalCache",
    "count_listed",
    "count_statement",
    "ids_statement",
    "list_customers",
    "parse_list_query",
]

DEFAULT_LIST_LIMIT = 10
MAX_LIST_LIMIT = 100
MAX_LIST_PAGE = 99
LIST_ORDERS = ("created_at", "-created_at", "updated_at", "-updated_at", "source_id", "-source_id")
_DATE_FILTERS = ("created_at[before]", "created_at[after]", "updated_at[before]",
                 "updated_at[after]")
_TEXT_FILTERS = ("email", "city", "name")
T = TypeVar("T")


class InvalidListParameter(ValueError):
    """A query parameter out of Voucherify's documented range; ``name`` says which."""

    def __init__(self, name: str, reason: str) -> None:
        super().__init__(f"{name}: {reason}")
        self.name = name
        self.reason = reason


@dataclass(frozen=True)
class ListQuery:
    limit: int = DEFAULT_LIST_LIMIT
    page: int = 1
    order: str = "-created_at"
    starting_after: datetime | None = None
    #: ``created_at[before]`` and the like, as parsed date-times.
    dates: tuple[tuple[str, datetime], ...] = ()
    email: str | None = None
    city: str | None = None
    name: str | None = None

    def filter_key(self) -> tuple[Any, ...]:
        """What ``total`` depends on (not the cursor, page, limit or order)."""
        return (self.dates, self.email, self.city, self.name)


def parse_list_query(params: Mapping[str, str]) -> ListQuery:
    """Read the documented query parameters; unknown ones are ignored, as Voucherify does
    for parameters it does not know. Every value that reaches a statement is checked here:
    a text filter no column can hold (NUL, a lone surrogate) or a date-time outside what a
    UTC timestamp can hold raises :class:`InvalidListParameter`, never a database error."""
    dates = tuple(
        (name, _datetime(name, params[name])) for name in _DATE_FILTERS if name in params
    )
    order = params.get("order", "-created_at")
    if order not in LIST_ORDERS:
        raise InvalidListParameter("order", f"expected one of {', '.join(LIST_ORDERS)}")
    after = params.get("starting_after")
    return ListQuery(
        limit=_integer(params, "limit", DEFAULT_LIST_LIMIT, MAX_LIST_LIMIT),
        page=_integer(params, "page", 1, MAX_LIST_PAGE),
        order=order,
        starting_after=_datetime("starting_after", after) if after is not None else None,
        dates=dates,
        **{name: _text(name, params[name]) for name in _TEXT_FILTERS if name in params},
    )


@overload
def list_customers(
    session: Session, query: ListQuery, *, total: Callable[[], int] | None = None
) -> CustomerList[Customer]: ...


@overload
def list_customers(
    session: Session,
    query: ListQuery,
    *,
    total: Callable[[], int] | None = None,
    decode: Callable[[Mapping[Any, Any]], T],
) -> CustomerList[T]: ...


def list_customers(
    session: Session,
    query: ListQuery,
    *,
    total: Callable[[], int] | None = None,
    decode: Callable[[Mapping[Any, Any]], Any] = decode_customer,
) -> CustomerList[Any]:
    """One page of the list; ``total`` (e.g. a :class:`TotalCache` lookup) replaces the
    count statement. ``decode`` turns each row into what the page holds: models by default,
    ``reads.decode_customer_value`` for JSON values without them."""
    ids = list(session.scalars(ids_statement(query)))
    has_more = len(ids) > query.limit
    ids = ids[: query.limit]
    found: dict[str, Any] = {}
    if ids:
        statement = customer_select(backend_of(session)).where(customers.c.id.in_(ids))
        for row in session.connection().execute(statement):
            found[row.id] = decode(row._mapping)
    count = total() if total is not None else count_listed(session, query)
    return CustomerList([found[i] for i in ids if i in found], count, has_more)


def count_listed(session: Session, query: ListQuery) -> int:
    """How many stored customers match the query's filters."""
    return int(session.scalar(count_statement(query)) or 0)


def ids_statement(query: ListQuery) -> Select[Any]:
    """The ids of one page, and one more to tell whether more follow."""
    column = _order_column(query.order)
    statement = select(customers.c.id).where(_filters(query))
    cursor = _cursor(query, column)
    if cursor is not None:
        statement = statement.where(cursor)
    # Nulls as PostgreSQL's indexes order them (after every value), said explicitly for SQLite.
    if query.order.startswith("-"):
        ordering = [column.desc().nulls_first(), customers.c.id.desc()]
    else:
        ordering = [column.asc().nulls_last(), customers.c.id.asc()]
    return (
        statement.order_by(*ordering)
        .offset((query.page - 1) * query.limit)
        .limit(query.limit + 1)
    )


def count_statement(query: ListQuery) -> Select[Any]:
    return select(func.count()).select_from(customers).where(_filters(query))


class TotalCache:
    """``total`` per filter set, kept ``seconds`` (thread-safe, at most ``size`` entries):
    paging through a list then costs one count, not one per page."""

    def __init__(self, *, seconds: float = 5.0, size: int = 256) -> None:
        self.seconds = seconds
        self.size = size
        self._entries: OrderedDict[tuple[Any, ...], tuple[float, int]] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: tuple[Any, ...], compute: Callable[[], int]) -> int:
        now = time.monotonic()
        with self._lock:
            entry = self._entries.get(key)
            if entry is not None and now - entry[0] < self.seconds:
                return entry[1]
        value = compute()
        with self._lock:
            self._entries[key] = (now, value)
            self._entries.move_to_end(key)
            while len(self._entries) > self.size:
                self._entries.popitem(last=False)
        return value


def _filters(query: ListQuery) -> ColumnElement[bool]:
    conditions: list[ColumnElement[bool]] = []
    for name, moment in query.dates:
        column = customers.c.created_at if name.startswith("created") else customers.c.updated_at
        conditions.append(column < moment if name.endswith("[before]") else column > moment)
    if query.email is not None:
        # The folded key carries the index; the raw comparison keeps the match exact.
        conditions.append(customers.c.email_folded == email_key(query.email))
        conditions.append(customers.c.email == query.email)
    if query.name is not None:
        conditions.append(customers.c.name_folded == name_key(query.name))
        conditions.append(customers.c.name == query.name)
    if query.city is not None:
        conditions.append(exists().where(
            addresses.c.customer_id == customers.c.id, equals_indexed(addresses.c.city, query.city)
        ))
    return and_(True, *conditions)


def _order_column(order: str) -> ColumnElement[Any]:
    column = customers.c[order.lstrip("-")]
    # The start of a source_id, as its index holds it (revision 0009): the same order for
    # any source_id of up to INDEX_PREFIX characters, longer ones sharing theirs by id.
    return indexed_prefix(column) if column.name == "source_id" else column


def _cursor(query: ListQuery, column: ColumnElement[Any]) -> ColumnElement[bool] | None:
    after = query.starting_after
    if after is None:
        return None
    if query.order in ("created_at", "updated_at"):
        return column > after
    if query.order in ("-created_at", "-updated_at"):
        return column < after
    return customers.c.created_at < after  # the source_id orders: the default meaning


def _integer(params: Mapping[str, str], name: str, default: int, high: int) -> int:
    text = params.get(name)
    if text is None:
        return default
    try:
        value = int(text)
    except ValueError:
        raise InvalidListParameter(name, f"expected an integer from 1 to {high}") from None
    if not 1 <= value <= high:
        raise InvalidListParameter(name, f"expected an integer from 1 to {high}, got {value}")
    return value


def _text(name: str, text: str) -> str:
    problem = text_problem(text)
    if problem:
        raise InvalidListParameter(name, problem)
    return text


def _datetime(name: str, text: str) -> datetime:
    # Query parameters come in more spellings than stored timestamps: the official SDKs
    # send microseconds and a ``+0000`` offset; a date-time without an offset is UTC.
    try:
        moment = datetime.fromisoformat(text.replace("z", "Z"))
    except ValueError:
        raise InvalidListParameter(
            name, "expected an ISO 8601 date-time, e.g. 2024-01-31T12:00:00.000Z"
        ) from None
    if moment.tzinfo is None:
        return moment.replace(tzinfo=UTC)
    try:
        return moment.astimezone(UTC)
    except OverflowError:
        # 0001-01-01T00:00:00+01:00 is a year 0 in UTC, 9999-12-31T23:59:59-01:00 a year
        # 10000: neither exists as a datetime.
        raise InvalidListParameter(
            name, "out of range once converted to UTC (years 1 to 9999)"
        ) from None
