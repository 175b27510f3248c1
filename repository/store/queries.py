"""Searching customers: the filters a customer service needs, keyset pages, counts.

Every filter is one SQL condition backed by an index on PostgreSQL (see the migrations);
a page is one statement whatever the filters, and pages follow the primary key, so a late
page costs what the first one does. Email and name prefix are compared on the search keys
that every write stores (``repository.store.mapping.fold``), with the argument folded alike.
Arguments are checked before any SQL is built (:class:`InvalidArgument`).
"""

from __future__ import annotations

import base64
import binascii
import json
import math
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, date, datetime
from typing import Any

from sqlalchemy import (
    ColumnElement,
    Select,
    and_,
    exists,
    func,
    select,
    true,
)
from sqlalchemy.orm import Session

from models.customer import Customer
from models.long_text import equals_indexed
from models.storability import text_problem
from models.wire import INT64_MAX, INT64_MIN
from repository.db.backends import Backend, backend_of
from repository.db.tables import campaigns, customers, referrals
from repository.store.mapping import FOLD_LIMIT, campaign_key, email_key, fold
from repository.store.reads import customer_select, decode_customer

__all__ = [
    "MAX_METADATA_DEPTH",
    "MAX_METADATA_TERMS",
    "MAX_PAGE_SIZE",
    "CustomerFilter",
    "InvalidArgument",
    "InvalidCursor",
    "Page",
    "count",
    "cursor_after",
    "customer_select_for",
    "find",
]

MAX_PAGE_SIZE = 1000
#: How deep ``metadata_contains`` may nest (``{"a": [1]}`` is 2 deep) and how many object
#: keys and array elements it may hold in all. On SQLite every key is a table of a join
#: (at most 64) and every array a nested subquery (SQLite's parser takes about 8 levels).
MAX_METADATA_DEPTH = 6
MAX_METADATA_TERMS = 50
#: Longer than any cursor :func:`find` makes (an id of 255 characters, JSON-escaped).
MAX_CURSOR_LENGTH = 8192

_TEXT_FIELDS = ("email", "source_id", "name_prefix", "campaign", "loyalty_tier", "referred_by")
_MOMENT_FIELDS = ("created_from", "created_before", "updated_from", "updated_before")


class InvalidArgument(ValueError):
    """A search argument that no search can take; ``field`` names it (``email``,
    ``metadata_contains``, ``limit``, ``cursor``...), ``reason`` says what is wrong."""

    def __init__(self, field: str, reason: str) -> None:
        super().__init__(f"{field}: {reason}")
        self.field = field
        self.reason = reason


class InvalidCursor(InvalidArgument):
    """The cursor was not made by :func:`find` (or was changed)."""

    def __init__(self, reason: str = "not a cursor returned by find") -> None:
        super().__init__("cursor", reason)


@dataclass(frozen=True)
class CustomerFilter:
    """What to look for; every field is optional and all given fields must hold.

    Arguments are checked when the filter is made and refused with :class:`InvalidArgument`:
    text with U+0000 or a lone surrogate, a ``name_prefix`` longer than
    :data:`repository.store.mapping.FOLD_LIMIT` once case-folded, a time
    without a zone, an integer beyond 64 bits, metadata that is not JSON (NaN, infinities)
    or that nests deeper than :data:`MAX_METADATA_DEPTH` or holds more than
    :data:`MAX_METADATA_TERMS` keys and elements.
    """

    email: str | None = None
    """Equal, ignoring case (compared as :func:`repository.store.mapping.fold` makes them)."""
    source_id: str | None = None
    name_prefix: str | None = None
    """The name starts with this, ignoring case (compared folded, as ``email``)."""
    created_from: datetime | None = None
    created_before: datetime | None = None
    updated_from: datetime | None = None
    updated_before: datetime | None = None
    metadata_contains: Mapping[str, Any] | None = None
    """JSON containment, as PostgreSQL's ``@>``: ``{"tier": "gold"}``."""
    campaign: str | None = None
    """The loyalty campaign (key of ``loyalty.campaigns``) the next two filters look at."""
    min_points: int | None = None
    loyalty_tier: str | None = None
    referred_by: str | None = None
    """The customer id of a referrer in ``referrals.campaigns``."""
    orders_since: datetime | date | None = None
    """``summary.orders.last_order_date`` on or after this."""

    def __post_init__(self) -> None:
        for name in _TEXT_FIELDS:
            _check_text(name, getattr(self, name))
        if self.name_prefix is not None and len(fold(self.name_prefix)) > FOLD_LIMIT:
            raise InvalidArgument(
                "name_prefix", f"longer than {FOLD_LIMIT} characters once case-folded"
            )
        for name in _MOMENT_FIELDS:
            _check_moment(name, getattr(self, name))
        if not isinstance(self.orders_since, date) or isinstance(self.orders_since, datetime):
            _check_moment("orders_since", self.orders_since)
        if self.min_points is not None:
            _check_int64("min_points", self.min_points)
        if (self.min_points is not None or self.loyalty_tier is not None) and not self.campaign:
            raise InvalidArgument("campaign", "min_points and loyalty_tier need a campaign")
        if self.metadata_contains is not None:
            _check_metadata(self.metadata_contains)


