"""Figures about the store for ops: rows, deletions, events by outcome, table sizes."""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import func, select, text
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session

from models.base import Base
from repository import queries
from repository.engine import dialect_of
from repository.event_log import count_events
from repository.tables import tombstones

__all__ = ["StoreStats", "store_stats"]


@dataclass(frozen=True)
class StoreStats:
    customers: int
    deleted: int
    events: dict[str, int]
    #: Bytes on disk per table, indexes included; ``None`` where the database cannot say.
    table_bytes: dict[str, int | None]


def store_stats(session: Session) -> StoreStats:
    return StoreStats(
        customers=queries.count(session),
        deleted=int(session.scalar(select(func.count()).select_from(tombstones)) or 0),
        events=count_events(session),
        table_bytes={table: _table_bytes(session, table) for table in Base.metadata.tables},
    )


def _table_bytes(session: Session, table: str) -> int | None:
    if dialect_of(session) == "postgresql":
        size = session.scalar(
            text("SELECT pg_total_relation_size(CAST(:table AS regclass))"), {"table": table}
        )
        return int(size) if size is not None else None
    try:
        # dbstat is compiled into most SQLite builds; where it is not, the size is unknown.
        with session.begin_nested():
            size = session.scalar(
                text(
                    "SELECT SUM(d.pgsize) FROM dbstat AS d JOIN sqlite_master AS m"
                    " ON d.name = m.name WHERE m.tbl_name = :table"
                ),
                {"table": table},
            )
    except OperationalError:
        return None
    return int(size or 0)
