"""The webhook events table: one row per Voucherify event, with its raw body and outcome."""

from __future__ import annotations

import enum
from datetime import datetime

from sqlalchemy import CheckConstraint, Index, LargeBinary, text
from sqlalchemy.orm import Mapped, mapped_column

from models.base import Base, SortedText, UTCDateTime

__all__ = ["EventOutcome", "WebhookEventRow"]


class EventOutcome(enum.StrEnum):
    """What a delivery did. ``duplicate`` is never a row's outcome: a row keeps the outcome
    of the delivery that processed it, and counts the others in ``deliveries``."""

    APPLIED = "applied"
    STALE = "stale"
    #: About a customer erased on request (revision 0010): kept, the customer not stored.
    FORGOTTEN = "forgotten"
    DUPLICATE = "duplicate"
    IGNORED = "ignored"
    REJECTED = "rejected"


_STORED_OUTCOMES = ", ".join(
    f"'{o.value}'" for o in EventOutcome if o is not EventOutcome.DUPLICATE
)


class WebhookEventRow(Base):
    __tablename__ = "webhook_events"

    #: ``event.id`` (the envelope ``id`` where an event id is missing, as in v2018-08-01).
    event_id: Mapped[str] = mapped_column(SortedText, primary_key=True)
    envelope_id: Mapped[str | None]
    event_type: Mapped[str | None]
    project_id: Mapped[str | None]
    customer_id: Mapped[str | None] = mapped_column(SortedText)
    event_created_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    first_received_at: Mapped[datetime] = mapped_column(UTCDateTime)
    last_received_at: Mapped[datetime] = mapped_column(UTCDateTime)
    deliveries: Mapped[int] = mapped_column(server_default=text("1"))
    outcome: Mapped[str]
    error: Mapped[str | None]
    body: Mapped[bytes] = mapped_column(LargeBinary)

    __table_args__ = (
        CheckConstraint(f"outcome IN ({_STORED_OUTCOMES})", name="outcome"),
        Index(None, "outcome", "event_id"),
        Index(None, "customer_id"),
    )
