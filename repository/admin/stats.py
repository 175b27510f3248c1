"""Figures about the store for ops: rows, deletions, events by outcome, table sizes, syncs."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from models.base import Base
from models.events import EventOutcome
from models.wire import format_datetime
from repository.db.backends import backend_of
from repository.db.tables import customers, events, tombstones
from repository.store import queries
from repository.voucherify.mirror_state import mirror_states
from repository.webhooks.event_log import count_events

__all__ = ["StoreStats", "estimate_customer_count", "last_applied_at", "store_stats"]


@dataclass(frozen=True)
class StoreStats:
    customers: int
    deleted: int
    #: Recorded events by their outcome (applied, stale, ignored, rejected): one per event.
    events: dict[str, int]
    #: Deliveries of an event already recorded, each answered as a duplicate: a count of
    #: deliveries, not of events, so it is kept apart from the outcomes.
    duplicate_deliveries: int
    #: Bytes on disk per table, indexes included; ``None`` where the database cannot say.
    table_bytes: dict[str, int | None]
    #: Per API synced from: the last completed sync (ISO time), the customers it repaired,
    #: and whether a full listing is under way. A mirror that stopped syncing shows here.
    syncs: list[dict[str, Any]] = field(default_factory=list)


def store_stats(session: Session) -> StoreStats:
    events = count_events(session)
    duplicates = events.pop(EventOutcome.DUPLICATE.value, 0)
    return StoreStats(
        customers=queries.count(session),
        deleted=int(session.scalar(select(func.count()).select_from(tombstones)) or 0),
        events=events,
        duplicate_deliveries=duplicates,
        table_bytes={table: _table_bytes(session, table) for table in Base.metadata.tables},
        syncs=[
            {
                "api_url": state.api_url,
                "last_success_at": (
                    format_datetime(state.last_success_at) if state.last_success_at else None
                ),
                "last_repaired": state.last_repaired,
                "listing_under_way": state.listing_started_at is not None,
            }
            for state in mirror_states(session)
        ],
    )


def _table_bytes(session: Session, table: str) -> int | None:
    return backend_of(session).table_bytes(session, table)


def estimate_customer_count(session: Session) -> int:
    """About how many customers are stored, cheaply (for a metric read at every scrape).

    On PostgreSQL the planner's estimate, ``pg_class.reltuples``, which autovacuum and
    ``ANALYZE`` keep near the truth (and which costs nothing whatever the table's size); an
    exact count while the table has never been analyzed. On SQLite an exact count.
    """
    estimate = backend_of(session).estimated_rows(session, customers.name)
    return estimate if estimate is not None else queries.count(session)


def last_applied_at(session: Session) -> datetime | None:
    """When the latest delivery of an event that was applied arrived (None: never)."""
    # max() keeps the column's type: read back as an aware UTC datetime.
    moment: datetime | None = session.scalar(
        select(func.max(events.c.last_received_at)).where(
            events.c.outcome == EventOutcome.APPLIED.value
        )
    )
    return moment
