"""Sync from Voucherify's API: where it stands (``sync_state``) and what the full listing under
way has listed (``sync_listed``). New tables only: nothing existing is locked.

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-02
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

KEY = sa.Text().with_variant(sa.Text(collation="C"), "postgresql")
TIME = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "sync_state",
        sa.Column("api_url", KEY, nullable=False),
        sa.Column("created_cursor", TIME, nullable=True),
        sa.Column("updated_cursor", TIME, nullable=True),
        sa.Column("listing_started_at", TIME, nullable=True),
        sa.Column("listing_cursor", TIME, nullable=True),
        sa.Column("listing_sweeps", sa.Boolean(), nullable=True),
        sa.Column("last_success_at", TIME, nullable=True),
        sa.Column("last_repaired", sa.BigInteger(), nullable=True),
        sa.PrimaryKeyConstraint("api_url", name=op.f("pk_sync_state")),
    )
    op.create_table(
        "sync_listed",
        sa.Column("api_url", KEY, nullable=False),
        sa.Column("customer_id", KEY, nullable=False),
        sa.PrimaryKeyConstraint("api_url", "customer_id", name=op.f("pk_sync_listed")),
    )


def downgrade() -> None:
    op.drop_table("sync_listed")
    op.drop_table("sync_state")
