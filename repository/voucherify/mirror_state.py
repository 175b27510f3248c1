"""Where the mirror of Voucherify stands, kept in the database so an interrupted run resumes.

Every change here is written in the transaction that stores the page it describes: the
checkpoint never runs ahead of the customers, nor behind them.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from datetime import datetime

from sqlalchemy import Select, delete, exists, func, or_, select
from sqlalchemy.orm import Session

from repository.db.backends import backend_of
from repository.db.tables import customers
from repository.db.tables import mirror_listed_table as listed_table
from repository.db.tables import mirror_state_table as state_table

__all__ = [
    "MirrorState",
    "count_listed",
    "count_unlisted",
    "forget_listed",
    "load_mirror_state",
    "mirror_states",
    "remember_listed",
    "save_mirror_state",
    "unlisted_customers",
]


@dataclass
class MirrorState:
    """A row of the ``sync_state`` table (:class:`models.mirror.MirrorStateRow` says each field)."""

    api_url: str
    created_cursor: datetime | None = None
    updated_cursor: datetime | None = None
    listing_started_at: datetime | None = None
    listing_cursor: datetime | None = None
    listing_sweeps: bool | None = None
    last_success_at: datetime | None = None
    last_repaired: int | None = None


def load_mirror_state(session: Session, api_url: str) -> MirrorState | None:
    row = session.execute(select(state_table).where(state_table.c.api_url == api_url)).first()
    return MirrorState(**row._mapping) if row is not None else None


def mirror_states(session: Session) -> list[MirrorState]:
    """Every API the store mirrors, for ``stats``."""
    rows = session.execute(select(state_table).order_by(state_table.c.api_url))
    return [MirrorState(**row._mapping) for row in rows]


def save_mirror_state(session: Session, state: MirrorState) -> None:
    values = asdict(state)
    ins = backend_of(session).insert(state_table).values(values)
    session.execute(ins.on_conflict_do_update(
        index_elements=[state_table.c.api_url],
        set_={name: ins.excluded[name] for name in values if name != "api_url"},
    ))


def remember_listed(session: Session, api_url: str, customer_ids: Sequence[str]) -> None:
    """Note customers the full listing under way has seen (rejected ones too: they exist)."""
    if customer_ids:
        ins = backend_of(session).insert(listed_table).values(
            [{"api_url": api_url, "customer_id": cid} for cid in dict.fromkeys(customer_ids)]
        )
        session.execute(ins.on_conflict_do_nothing())


def forget_listed(session: Session, api_url: str) -> None:
    session.execute(delete(listed_table).where(listed_table.c.api_url == api_url))


def count_listed(session: Session, api_url: str) -> int:
    """How many customers the full listing under way has seen (each once)."""
    query = select(func.count()).select_from(listed_table).where(listed_table.c.api_url == api_url)
    return int(session.scalar(query) or 0)


def unlisted_customers(
    session: Session,
    api_url: str | None,
    started_at: datetime,
    after: str | None = None,
    *,
    limit: int,
) -> list[str]:
    """Stored customers the listing did not see, older than its start: deleted upstream;
    ``limit`` ids after ``after``, in id order.

    A customer created or updated since the listing started may not have been listed, so it
    is kept whatever the listing saw. ``api_url=None`` leaves out the recorded listing (a
    dry run keeps what it listed in memory): every customer older than the start.
    """
    query = _unlisted(api_url, started_at).order_by(customers.c.id).limit(limit)
    if after is not None:
        query = query.where(customers.c.id > after)
    return list(session.scalars(query))


def count_unlisted(session: Session, api_url: str, started_at: datetime) -> int:
    """How many customers :func:`unlisted_customers` gives in all: what a sweep deletes."""
    query = select(func.count()).select_from(_unlisted(api_url, started_at).subquery())
    return int(session.scalar(query) or 0)


def _unlisted(api_url: str | None, started_at: datetime) -> Select[tuple[str]]:
    query = select(customers.c.id).where(
        or_(customers.c.version_at < started_at, customers.c.version_at.is_(None))
    )
    if api_url is not None:
        listed = exists().where(
            listed_table.c.api_url == api_url, listed_table.c.customer_id == customers.c.id
        )
        query = query.where(~listed)
    return query
