"""Searching customers: the filters a customer service needs, keyset pages, counts.

Every filter is one SQL condition backed by an index on PostgreSQL (see the migrations);
a page is one statement whatever the filters, and pages follow the primary key, so a late
page costs what the first one does.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, date, datetime
from typing import Any, cast

from sqlalchemy import ColumnElement, Select, Table, and_, exists, func, literal, select, true
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import Session

from models.customer import Customer
from models.tables import CustomerRow, LoyaltyCampaignRow, ReferralEntryRow
from repository.reads import customer_select, decode_customer

__all__ = [
    "MAX_PAGE_SIZE",
    "CustomerFilter",
    "InvalidCursor",
    "Page",
    "count",
    "cursor_after",
    "customer_select_for",
    "find",
]

MAX_PAGE_SIZE = 1000

customers = cast(Table, CustomerRow.__table__)
campaigns = cast(Table, LoyaltyCampaignRow.__table__)
referrals = cast(Table, ReferralEntryRow.__table__)


class InvalidCursor(ValueError):
    """The cursor was not made by :func:`find` (or was changed)."""


@dataclass(frozen=True)
class CustomerFilter:
    """What to look for; every field is optional and all given fields must hold."""

    email: str | None = None
    """Equal, ignoring case."""
    source_id: str | None = None
    name_prefix: str | None = None
    """The name starts with this, ignoring case."""
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
        if (self.min_points is not None or self.loyalty_tier is not None) and not self.campaign:
            raise ValueError("min_points and loyalty_tier need a campaign")
        for name in ("created_from", "created_before", "updated_from", "updated_before"):
            value = getattr(self, name)
            if value is not None and value.tzinfo is None:
                raise ValueError(f"{name} must carry a time zone")


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
    """One page of matching customers, ordered by id."""
    if not 1 <= limit <= MAX_PAGE_SIZE:
        raise ValueError(f"limit must be between 1 and {MAX_PAGE_SIZE}")
    dialect = session.get_bind().dialect.name
    # One row more than asked tells whether another page exists.
    statement = customer_select_for(dialect, filters, cursor=cursor, limit=limit + 1)
    rows = session.execute(statement).all()
    found = [decode_customer(row) for row in rows[:limit]]
    next_cursor = _encode_cursor(found[-1].id) if len(rows) > limit else None
    return Page(found, next_cursor)


def customer_select_for(
    dialect: str, filters: CustomerFilter | None, *, cursor: str | None, limit: int
) -> Select[Any]:
    """The statement behind a page of :func:`find` (for ``EXPLAIN`` and tests)."""
    condition = _conditions(filters or CustomerFilter(), dialect)
    if cursor is not None:
        condition = and_(condition, customers.c.id > _decode_cursor(cursor))
    return customer_select(dialect).where(condition).limit(limit)


def count(session: Session, filters: CustomerFilter | None = None) -> int:
    """How many customers match."""
    dialect = session.get_bind().dialect.name
    query = select(func.count()).select_from(customers).where(
        _conditions(filters or CustomerFilter(), dialect)
    )
    return int(session.scalar(query) or 0)


def _conditions(f: CustomerFilter, dialect: str) -> ColumnElement[bool]:
    c = customers.c
    parts: list[ColumnElement[bool]] = []
    if f.email is not None:
        parts.append(func.lower(c.email) == f.email.lower())
    if f.source_id is not None:
        parts.append(c.source_id == f.source_id)
    if f.name_prefix is not None:
        parts.append(func.lower(c.name).like(_like_prefix(f.name_prefix.lower()), escape="\\"))
    if f.created_from is not None:
        parts.append(c.created_at >= f.created_from)
    if f.created_before is not None:
        parts.append(c.created_at < f.created_before)
    if f.updated_from is not None:
        parts.append(c.updated_at >= f.updated_from)
    if f.updated_before is not None:
        parts.append(c.updated_at < f.updated_before)
    if f.metadata_contains is not None:
        parts.append(_metadata_contains(f.metadata_contains, dialect))
    if f.campaign is not None:
        entry = [campaigns.c.customer_id == c.id, campaigns.c.campaign == f.campaign]
        if f.min_points is not None:
            entry.append(campaigns.c.points >= f.min_points)
        if f.loyalty_tier is not None:
            entry.append(campaigns.c.loyalty_tier == f.loyalty_tier)
        parts.append(exists().where(*entry))
    if f.referred_by is not None:
        referral = [referrals.c.customer_id == c.id, referrals.c.referrer_id == f.referred_by]
        parts.append(exists().where(*referral))
    if f.orders_since is not None:
        since = f.orders_since
        if not isinstance(since, datetime):
            since = datetime(since.year, since.month, since.day, tzinfo=UTC)
        parts.append(c.orders_last_order_date >= since)
    return and_(true(), *parts)


def _metadata_contains(wanted: Mapping[str, Any], dialect: str) -> ColumnElement[bool]:
    if dialect == "postgresql":
        return customers.c.metadata.op("@>")(literal(dict(wanted), JSONB))
    return _sqlite_contains(customers.c.metadata, "$", wanted)


def _sqlite_contains(document: Any, path: str, wanted: Any) -> ColumnElement[bool]:
    """PostgreSQL's ``@>`` rules, spelled with SQLite's JSON functions."""
    if isinstance(wanted, dict):
        return and_(
            func.json_type(document, path) == "object",
            *(_sqlite_contains(document, f"{path}.{json.dumps(k)}", v) for k, v in wanted.items()),
        )
    if isinstance(wanted, list):
        element = func.json_each(document, path).table_valued("value", "type")
        return and_(
            func.json_type(document, path) == "array",
            *(
                exists()
                .select_from(element)
                .where(_sqlite_scalar(element.c.value, element.c.type, item))
                for item in wanted
            ),
        )
    return _sqlite_scalar(func.json_extract(document, path), func.json_type(document, path), wanted)


def _sqlite_scalar(value: Any, kind: Any, wanted: Any) -> ColumnElement[bool]:
    if wanted is None:
        return kind == "null"  # type: ignore[no-any-return]
    if isinstance(wanted, bool):
        return kind == ("true" if wanted else "false")  # type: ignore[no-any-return]
    if isinstance(wanted, (int, float)):
        return and_(kind.in_(["integer", "real"]), value == wanted)
    if isinstance(wanted, str):
        return and_(kind == "text", value == wanted)
    raise ValueError("metadata_contains: nested objects inside arrays are not supported on SQLite")


def _like_prefix(prefix: str) -> str:
    escaped = prefix.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return escaped + "%"


def cursor_after(customer_id: str) -> str:
    """A cursor whose page starts after ``customer_id`` (to resume, or to jump ahead)."""
    return _encode_cursor(customer_id)


def _encode_cursor(last_id: str) -> str:
    raw = json.dumps({"after": last_id}, separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _decode_cursor(cursor: str) -> str:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        after = json.loads(raw)["after"]
    except (ValueError, KeyError, TypeError, binascii.Error):
        raise InvalidCursor("not a cursor returned by find") from None
    if not isinstance(after, str):
        raise InvalidCursor("not a cursor returned by find")
    return after

