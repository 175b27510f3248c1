"""Webhook events: one row per Voucherify event, its raw body and outcome.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-25
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

KEY = sa.Text().with_variant(sa.Text(collation="C"), "postgresql")
TIME = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "webhook_events",
        sa.Column("event_id", KEY, nullable=False),
        sa.Column("envelope_id", sa.Text(), nullable=True),
        sa.Column("event_type", sa.Text(), nullable=True),
        sa.Column("project_id", sa.Text(), nullable=True),
        sa.Column("customer_id", KEY, nullable=True),
        sa.Column("event_created_at", TIME, nullable=True),
        sa.Column("first_received_at", TIME, nullable=False),
        sa.Column("last_received_at", TIME, nullable=False),
        sa.Column("deliveries", sa.BigInteger(), server_default=sa.text("1"), nullable=False),
        sa.Column("outcome", sa.Text(), nullable=False),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("body", sa.LargeBinary(), nullable=False),
        sa.CheckConstraint(
            "outcome IN ('applied', 'stale', 'ignored', 'rejected')",
            name=op.f("ck_webhook_events_outcome"),
        ),
        sa.PrimaryKeyConstraint("event_id", name=op.f("pk_webhook_events")),
    )
    op.create_index(
        op.f("ix_webhook_events_customer_id"), "webhook_events", ["customer_id"], unique=False
    )
    op.create_index(
        op.f("ix_webhook_events_outcome"), "webhook_events", ["outcome", "event_id"], unique=False
    )


def downgrade() -> None:
    op.drop_index(op.f("ix_webhook_events_outcome"), table_name="webhook_events")
    op.drop_index(op.f("ix_webhook_events_customer_id"), table_name="webhook_events")
    op.drop_table("webhook_events")
