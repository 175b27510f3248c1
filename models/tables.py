"""The relational tables: one customer row, with addresses, loyalty campaigns, referral
entries and deletion tombstones in tables keyed by the customer id first.

Each row keeps what the columns alone cannot say: ``absent_mask`` (which documented keys
were absent), ``null_mask`` (which documented objects were ``null``) and ``extra`` (keys
the documentation does not name). ``repository.store.mapping`` owns the meaning of the bits.
"""

from __future__ import annotations

from datetime import date, datetime
from typing import Any

from sqlalchemy import BigInteger, ForeignKey, Index, SmallInteger, false, text
from sqlalchemy.orm import Mapped, mapped_column, relationship

from models.base import Base, JSONDocument, SortedText, UTCDateTime
from models.long_text import indexed_prefix

__all__ = [
    "CustomerAddressRow",
    "CustomerRow",
    "CustomerTombstoneRow",
    "LoyaltyCampaignRow",
    "ReferralEntryRow",
]

_CASCADE = "all, delete-orphan"


def _customer_fk() -> Mapped[str]:
    return mapped_column(
        SortedText, ForeignKey("customers.id", ondelete="CASCADE"), primary_key=True
    )


class CustomerRow(Base):
    __tablename__ = "customers"

    id: Mapped[str] = mapped_column(SortedText, primary_key=True)
    source_id: Mapped[str | None]
    name: Mapped[str | None]
    description: Mapped[str | None]
    email: Mapped[str | None]
    phone: Mapped[str | None]
    birthday: Mapped[date | None]
    birthdate: Mapped[date | None]
    metadata_: Mapped[Any] = mapped_column("metadata", JSONDocument, nullable=True)
    system_metadata: Mapped[Any] = mapped_column(JSONDocument, nullable=True)
    created_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    updated_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    object: Mapped[str | None]

    redemptions_total_redeemed: Mapped[int | None]
    redemptions_total_failed: Mapped[int | None]
    redemptions_total_succeeded: Mapped[int | None]
    redemptions_total_rolled_back: Mapped[int | None]
    redemptions_total_rollback_failed: Mapped[int | None]
    redemptions_total_rollback_succeeded: Mapped[int | None]
    gift_redeemed_amount: Mapped[int | None]
    gift_amount_to_go: Mapped[int | None]
    loyalty_card_redeemed_points: Mapped[int | None]
    loyalty_card_points_to_go: Mapped[int | None]
    orders_total_amount: Mapped[int | None]
    orders_total_count: Mapped[int | None]
    orders_average_amount: Mapped[int | None]
    orders_last_order_amount: Mapped[int | None]
    orders_last_order_date: Mapped[datetime | None] = mapped_column(UTCDateTime)
    loyalty_points: Mapped[int | None]
    loyalty_referred_customers: Mapped[int | None]
    referrals_total: Mapped[int | None]
    assets_cockpit_url: Mapped[str | None]
    assets_cockpit_preference_center_url: Mapped[str | None]

    #: ``updated_at``, or ``created_at`` where that is missing: the newest-wins key.
    version_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    absent_mask: Mapped[int] = mapped_column(BigInteger, server_default=text("0"))
    null_mask: Mapped[int] = mapped_column(BigInteger, server_default=text("0"))
    extra: Mapped[Any] = mapped_column(JSONDocument, nullable=True)

    #: Search keys: email and name case-folded in Python (``repository.store.mapping.fold``), so
    #: that SQLite and PostgreSQL compare the same text (revision 0005). Derived data,
    #: written with every row and never part of the customer's JSON.
    email_folded: Mapped[str | None]
    name_folded: Mapped[str | None]

    address: Mapped[CustomerAddressRow | None] = relationship(
        cascade=_CASCADE, passive_deletes=True
    )
    loyalty_campaigns: Mapped[list[LoyaltyCampaignRow]] = relationship(
        cascade=_CASCADE, passive_deletes=True, order_by="LoyaltyCampaignRow.campaign"
    )
    referral_entries: Mapped[list[ReferralEntryRow]] = relationship(
        cascade=_CASCADE, passive_deletes=True, order_by="ReferralEntryRow.position"
    )

    __table_args__ = (
        # Orders of the read API's list, ties broken by id, and their filters and cursors
        # (revision 0007; before it, one-column indexes). The source_id one is below the
        # class.
        Index("ix_customers_created_at_id", "created_at", "id"),
        Index("ix_customers_updated_at_id", "updated_at", "id"),
        # The indexes behind repository.store.queries' filters (revisions 0004 and 0005), with
        # the GIN index below the class.
        Index(None, "orders_last_order_date"),
        Index(None, "email_folded"),
        # Prefixes: LIKE on PostgreSQL (whatever the database's collation), GLOB on SQLite.
        Index(None, "name_folded", postgresql_ops={"name_folded": "text_pattern_ops"}),
    )


