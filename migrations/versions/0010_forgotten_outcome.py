"""A webhook event's outcome may be ``forgotten``: a delivery about a customer erased on
request, kept without storing the customer again (before, such a delivery was ``stale``).

On PostgreSQL the new check is added ``NOT VALID`` in place of the old one (a moment's
lock, taken without queueing writers) and validated afterwards in a transaction of its
own, which reads the table without blocking writes. On SQLite the table is rebuilt. A
downgrade records ``forgotten`` events as ``stale`` again, as the older code did.

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-07
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

from migrations.online import alter_without_queueing_writers

revision: str = "0010"
down_revision: str | None = "0009"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

NAME = "ck_webhook_events_outcome"
OLD = "outcome IN ('applied', 'stale', 'ignored', 'rejected')"
NEW = "outcome IN ('applied', 'stale', 'forgotten', 'ignored', 'rejected')"


def _replace_check(condition: str) -> None:
    if op.get_bind().dialect.name != "postgresql":
        with op.batch_alter_table("webhook_events", recreate="always") as batch:
            batch.drop_constraint(op.f(NAME), type_="check")
            batch.create_check_constraint(op.f(NAME), sa.text(condition))
        return
    ddl = (f"ALTER TABLE webhook_events DROP CONSTRAINT IF EXISTS {NAME}, "
           f"ADD CONSTRAINT {NAME} CHECK ({condition}) NOT VALID")
    if op.get_context().as_sql:
        op.execute(ddl)
        op.execute(f"ALTER TABLE webhook_events VALIDATE CONSTRAINT {NAME}")
        return
    with op.get_context().autocommit_block():
        alter_without_queueing_writers(op.get_bind(), "webhook_events", ddl)
        op.execute(f"ALTER TABLE webhook_events VALIDATE CONSTRAINT {NAME}")


def upgrade() -> None:
    _replace_check(NEW)


def downgrade() -> None:
    op.execute(sa.text(
        "UPDATE webhook_events SET outcome = 'stale' WHERE outcome = 'forgotten'"
    ))
    _replace_check(OLD)
