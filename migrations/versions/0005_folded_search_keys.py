"""Case-folded search keys for email and name, replacing the lower() indexes of 0004.

``lower()`` folds only ASCII on SQLite and follows the database's locale on PostgreSQL, so
one search found different customers on the two. ``email_folded`` and ``name_folded`` hold
the text folded in Python by ``repository.store.mapping`` (the functions that write every row and
fold every search argument; should the fold ever change, a later revision must fold every
row again), and carry the search indexes instead.

PostgreSQL, while the service writes: the columns are added under a short ``lock_timeout``
and tried again until the table is free for a moment, so writers never queue long behind
the ALTER; existing rows are filled in batches, one short transaction each, in id order;
the indexes are built ``CONCURRENTLY``. An interrupted run can be run again: ``IF NOT
EXISTS``, rows already right are left alone, and an index left invalid by an interrupted
build is dropped and built again.

Writers of an earlier release do not fill the columns: a row they write after its batch was
filled keeps an empty or an old key (and is missed by email and name searches) until it is
written again, so switch the writers over soon after the upgrade. Offline (``--sql``) there
is no Python to fold with: the script fills nothing and, on PostgreSQL, stops with an error
where customers with an email or a name exist.

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-26
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql
from sqlalchemy.engine import Connection

from migrations.online import alter_without_queueing_writers, drop_if_invalid, sqlstate
from repository.store.mapping import email_key, name_key

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

#: Rows filled per statement (and per transaction on PostgreSQL).
BATCH_SIZE = 500
#: Deadlocks and serialization failures with concurrent writers: the batch is run again.
_RETRY_SQLSTATES = {"40P01", "40001"}

# (name, column, PostgreSQL operator class)
NEW_INDEXES: list[tuple[str, str, str | None]] = [
    ("ix_customers_email_folded", "email_folded", None),
    ("ix_customers_name_folded", "name_folded", "text_pattern_ops"),
]
# 0004's indexes, as it made them: (name, expression, PostgreSQL operator class).
OLD_INDEXES: list[tuple[str, str, str | None]] = [
    ("ix_customers_email_lower", "lower(email)", None),
    ("ix_customers_name_lower_prefix", "lower(name)", "text_pattern_ops"),
]
_ADD_COLUMNS = (
    "ALTER TABLE customers ADD COLUMN IF NOT EXISTS email_folded TEXT, "
    "ADD COLUMN IF NOT EXISTS name_folded TEXT"
)
_DROP_COLUMNS = (
    "ALTER TABLE customers DROP COLUMN IF EXISTS email_folded, "
    "DROP COLUMN IF EXISTS name_folded"
)
_REFUSE_OFFLINE_WITH_DATA = """\
DO $$ BEGIN
  IF EXISTS (SELECT 1 FROM customers WHERE email IS NOT NULL OR name IS NOT NULL) THEN
    RAISE EXCEPTION 'revision 0005 folds email and name in Python: run it online (customer-store migrate)';
  END IF;