# Indexes over text Voucherify sends hold its first characters (models.long_text), never
# the whole value: no length of value is refused (revision 0009).
Index("ix_customers_source_id_prefix_id", indexed_prefix(CustomerRow.source_id), CustomerRow.id)

Index(
    "ix_customers_metadata_gin",
    CustomerRow.metadata_,
    postgresql_using="gin",
    postgresql_ops={"metadata": "jsonb_path_ops"},
).ddl_if(dialect="postgresql")


class CustomerAddressRow(Base):
    __tablename__ = "customer_addresses"

    customer_id: Mapped[str] = _customer_fk()
    city: Mapped[str | None]
    state: Mapped[str | None]
    line_1: Mapped[str | None]
    line_2: Mapped[str | None]
    country: Mapped[str | None]
    postal_code: Mapped[str | None]
    absent_mask: Mapped[int] = mapped_column(SmallInteger, server_default=text("0"))
    extra: Mapped[Any] = mapped_column(JSONDocument, nullable=True)


#: The read API's ``city`` filter (revision 0007; a prefix since 0009).
Index("ix_customer_addresses_city_prefix", indexed_prefix(CustomerAddressRow.city))


class LoyaltyCampaignRow(Base):
    """One entry of ``loyalty.campaigns``, keyed by the map key (the campaign name).

    ``campaign`` is the name's key (``repository.store.mapping.campaign_key``): the name itself
    up to 1,200 UTF-8 bytes, beyond that its start and a digest of the whole, so that the
    primary key holds any name and still tells names apart. ``campaign_name`` holds such a
    long name whole, and is NULL whenever ``campaign`` is the name (revision 0009).
    """

    __tablename__ = "customer_loyalty_campaigns"

    customer_id: Mapped[str] = _customer_fk()
    campaign: Mapped[str] = mapped_column(SortedText, primary_key=True)
    campaign_name: Mapped[str | None]
    points: Mapped[int | None]
    loyalty_tier: Mapped[str | None]
    referred_customers: Mapped[int | None]
    absent_mask: Mapped[int] = mapped_column(SmallInteger, server_default=text("0"))
    extra: Mapped[Any] = mapped_column(JSONDocument, nullable=True)

    __table_args__ = (
        Index("ix_customer_loyalty_campaigns_campaign_points", "campaign", "points"),
    )


Index(
    "ix_customer_loyalty_campaigns_campaign_tier_prefix",
    LoyaltyCampaignRow.campaign,
    indexed_prefix(LoyaltyCampaignRow.loyalty_tier),
)


class ReferralEntryRow(Base):
    """One entry of ``referrals.campaigns``; ``position`` keeps the array order."""

    __tablename__ = "customer_referral_entries"

    customer_id: Mapped[str] = _customer_fk()
    position: Mapped[int] = mapped_column(primary_key=True)
    campaign_id: Mapped[str | None]
    referrer_id: Mapped[str | None]
    related_object_id: Mapped[str | None]
    related_object_type: Mapped[str | None]
    date: Mapped[datetime | None] = mapped_column(UTCDateTime)
    absent_mask: Mapped[int] = mapped_column(SmallInteger, server_default=text("0"))
    extra: Mapped[Any] = mapped_column(JSONDocument, nullable=True)


Index(
    "ix_customer_referral_entries_referrer_id_prefix", indexed_prefix(ReferralEntryRow.referrer_id)
)


class CustomerTombstoneRow(Base):
    """A deleted customer: its id and when it was deleted, nothing personal."""

    __tablename__ = "customer_tombstones"

    customer_id: Mapped[str] = mapped_column(SortedText, primary_key=True)
    deleted_at: Mapped[datetime] = mapped_column(UTCDateTime)
    #: Erased on request (revision 0003): no later payload stores the customer again, and
    #: later webhook bodies about it are kept without their content.
    forgotten: Mapped[bool] = mapped_column(server_default=false())
    #: Made by a full sync's sweep (revision 0008): the customer was missing from a complete
    #: listing. Any later payload brings it back; a webhook's deletion replaces the flag.
    swept: Mapped[bool] = mapped_column(server_default=false())