@dataclass(frozen=True)
class Page:
    customers: list[Customer]
    next_cursor: str | None
    """Pass to :func:`find` for the next page; ``None`` on the last page."""


def find(
    session: Session,
    filters: CustomerFilter | None = None,
    *,
    cursor: str | None = None,
    limit: int = 100,
) -> Page:
    """One page of matching customers, ordered by id.

    Raises :class:`InvalidArgument` (:class:`InvalidCursor` for the cursor) before any SQL
    runs when ``limit`` is not 1 to :data:`MAX_PAGE_SIZE` or the cursor is not one of ours.
    """
    if isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= MAX_PAGE_SIZE:
        raise InvalidArgument("limit", f"must be a whole number from 1 to {MAX_PAGE_SIZE}")
    backend = backend_of(session)
    # One row more than asked tells whether another page exists.
    statement = customer_select_for(backend, filters, cursor=cursor, limit=limit + 1)
    rows = session.execute(statement).all()
    found = [decode_customer(row._mapping) for row in rows[:limit]]
    next_cursor = _encode_cursor(found[-1].id) if len(rows) > limit else None
    return Page(found, next_cursor)


def customer_select_for(
    backend: Backend, filters: CustomerFilter | None, *, cursor: str | None, limit: int
) -> Select[Any]:
    """The statement behind a page of :func:`find` (for ``EXPLAIN`` and tests)."""
    condition = _conditions(filters or CustomerFilter(), backend)
    if cursor is not None:
        condition = and_(condition, customers.c.id > _decode_cursor(cursor))
    return customer_select(backend).where(condition).limit(limit)


def count(session: Session, filters: CustomerFilter | None = None) -> int:
    """How many customers match."""
    query = select(func.count()).select_from(customers).where(
        _conditions(filters or CustomerFilter(), backend_of(session))
    )
    return int(session.scalar(query) or 0)


# -- checking the arguments ------------------------------------------------------------


def _check_text(name: str, value: object) -> None:
    if value is None:
        return
    if not isinstance(value, str):
        raise InvalidArgument(name, f"expected a string, got {type(value).__name__}")
    problem = text_problem(value)
    if problem:
        raise InvalidArgument(name, problem)


def _check_moment(name: str, value: object) -> None:
    if value is None:
        return
    if not isinstance(value, datetime):
        raise InvalidArgument(name, f"expected a datetime, got {type(value).__name__}")
    if value.utcoffset() is None:
        raise InvalidArgument(name, "must carry a time zone")
    try:
        value.astimezone(UTC)
    except OverflowError:
        raise InvalidArgument(name, "out of range once converted to UTC") from None


def _check_metadata_key(key: object) -> None:
    if not isinstance(key, str):
        raise InvalidArgument(
            "metadata_contains", f"expected string keys, got {type(key).__name__}"
        )
    problem = text_problem(key)
    if problem:
        raise InvalidArgument("metadata_contains", f"a key {problem}")


