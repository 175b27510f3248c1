"""Indexes behind the search filters, built without blocking writes on PostgreSQL.

On PostgreSQL every index is created ``CONCURRENTLY`` (outside a transaction), so the
migration can run while the service writes: ``IF NOT EXISTS`` makes a retry after an
interruption safe. The GIN index on metadata and the pattern index on names exist only on
PostgreSQL; SQLite answers those filters by scanning.

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-25
"""

from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# (name, table, columns or expressions, PostgreSQL-only options or None for both databases)
INDEXES: list[tuple[str, str, list[str], dict[str, object] | None]] = [
    ("ix_customers_email_lower", "customers", ["lower(email)"], {}),
    ("ix_customers_name_lower_prefix", "customers", ["lower(name)"],
     {"postgresql_ops": {"lower(name)": "text_pattern_ops"}, "postgresql_only": True}),
    ("ix_customers_created_at", "customers", ["created_at"], {}),
    ("ix_customers_updated_at", "customers", ["updated_at"], {}),
    ("ix_customers_orders_last_order_date", "customers", ["orders_last_order_date"], {}),
    ("ix_customers_metadata_gin", "customers", ["metadata"],
     {"postgresql_using": "gin", "postgresql_ops": {"metadata": "jsonb_path_ops"},
      "postgresql_only": True}),
    ("ix_customer_loyalty_campaigns_campaign_points", "customer_loyalty_campaigns",
     ["campaign", "points"], {}),
    ("ix_customer_loyalty_campaigns_campaign_tier", "customer_loyalty_campaigns",
     ["campaign", "loyalty_tier"], {}),
    ("ix_customer_referral_entries_referrer_id", "customer_referral_entries",
     ["referrer_id"], {}),
]


def _columns(columns: list[str]) -> list[sa.TextClause | str]:
    return [sa.text(c) if "(" in c else c for c in columns]


def upgrade() -> None:
    postgresql = op.get_bind().dialect.name == "postgresql"
    if not postgresql:
        for name, table, columns, options in INDEXES:
            if not (options or {}).get("postgresql_only"):
                op.create_index(name, table, _columns(columns))
        return
    with op.get_context().autocommit_block():
        for name, table, columns, options in INDEXES:
            kwargs: dict[str, Any] = {
                k: v for k, v in (options or {}).items() if k != "postgresql_only"
            }
            op.create_index(
                name, table, _columns(columns),
                postgresql_concurrently=True, if_not_exists=True, **kwargs,
            )


def downgrade() -> None:
    postgresql = op.get_bind().dialect.name == "postgresql"
    if not postgresql:
        for name, table, _, options in reversed(INDEXES):
            if not (options or {}).get("postgresql_only"):
                op.drop_index(name, table_name=table)
        return
    with op.get_context().autocommit_block():
        for name, table, _, _ in reversed(INDEXES):
            op.drop_index(name, table_name=table, postgresql_concurrently=True, if_exists=True)
