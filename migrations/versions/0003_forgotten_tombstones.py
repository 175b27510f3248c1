"""Tombstones remember customers erased on request (``forgotten``).

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-25
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # A constant default: on PostgreSQL 11+ adding the column rewrites nothing and takes
    # its lock only for a moment.
    with op.batch_alter_table("customer_tombstones") as batch:
        batch.add_column(
            sa.Column("forgotten", sa.Boolean(), server_default=sa.false(), nullable=False)
        )


def downgrade() -> None:
    with op.batch_alter_table("customer_tombstones") as batch:
        batch.drop_column("forgotten")
