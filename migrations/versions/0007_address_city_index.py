"""An index on the address city, behind the ``city`` filter of the read API's customer list.

Built ``CONCURRENTLY`` on PostgreSQL (outside a transaction), so the migration can run while
the service writes; ``IF NOT EXISTS`` makes a run after an interruption safe (an
interrupted build may leave an ``INVALID`` index: drop it and run again).

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-02
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0007"
down_revision: str | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

NAME, TABLE = "ix_customer_addresses_city", "customer_addresses"


def upgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        op.create_index(NAME, TABLE, ["city"])
        return
    with op.get_context().autocommit_block():
        op.create_index(NAME, TABLE, ["city"], postgresql_concurrently=True, if_not_exists=True)


def downgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        op.drop_index(NAME, table_name=TABLE)
        return
    with op.get_context().autocommit_block():
        op.drop_index(NAME, table_name=TABLE, postgresql_concurrently=True, if_exists=True)