def _check_int64(name: str, value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidArgument(name, f"expected an integer, got {type(value).__name__}")
    if not INT64_MIN <= value <= INT64_MAX:
        raise InvalidArgument(name, "expected an integer that fits in 64 bits")


def _check_metadata(wanted: object) -> None:
    """Refuse what is not JSON, or too large a filter, before it becomes SQL."""
    field = "metadata_contains"
    if not isinstance(wanted, Mapping):
        raise InvalidArgument(field, f"expected a JSON object, got {type(wanted).__name__}")
    terms = 0
    pending: list[tuple[object, int]] = [(wanted, 1)]
    while pending:
        value, depth = pending.pop()
        if isinstance(value, Mapping | list):
            if depth > MAX_METADATA_DEPTH:
                raise InvalidArgument(field, f"nested deeper than {MAX_METADATA_DEPTH} levels")
            terms += len(value)
            if terms > MAX_METADATA_TERMS:
                raise InvalidArgument(
                    field, f"more than {MAX_METADATA_TERMS} keys and array elements"
                )
            if isinstance(value, Mapping):
                for key in value:
                    _check_metadata_key(key)
                pending.extend((item, depth + 1) for item in value.values())
            else:
                pending.extend((item, depth + 1) for item in value)
        elif isinstance(value, str):
            problem = text_problem(value)
            if problem:
                raise InvalidArgument(field, f"a value {problem}")
        elif isinstance(value, float):
            if not math.isfinite(value):
                raise InvalidArgument(field, f"expected finite numbers, got {value!r}")
        elif isinstance(value, int) and not isinstance(value, bool):
            if not INT64_MIN <= value <= INT64_MAX:
                raise InvalidArgument(field, "expected integers that fit in 64 bits")
        elif value is not None and not isinstance(value, bool):
            raise InvalidArgument(field, f"not a JSON value: {type(value).__name__}")


# -- SQL -------------------------------------------------------------------------------


def _conditions(f: CustomerFilter, backend: Backend) -> ColumnElement[bool]:
    c = customers.c
    parts: list[ColumnElement[bool]] = []
    if f.email is not None:
        parts.append(c.email_folded == email_key(f.email))
    if f.source_id is not None:
        parts.append(equals_indexed(c.source_id, f.source_id))
    if f.name_prefix is not None:
        parts.append(backend.starts_with(c.name_folded, fold(f.name_prefix)))
    if f.created_from is not None:
        parts.append(c.created_at >= f.created_from)
    if f.created_before is not None:
        parts.append(c.created_at < f.created_before)
    if f.updated_from is not None:
        parts.append(c.updated_at >= f.updated_from)
    if f.updated_before is not None:
        parts.append(c.updated_at < f.updated_before)
    if f.metadata_contains is not None:
        parts.append(backend.json_contains(c.metadata, f.metadata_contains))
    if f.campaign is not None:
        entry = [campaigns.c.customer_id == c.id, campaigns.c.campaign == campaign_key(f.campaign)]
        if f.min_points is not None:
            entry.append(campaigns.c.points >= f.min_points)
        if f.loyalty_tier is not None:
            entry.append(equals_indexed(campaigns.c.loyalty_tier, f.loyalty_tier))
        parts.append(exists().where(*entry))
    if f.referred_by is not None:
        referral = [
            referrals.c.customer_id == c.id, equals_indexed(referrals.c.referrer_id, f.referred_by)
        ]
        parts.append(exists().where(*referral))
    if f.orders_since is not None:
        since = f.orders_since
        if not isinstance(since, datetime):
            since = datetime(since.year, since.month, since.day, tzinfo=UTC)
        parts.append(c.orders_last_order_date >= since)
    return and_(true(), *parts)


def cursor_after(customer_id: str) -> str:
    """A cursor whose page starts after ``customer_id`` (to resume, or to jump ahead)."""
    return _encode_cursor(customer_id)


def _encode_cursor(last_id: str) -> str:
    raw = json.dumps({"after": last_id}, separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _decode_cursor(cursor: str) -> str:
    if not isinstance(cursor, str) or len(cursor) > MAX_CURSOR_LENGTH:
        raise InvalidCursor()
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        document = json.loads(raw)
    except (ValueError, RecursionError, binascii.Error):
        raise InvalidCursor() from None
    after = document.get("after") if isinstance(document, dict) else None
    if not isinstance(after, str) or text_problem(after):
        raise InvalidCursor()
    return after

