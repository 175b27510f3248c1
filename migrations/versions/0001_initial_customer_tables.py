"""Customers, addresses, loyalty campaigns, referral entries and tombstones.

Revision ID: 0001
Revises:
Create Date: 2026-11-25
"""

from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# Frozen copies of the models' column types, as they were at this revision.
KEY = sa.Text().with_variant(sa.Text(collation="C"), "postgresql")
JSON = sa.JSON(none_as_null=True).with_variant(
    postgresql.JSONB(none_as_null=True, astext_type=sa.Text()), "postgresql"
)
TIME = sa.DateTime(timezone=True)


def _bookkeeping(mask_type: sa.types.TypeEngine[int]) -> list[sa.Column[Any]]:
    return [
        sa.Column("absent_mask", mask_type, server_default=sa.text("0"), nullable=False),
        sa.Column("extra", JSON, nullable=True),
    ]


def _customer_key() -> sa.Column[str]:
    return sa.Column("customer_id", KEY, nullable=False)


def _customer_fk(table: str) -> sa.ForeignKeyConstraint:
    return sa.ForeignKeyConstraint(
        ["customer_id"], ["customers.id"],
        name=op.f(f"fk_{table}_customer_id_customers"), ondelete="CASCADE",
    )


def upgrade() -> None:
    op.create_table(
        "customer_tombstones",
        sa.Column("customer_id", KEY, nullable=False),
        sa.Column("deleted_at", TIME, nullable=False),
        sa.PrimaryKeyConstraint("customer_id", name=op.f("pk_customer_tombstones")),
    )
    counters = [
        "redemptions_total_redeemed", "redemptions_total_failed",
        "redemptions_total_succeeded", "redemptions_total_rolled_back",
        "redemptions_total_rollback_failed", "redemptions_total_rollback_succeeded",
        "gift_redeemed_amount", "gift_amount_to_go",
        "loyalty_card_redeemed_points", "loyalty_card_points_to_go",
        "orders_total_amount", "orders_total_count", "orders_average_amount",
        "orders_last_order_amount",
    ]
    op.create_table(
        "customers",
        sa.Column("id", KEY, nullable=False),
        *(sa.Column(name, sa.Text(), nullable=True)
          for name in ("source_id", "name", "description", "email", "phone")),
        sa.Column("birthday", sa.Date(), nullable=True),
        sa.Column("birthdate", sa.Date(), nullable=True),
        sa.Column("metadata", JSON, nullable=True),
        sa.Column("system_metadata", JSON, nullable=True),
        sa.Column("created_at", TIME, nullable=True),
        sa.Column("updated_at", TIME, nullable=True),
        sa.Column("object", sa.Text(), nullable=True),
        *(sa.Column(name, sa.BigInteger(), nullable=True) for name in counters),
        sa.Column("orders_last_order_date", TIME, nullable=True),
        sa.Column("loyalty_points", sa.BigInteger(), nullable=True),
        sa.Column("loyalty_referred_customers", sa.BigInteger(), nullable=True),
        sa.Column("referrals_total", sa.BigInteger(), nullable=True),
        sa.Column("assets_cockpit_url", sa.Text(), nullable=True),
        sa.Column("assets_cockpit_preference_center_url", sa.Text(), nullable=True),
        sa.Column("version_at", TIME, nullable=True),
        sa.Column("absent_mask", sa.BigInteger(), server_default=sa.text("0"), nullable=False),
        sa.Column("null_mask", sa.BigInteger(), server_default=sa.text("0"), nullable=False),
        sa.Column("extra", JSON, nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_customers")),
    )
    op.create_index(op.f("ix_customers_source_id"), "customers", ["source_id"], unique=False)
    op.create_table(
        "customer_addresses",
        _customer_key(),
        *(sa.Column(name, sa.Text(), nullable=True)
          for name in ("city", "state", "line_1", "line_2", "country", "postal_code")),
        *_bookkeeping(sa.SmallInteger()),
        _customer_fk("customer_addresses"),
        sa.PrimaryKeyConstraint("customer_id", name=op.f("pk_customer_addresses")),
    )
    op.create_table(
        "customer_loyalty_campaigns",
        _customer_key(),
        sa.Column("campaign", KEY, nullable=False),
        sa.Column("points", sa.BigInteger(), nullable=True),
        sa.Column("loyalty_tier", sa.Text(), nullable=True),
        sa.Column("referred_customers", sa.BigInteger(), nullable=True),
        *_bookkeeping(sa.SmallInteger()),
        _customer_fk("customer_loyalty_campaigns"),
        sa.PrimaryKeyConstraint(
            "customer_id", "campaign", name=op.f("pk_customer_loyalty_campaigns")
        ),
    )
    op.create_table(
        "customer_referral_entries",
        _customer_key(),
        sa.Column("position", sa.BigInteger(), nullable=False),
        *(sa.Column(name, sa.Text(), nullable=True)
          for name in ("campaign_id", "referrer_id", "related_object_id", "related_object_type")),
        sa.Column("date", TIME, nullable=True),
        *_bookkeeping(sa.SmallInteger()),
        _customer_fk("customer_referral_entries"),
        sa.PrimaryKeyConstraint(
            "customer_id", "position", name=op.f("pk_customer_referral_entries")
        ),
    )


def downgrade() -> None:
    op.drop_table("customer_referral_entries")
    op.drop_table("customer_loyalty_campaigns")
    op.drop_table("customer_addresses")
    op.drop_index(op.f("ix_customers_source_id"), table_name="customers")
    op.drop_table("customers")
    op.drop_table("customer_tombstones")
