"""Schema changes on PostgreSQL while the service writes, shared by the revisions that
make them: an ``ALTER TABLE`` that never queues writers for long, and an index that an
interrupted ``CREATE INDEX CONCURRENTLY`` left invalid, dropped so that it can be built
again."""

from __future__ import annotations

import time

import sqlalchemy as sa
from alembic import op
from sqlalchemy.engine import Connection

__all__ = ["LOCK_ATTEMPTS", "LOCK_TIMEOUT", "alter_without_queueing_writers", "drop_if_invalid"]

#: How long the ALTER TABLE may wait for its lock (writers wait behind it meanwhile).
LOCK_TIMEOUT = "500ms"
LOCK_ATTEMPTS = 120
_LOCK_NOT_AVAILABLE = "55P03"


def alter_without_queueing_writers(connection: Connection, table: str, ddl: str) -> None:
    """Run an ALTER TABLE on ``table`` (it needs the table to itself) so that writers never
    wait long behind it: waiting for its lock, it makes every later writer wait too, so it
    gives up after ``LOCK_TIMEOUT`` and tries again a little later.

    The timeout is ``SET LOCAL`` in the same query as the ALTER (one implicit transaction):
    behind a transaction pooler (``?pgbouncer=true``) a session ``SET`` would stay on
    whichever server connection ran it, for other clients, and the ALTER could run on
    another one without it."""
    for attempt in range(LOCK_ATTEMPTS):
        try:
            connection.exec_driver_sql(f"SET LOCAL lock_timeout = '{LOCK_TIMEOUT}'; {ddl}")
            return
        except sa.exc.OperationalError as exc:
            if sqlstate(exc) != _LOCK_NOT_AVAILABLE:
                raise
        time.sleep(min(0.05 * 2**attempt, 2.0))
    raise RuntimeError(
        f"{table} stayed locked by other transactions through {LOCK_ATTEMPTS} attempts "
        "to alter it: run the upgrade again when long transactions have ended"
    )


def drop_if_invalid(name: str, table: str) -> None:
    """Drop an index an interrupted ``CREATE INDEX CONCURRENTLY`` left invalid: ``IF NOT
    EXISTS`` would otherwise keep it, unused, for good."""
    if op.get_context().as_sql:
        return
    valid = op.get_bind().execute(
        sa.text("SELECT indisvalid FROM pg_index WHERE indexrelid = to_regclass(:name)"),
        {"name": name},
    ).scalar()
    if valid is False:
        op.drop_index(name, table_name=table, postgresql_concurrently=True, if_exists=True)


def sqlstate(exc: sa.exc.DBAPIError) -> str | None:
    """The SQLSTATE of a driver's error, if it has one."""
    return getattr(exc.orig, "sqlstate", None)
