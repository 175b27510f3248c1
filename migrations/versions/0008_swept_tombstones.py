"""Tombstones say whether a full sync's sweep made them (``swept``).

A sweep deletes a stored customer because a complete listing did not show it: evidence of
absence, not a dated deletion. Such a tombstone gives way as soon as Voucherify shows the
customer again, whatever the customer's timestamps; a ``customer.deleted`` webhook's stays.

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-07
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0008"
down_revision: str | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # A constant default: on PostgreSQL 11+ adding the column rewrites nothing and takes
    # its lock only for a moment.
    with op.batch_alter_table("customer_tombstones") as batch:
        batch.add_column(
            sa.Column("swept", sa.Boolean(), server_default=sa.false(), nullable=False)
        )


def downgrade() -> None:
    with op.batch_alter_table("customer_tombstones") as batch:
        batch.drop_column("swept")
