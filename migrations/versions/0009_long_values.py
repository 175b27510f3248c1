"""No index refuses a long value: indexes hold a prefix of the text Voucherify sends.

Voucherify sets no length on a city, a source_id, a loyalty tier, a referrer id or a
campaign name, but a PostgreSQL B-tree entry holds at most 2,704 bytes: an index on the
whole value made a long one fail every write of its customer (``index row size ...
exceeds btree version 4 maximum 2704``), and earlier releases refused such values above 500
characters. Each index on such a value is replaced by one on its first 200 characters
(``substr(value, 1, 200)``, the same on SQLite; ``models.long_text``); queries compare that
prefix, which the index serves, and then the whole value, so they find exactly what they
did.

- ``customer_addresses``: ``ix_customer_addresses_city`` becomes ``..._city_prefix``.
- ``customer_referral_entries``: ``..._referrer_id`` becomes ``..._referrer_id_prefix``.
- ``customer_loyalty_campaigns``: ``(campaign, loyalty_tier)`` becomes ``(campaign,
  substr(loyalty_tier, 1, 200))``.
- ``customers``: ``(source_id, id)`` becomes ``(substr(source_id, 1, 200), id)``. The read
  API's ``order=source_id`` (and ``-source_id``) is now that order, read straight from the
  index as before: the same as by the whole value for any source_id of up to 200
  characters (the tie-break by id was already there); longer ones that share their first
  200 characters follow each other by id.
- The campaign name is part of the primary key ``(customer_id, campaign)``, which must
  hold every name and tell them apart: a prefix cannot, and PostgreSQL takes no
  expression in a primary key. So ``campaign`` holds the name's key
  (``repository.store.mapping.campaign_key``): the name itself up to 1,200 UTF-8 bytes, beyond
  that its start and the SHA-256 digest of the whole, which no name of up to 1,200 bytes
  can equal (it is longer); a new nullable ``campaign_name`` keeps such a long name
  whole. Every name stored so far had at most 1,200 bytes, so every stored row is already
  right: nothing is rewritten, the primary key stays as it is, and a writer of an earlier
  release (which refuses long names) writes rows that are right too.

PostgreSQL, while the service writes: the column is added under a short ``lock_timeout``
and tried again until the table is free for a moment (a nullable column without a default
rewrites nothing); the indexes are built ``CONCURRENTLY`` before the old ones are dropped
(``CONCURRENTLY`` too). An interrupted run can be run again: ``IF NOT EXISTS``/``IF
EXISTS``, and an index left invalid by an interrupted build is dropped and built again.

Downgrade refuses while a long campaign name is stored (its whole name would be lost), and
fails on PostgreSQL building an old index over a value too long for it.

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-08
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

from migrations.online import alter_without_queueing_writers, drop_if_invalid

revision: str = "0009"
down_revision: str | None = "0008"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_CAMPAIGNS = "customer_loyalty_campaigns"
_PREFIX = "substr({}, 1, 200)"

# (name, table, columns or SQL expressions)
NEW: list[tuple[str, str, list[str]]] = [
    ("ix_customers_source_id_prefix_id", "customers", [_PREFIX.format("source_id"), "id"]),
    ("ix_customer_addresses_city_prefix", "customer_addresses", [_PREFIX.format("city")]),
    ("ix_customer_loyalty_campaigns_campaign_tier_prefix", _CAMPAIGNS,
     ["campaign", _PREFIX.format("loyalty_tier")]),
    ("ix_customer_referral_entries_referrer_id_prefix", "customer_referral_entries",
     [_PREFIX.format("referrer_id")]),
]
OLD: list[tuple[str, str, list[str]]] = [
    ("ix_customers_source_id_id", "customers", ["source_id", "id"]),
    ("ix_customer_addresses_city", "customer_addresses", ["city"]),
    ("ix_customer_loyalty_campaigns_campaign_tier", _CAMPAIGNS, ["campaign", "loyalty_tier"]),
    ("ix_customer_referral_entries_referrer_id", "customer_referral_entries",
     ["referrer_id"]),
]
_ADD_COLUMN = f"ALTER TABLE {_CAMPAIGNS} ADD COLUMN IF NOT EXISTS campaign_name TEXT"
_DROP_COLUMN = f"ALTER TABLE {_CAMPAIGNS} DROP COLUMN IF EXISTS campaign_name"
_LONG_NAMES = f"SELECT 1 FROM {_CAMPAIGNS} WHERE campaign_name IS NOT NULL LIMIT 1"  # noqa: S608


def _columns(columns: list[str]) -> list[sa.TextClause | str]:
    return [sa.text(c) if "(" in c else c for c in columns]


def _swap(create: list[tuple[str, str, list[str]]], drop: list[tuple[str, str, list[str]]]) -> None:
    """Build the indexes of ``create``, then drop those of ``drop``."""
    if op.get_context().dialect.name != "postgresql":
        for name, table, columns in create:
            op.create_index(name, table, _columns(columns))
        for name, table, _ in drop:
            op.drop_index(name, table_name=table)
        return
    for name, table, columns in create:
        drop_if_invalid(name, table)
        op.create_index(
            name, table, _columns(columns), postgresql_concurrently=True, if_not_exists=True
        )
    for name, table, _ in drop:
        op.drop_index(name, table_name=table, postgresql_concurrently=True, if_exists=True)


def upgrade() -> None:
    if op.get_context().dialect.name != "postgresql":
        op.add_column(_CAMPAIGNS, sa.Column("campaign_name", sa.Text(), nullable=True))
        _swap(NEW, OLD)
        return
    with op.get_context().autocommit_block():
        if op.get_context().as_sql:
            op.execute(_ADD_COLUMN)
        else:
            alter_without_queueing_writers(op.get_bind(), _CAMPAIGNS, _ADD_COLUMN)
        _swap(NEW, OLD)


def downgrade() -> None:
    if not op.get_context().as_sql and op.get_bind().execute(sa.text(_LONG_NAMES)).first():
        raise RuntimeError(
            "a loyalty campaign name longer than 1,200 bytes is stored, which revision 0008 "
            "cannot hold: delete those customers' campaigns before downgrading"
        )
    if op.get_context().dialect.name != "postgresql":
        _swap(OLD, NEW)
        # SQLite 3.35 or later drops a column in place (no copy of the table).
        op.drop_column(_CAMPAIGNS, "campaign_name")
        return
    with op.get_context().autocommit_block():
        _swap(OLD, NEW)
        if op.get_context().as_sql:
            op.execute(_DROP_COLUMN)
        else:
            alter_without_queueing_writers(op.get_bind(), _CAMPAIGNS, _DROP_COLUMN)