END $$"""

customers = sa.table(
    "customers",
    *(sa.column(name, sa.Text()) for name in ("id", "email", "name", "email_folded", "name_folded")),
)


def upgrade() -> None:
    postgresql = op.get_context().dialect.name == "postgresql"
    offline = op.get_context().as_sql
    if not postgresql:
        op.add_column("customers", sa.Column("email_folded", sa.Text(), nullable=True))
        op.add_column("customers", sa.Column("name_folded", sa.Text(), nullable=True))
        if not offline:
            _fill(op.get_bind())
        op.drop_index("ix_customers_email_lower", table_name="customers")
        for name, column, _ in NEW_INDEXES:
            op.create_index(name, "customers", [column])
        return
    with op.get_context().autocommit_block():
        if offline:
            op.execute(_ADD_COLUMNS)
            op.execute(_REFUSE_OFFLINE_WITH_DATA)
        else:
            alter_without_queueing_writers(op.get_bind(), "customers", _ADD_COLUMNS)
            _fill(op.get_bind())
        for name, column, ops in NEW_INDEXES:
            drop_if_invalid(name, "customers")
            op.create_index(
                name, "customers", [column], postgresql_concurrently=True, if_not_exists=True,
                postgresql_ops={column: ops} if ops else {},
            )
        for name, _, _ in OLD_INDEXES:
            op.drop_index(name, table_name="customers", postgresql_concurrently=True,
                          if_exists=True)


def downgrade() -> None:
    postgresql = op.get_context().dialect.name == "postgresql"
    if not postgresql:
        for name, _, _ in reversed(NEW_INDEXES):
            op.drop_index(name, table_name="customers")
        op.create_index("ix_customers_email_lower", "customers", [sa.text("lower(email)")])
        # SQLite 3.35 or later drops a column in place (no copy of the table).
        op.drop_column("customers", "name_folded")
        op.drop_column("customers", "email_folded")
        return
    with op.get_context().autocommit_block():
        for name, expression, ops in OLD_INDEXES:
            drop_if_invalid(name, "customers")
            op.create_index(
                name, "customers", [sa.text(expression)], postgresql_concurrently=True,
                if_not_exists=True, postgresql_ops={expression: ops} if ops else {},
            )
        for name, _, _ in reversed(NEW_INDEXES):
            op.drop_index(name, table_name="customers", postgresql_concurrently=True,
                          if_exists=True)
        if op.get_context().as_sql:
            op.execute(_DROP_COLUMNS)
        else:
            alter_without_queueing_writers(op.get_bind(), "customers", _DROP_COLUMNS)


def _fill(connection: Connection) -> None:
    """Fold the email and name of every stored customer, a batch at a time in id order.

    A row is written only if its email and name are still the ones that were folded (a
    writer may have changed them meanwhile, and then wrote their keys itself) and its keys
    differ, so running this again changes nothing.
    """
    c = customers.c
    fill_from_arrays, fill_from_parameters = _fill_from_arrays(), _fill_from_parameters()
    after: str | None = None
    while True:
        query = (
            sa.select(c.id, c.email, c.name)
            .where(sa.or_(c.email.is_not(None), c.name.is_not(None)))
            .order_by(c.id)
            .limit(BATCH_SIZE)
        )
        if after is not None:
            query = query.where(c.id > after)
        rows = connection.execute(query).all()
        if not rows:
            return
        keys = [(r.id, r.email, r.name, email_key(r.email), name_key(r.name)) for r in rows]
        if connection.dialect.name == "postgresql":
            # One statement per batch: in autocommit, each statement is a transaction.
            columns = dict(zip(("ids", "emails", "names", "efs", "nfs"), zip(*keys, strict=True),
                               strict=True))
            parameters: Any = {
                **{name: list(values) for name, values in columns.items()},
                "low": keys[0][0], "high": keys[-1][0],
            }
            _run_retrying_conflicts(connection, fill_from_arrays, parameters)
        else:
            names = ("row_id", "row_email", "row_name", "ef", "nf")
            _run_retrying_conflicts(
                connection, fill_from_parameters,
                [dict(zip(names, k, strict=True)) for k in keys],
            )
        after = rows[-1].id


def _fill_from_arrays() -> sa.Update:
    """One statement per batch, the batch's columns as arrays (so it is compiled once)."""
    arrays = [
        sa.bindparam(name, type_=postgresql.ARRAY(sa.Text()))
        for name in ("ids", "emails", "names", "efs", "nfs")
    ]
    folded = (
        sa.func.unnest(*arrays)
        .table_valued("id", "email", "name", "ef", "nf")
        .render_derived(name="folded")
    )
    statement = _guarded_update(
        folded.c.id, folded.c.email, folded.c.name, folded.c.ef, folded.c.nf
    )
    # The batch's id range lets the join read the primary key instead of the whole table.
    low, high = sa.bindparam("low", type_=sa.Text()), sa.bindparam("high", type_=sa.Text())
    return statement.where(customers.c.id.between(low, high))


def _fill_from_parameters() -> sa.Update:
    return _guarded_update(*(
        sa.bindparam(name, type_=sa.Text()) for name in ("row_id", "row_email", "row_name", "ef", "nf")
    ))


def _guarded_update(
    row_id: sa.ColumnElement[str], email: sa.ColumnElement[str], name: sa.ColumnElement[str],
    email_folded: sa.ColumnElement[str], name_folded: sa.ColumnElement[str],
) -> sa.Update:
    c = customers.c
    return (
        sa.update(customers)
        .where(
            c.id == row_id,
            c.email.is_not_distinct_from(email),
            c.name.is_not_distinct_from(name),
            sa.or_(
                c.email_folded.is_distinct_from(email_folded),
                c.name_folded.is_distinct_from(name_folded),
            ),
        )
        .values(email_folded=email_folded, name_folded=name_folded)
    )


def _run_retrying_conflicts(connection: Connection, statement: sa.Update, parameters: Any) -> None:
    for attempt in range(10):
        try:
            connection.execute(statement, parameters)
            return
        except sa.exc.OperationalError as exc:
            if sqlstate(exc) not in _RETRY_SQLSTATES or attempt == 9:
                raise
            time.sleep(0.05 * (attempt + 1))
