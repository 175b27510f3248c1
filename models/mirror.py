"""Where the mirror of Voucherify's API stands: cursors, the listing under way, last results.

The tables keep the names they were created with (``sync_state``, ``sync_listed``), after
the CLI's ``sync`` command."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy.orm import Mapped, mapped_column

from models.base import Base, SortedText, UTCDateTime

__all__ = ["MirrorListedRow", "MirrorStateRow"]


class MirrorStateRow(Base):
    """One row per API base URL the store mirrors.

    The cursors are timestamps from Voucherify's own data (its clock, never this machine's),
    each the last one of a page whose customers are all committed: a run resumes there.
    """

    __tablename__ = "sync_state"

    api_url: Mapped[str] = mapped_column(SortedText, primary_key=True)
    #: Incremental passes: newest ``created_at`` / ``updated_at`` already listed (after a
    #: full listing, the server's time when it started).
    created_cursor: Mapped[datetime | None] = mapped_column(UTCDateTime)
    updated_cursor: Mapped[datetime | None] = mapped_column(UTCDateTime)
    #: A full listing under way (the first run, or ``--full``): the server's time when it
    #: started, how far it got, and whether it ends with a sweep for deleted customers.
    listing_started_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    listing_cursor: Mapped[datetime | None] = mapped_column(UTCDateTime)
    listing_sweeps: Mapped[bool | None]
    #: The last run that completed, and how many customers it repaired (stored or deleted).
    last_success_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    last_repaired: Mapped[int | None]


class MirrorListedRow(Base):
    """Customers listed by the full listing under way; the sweep deletes the others."""

    __tablename__ = "sync_listed"

    api_url: Mapped[str] = mapped_column(SortedText, primary_key=True)
    customer_id: Mapped[str] = mapped_column(SortedText, primary_key=True)
