"""Reading whole customers in one statement per page, on both databases.

The customer row, its address and its loyalty campaigns and referral entries (each
aggregated into a JSON array by a correlated subquery) come back in one row per customer:
one round trip for ``get``, one per page for ``iter_all`` and ``find``.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    ColumnElement,
    ScalarSelect,
    Select,
    Table,
    bindparam,
    func,
    select,
    type_coerce,
)

from models.customer import Customer
from models.long_text import equals_indexed
from repository.db.backends import Backend
from repository.db.tables import addresses, campaigns, customers, referrals
from repository.store.mapping import (
    ADDRESS_COLUMNS,
    CAMPAIGN_COLUMNS,
    REFERRAL_COLUMNS,
    SEARCH_KEY_COLUMNS,
    customer_from_rows,
    customer_value_from_rows,
)

__all__ = [
    "customer_select",
    "decode_customer",
    "decode_customer_value",
    "get_by_id_statement",
    "get_by_key_statement",
    "get_by_source_id_statement",
]

_ADDRESS_FIELDS = [name for name in ADDRESS_COLUMNS if name != "customer_id"]
_CAMPAIGN_FIELDS = [name for name in CAMPAIGN_COLUMNS if name != "customer_id"]
_REFERRAL_FIELDS = [name for name in REFERRAL_COLUMNS if name != "customer_id"]
#: What a customer is rebuilt from: every column but the search keys derived from them.
_CUSTOMER_FIELDS = [c for c in customers.c if c.name not in SEARCH_KEY_COLUMNS]


def customer_select(backend: Backend) -> Select[Any]:
    """``SELECT`` of whole customers, ordered by id; add ``where``/``limit`` to use it.

    Child rows, the address included, come from correlated subqueries rather than joins:
    the customers are then read straight along the primary key (or the filter's index),
    and page 1,000 costs what page 1 does. A join would make the planner read the address
    table from its start to reach a late page.
    """
    return select(
        *_CUSTOMER_FIELDS,
        _aggregate(addresses, _ADDRESS_FIELDS, backend).label("address_json"),
        _aggregate(campaigns, _CAMPAIGN_FIELDS, backend).label("campaigns_json"),
        _aggregate(referrals, _REFERRAL_FIELDS, backend).label("referrals_json"),
    ).order_by(customers.c.id)


@functools.cache
def get_by_id_statement(backend: Backend) -> Select[Any]:
    """:func:`customer_select` for one id (bound as ``id``), built once per backend so that
    each call skips building and compiling it."""
    return customer_select(backend).where(customers.c.id == bindparam("id")).limit(1)


@functools.cache
def get_by_source_id_statement(backend: Backend) -> Select[Any]:
    """:func:`customer_select` for the live customer with a ``source_id`` (bound as
    ``source_id``) and the newest version: out-of-order deliveries can leave two customers
    with one ``source_id`` for a while (the old holder's rename not yet received)."""
    newest = _newest_with_source_id(bindparam("source_id"))
    return customer_select(backend).where(customers.c.id == newest).limit(1)


@functools.cache
def get_by_key_statement(backend: Backend) -> Select[Any]:
    """:func:`customer_select` for the customer whose id is ``key`` or else the one
    :func:`get_by_source_id_statement` finds for ``key`` as a ``source_id``: one statement
    (``coalesce`` looks for the second only when the first is not there)."""
    by_id = select(customers.c.id).where(customers.c.id == bindparam("key")).scalar_subquery()
    found = func.coalesce(by_id, _newest_with_source_id(bindparam("key")))
    return customer_select(backend).where(customers.c.id == found).limit(1)


def _newest_with_source_id(source_id: ColumnElement[Any]) -> ScalarSelect[Any]:
    return (
        select(customers.c.id)
        .where(equals_indexed(customers.c.source_id, source_id))
        .order_by(customers.c.version_at.desc().nulls_last(), customers.c.id.desc())
        .limit(1)
        .scalar_subquery()
    )


def decode_customer(row: Mapping[Any, Any]) -> Customer:
    """Reassemble the documented shape from one row of :func:`customer_select` (its columns
    by name: ``Row._mapping``, or :func:`repository.db.driver.fetch_first`'s dict)."""
    return customer_from_rows(*_customer_rows(row))


def decode_customer_value(row: Mapping[Any, Any]) -> dict[str, Any]:
    """:func:`decode_customer` as JSON values, without building the models (for callers
    that only serialise it: ``models.wire.json_text`` of it is the ``to_dict`` text)."""
    return customer_value_from_rows(*_customer_rows(row))


def _customer_rows(
    head: Mapping[Any, Any],
) -> tuple[Mapping[Any, Any], dict[str, Any] | None, list[dict[str, Any]], list[dict[str, Any]]]:
    """The customer's own row and its child rows, from one row of :func:`customer_select`."""
    address = None
    if head["address_json"]:
        (address,) = (_fields(_ADDRESS_FIELDS, values) for values in head["address_json"])
    campaign_rows = [
        _fields(_CAMPAIGN_FIELDS, values) for values in head["campaigns_json"] or ()
    ]
    referral_rows = [
        _fields(_REFERRAL_FIELDS, values) for values in head["referrals_json"] or ()
    ]
    for entry in referral_rows:
        entry["date"] = _timestamp(entry["date"])
    return head, address, campaign_rows, referral_rows


def _aggregate(table: Table, fields: list[str], backend: Backend) -> ColumnElement[Any]:
    """A JSON array of ``[field, ...]`` arrays, one per child row of the outer customer."""
    aggregate = backend.json_rows([table.c[name] for name in fields])
    subquery = select(aggregate).where(table.c.customer_id == customers.c.id).scalar_subquery()
    return type_coerce(subquery, JSON)


def _fields(names: list[str], values: list[Any]) -> dict[str, Any]:
    return dict(zip(names, values, strict=True))


def _timestamp(value: str | None) -> datetime | None:
    """A timestamp as JSON renders it: ISO 8601 UTC wall-clock time without an offset (from
    PostgreSQL's ``timezone('UTC', ...)``, or SQLite's storage form); one with an offset
    is taken as the instant it names."""
    if value is None:
        return None
    moment = datetime.fromisoformat(value)
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)
