"""Indexes for the read API's customer list: the address city (its ``city`` filter), and
``(created_at, id)``, ``(updated_at, id)``, ``(source_id, id)`` in place of the one-column
indexes, so that each order with its tie-break by id is read straight from an index, and
page 99 costs what page 1 does.

Built ``CONCURRENTLY`` on PostgreSQL (outside a transaction), so the migration can run while
the service writes; the old indexes are dropped only once the new ones exist. ``IF NOT
EXISTS``/``IF EXISTS`` make a run after an interruption safe (an interrupted build may leave
an ``INVALID`` index: drop it and run again).

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

# (name, table, columns)
NEW = [
    ("ix_customer_addresses_city", "customer_addresses", ["city"]),
    ("ix_customers_created_at_id", "customers", ["created_at", "id"]),
    ("ix_customers_updated_at_id", "customers", ["updated_at", "id"]),
    ("ix_customers_source_id_id", "customers", ["source_id", "id"]),
]
OLD = [
    ("ix_customers_created_at", "customers", ["created_at"]),
    ("ix_customers_updated_at", "customers", ["updated_at"]),
    ("ix_customers_source_id", "customers", ["source_id"]),
]


def _swap(create: list[tuple[str, str, list[str]]], drop: list[tuple[str, str, list[str]]]) -> None:
    if op.get_bind().dialect.name != "postgresql":
        for name, table, columns in create:
            op.create_index(name, table, columns)
        for name, table, _ in drop:
            op.drop_index(name, table_name=table)
        return
    with op.get_context().autocommit_block():
        for name, table, columns in create:
            op.create_index(
                name, table, columns, postgresql_concurrently=True, if_not_exists=True
            )
        for name, table, _ in drop:
            op.drop_index(name, table_name=table, postgresql_concurrently=True, if_exists=True)


def upgrade() -> None:
    _swap(NEW, OLD)


def downgrade() -> None:
    _swap(OLD, NEW)
