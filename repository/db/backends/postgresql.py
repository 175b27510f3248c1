"""PostgreSQL: the production database."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any, ClassVar

from sqlalchemy import (
    ColumnElement,
    Connection,
    Engine,
    Integer,
    Table,
    Text,
    bindparam,
    cast,
    column,
    delete,
    func,
    literal,
    select,
    text,
)
from sqlalchemy.dialects import postgresql
from sqlalchemy.dialects.postgresql import ARRAY, JSONB
from sqlalchemy.orm import Session
from sqlalchemy.sql import Delete, FromClause
from sqlalchemy.sql.expression import Executable

from models.base import UTCDateTime, in_utc
from repository.db.backends.base import Backend, ChildRows, column_names
from repository.db.driver import send
from repository.db.errors import watch_errors
from repository.db.jsonb import dumps_for_jsonb
from repository.db.tables import child_tables

__all__ = ["LOCK_NAMESPACE", "PostgreSQLBackend", "delete_children_of"]

#: First key of the two-key advisory locks, so they cannot clash with other users' locks.
LOCK_NAMESPACE = 0x43535431

# Where a session keeps (its transaction, the ids locked in it).
_HELD = "customer_store.locked_customers"
_LOCK_MANY = text(
    "SELECT count(pg_advisory_xact_lock(:namespace, key)) AS locked FROM ("
    " SELECT DISTINCT hashtext(id) AS key FROM unnest(CAST(:ids AS text[])) AS id"
    " ORDER BY key) AS keys"
).columns(column("locked", Integer))
# One customer's (a webhook's): a text parameter costs the driver less than an array.
_LOCK_ONE = text(
    "SELECT count(pg_advisory_xact_lock(:namespace, hashtext(:id))) AS locked"
).columns(column("locked", Integer))

_BOUND_WAITS = text(
    "SELECT set_config('lock_timeout', :ms, true), set_config('statement_timeout', :ms, true)"
)


def delete_children_of(ids: FromClause) -> list[Delete]:
    """The deletions of the child rows of the customers in ``ids`` (a FROM with an ``id``
    column), one per child table: joined with the ids (``USING``), since
    ``customer_id = ANY(ids)`` lets the planner scan a whole table for a long list."""
    return [delete(table).where(table.c.customer_id == ids.c.id) for table in child_tables]


def _delete_children_statement() -> Delete:
    # One statement for the three tables, one cached plan for any batch size.
    ids = select(
        func.unnest(cast(bindparam("ids"), ARRAY(Text))).label("id")
    ).cte("k")
    *first, last = delete_children_of(ids)
    return last.add_cte(*(d.cte(f"gone_{i}") for i, d in enumerate(first)))


def _insert_from_json(table: Table) -> str:
    columns = ", ".join(f'"{name}"' for name in column_names(table))
    return (
        # Names from the tables' own metadata; the rows are a bound parameter.
        f"INSERT INTO {table.name} ({columns}) SELECT {columns} FROM "  # noqa: S608
        f"jsonb_populate_recordset(NULL::{table.name}, CAST(%({table.name})s AS jsonb))"
    )


def _insert_children_statement() -> str:
    # The rows as a JSON array per table, each made a row of its table by PostgreSQL; the
    # inserts touch different tables, so running together they cannot disturb each other.
    *first, last = (_insert_from_json(table) for table in child_tables)
    ctes = ", ".join(f"i{i} AS ({statement})" for i, statement in enumerate(first))
    return f"WITH {ctes} {last}"


def _json_ready(row: Mapping[str, Any]) -> dict[str, Any]:
    """``row`` with its date-times in ISO 8601 (offset included), as PostgreSQL reads them."""
    return {k: v.isoformat() if isinstance(v, datetime) else v for k, v in row.items()}


class PostgreSQLBackend(Backend):
    """PostgreSQL: advisory locks, ``COPY``, data-modifying ``WITH``, JSONB, standbys."""

    name: ClassVar[str] = "postgresql"
    copies: ClassVar[bool] = True
    writes_in_one_statement: ClassVar[bool] = True
    has_standbys: ClassVar[bool] = True
    has_roles: ClassVar[bool] = True

    def __init__(self) -> None:
        self._delete_children = _delete_children_statement()
        self._insert_children = _insert_children_statement()

    def configure(self, engine: Engine) -> None:
        watch_errors(engine)

    def insert(self, table: Table) -> Any:
        return postgresql.insert(table)

    def lock_customers(self, session: Session, customer_ids: Sequence[str]) -> None:
        # Transaction-scoped advisory locks. Those this transaction already took are not
        # asked for again: the session remembers them per transaction, savepoint included,
        # since rolling a savepoint back releases the locks taken within it.
        if not customer_ids:
            return
        connection = session.connection()  # begins the transaction if none has: it keeps the locks
        transaction = session.get_nested_transaction() or session.get_transaction()
        held: tuple[object, set[str]] | None = session.info.get(_HELD)
        if held is None or held[0] is not transaction:
            held = (transaction, set())
            session.info[_HELD] = held
        wanted = [customer_id for customer_id in customer_ids if customer_id not in held[1]]
        if not wanted:
            return
        # Its count is not needed: within a pipeline the statement after it goes along.
        if len(wanted) == 1:
            sent = send(connection, _LOCK_ONE, {"namespace": LOCK_NAMESPACE, "id": wanted[0]})
        else:
            sent = send(connection, _LOCK_MANY, {"namespace": LOCK_NAMESPACE, "ids": wanted})
        sent.close()
        held[1].update(wanted)

    def delete_children(self, connection: Connection, customer_ids: Sequence[str]) -> None:
        if customer_ids:
            connection.execute(self._delete_children, {"ids": list(customer_ids)})

    def insert_children(self, connection: Connection, children: ChildRows) -> None:
        # One statement for every table, whatever the number of rows: one round trip.
        if not any(children):
            return
        params = {
            table.name: dumps_for_jsonb([_json_ready(row) for row in rows])
            for table, rows in zip(child_tables, children, strict=True)
        }
        connection.exec_driver_sql(self._insert_children, params)

    def hot_statements(self) -> Sequence[Executable]:
        return (_LOCK_ONE, _LOCK_MANY)

    def bound_waits(self, connection: Connection, milliseconds: int) -> None:
        connection.execute(_BOUND_WAITS, {"ms": str(milliseconds)})

    def json_rows(self, columns: Sequence[ColumnElement[Any]]) -> ColumnElement[Any]:
        # JSON renders a timestamptz in the session's time zone, where the last instants of
        # year 9999 fall in year 10000: render times as UTC wall-clock time instead (ISO
        # 8601, no offset), which reads the same in any zone.
        in_zone = [in_utc(c) if isinstance(c.type, UTCDateTime) else c for c in columns]
        return func.json_agg(func.json_build_array(*in_zone))

    def starts_with(self, column: ColumnElement[Any], prefix: str) -> ColumnElement[bool]:
        # LIKE, which an index with text_pattern_ops serves.
        escaped = prefix.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
        return column.like(escaped + "%", escape="\\")

    def json_contains(
        self, document: ColumnElement[Any], wanted: Mapping[str, Any]
    ) -> ColumnElement[bool]:
        return document.op("@>")(literal(_plain(wanted), JSONB))

    def table_bytes(self, session: Session, table: str) -> int | None:
        size = session.scalar(
            text("SELECT pg_total_relation_size(CAST(:table AS regclass))"), {"table": table}
        )
        return int(size) if size is not None else None

    def estimated_rows(self, session: Session, table: str) -> int | None:
        # The planner's estimate, pg_class.reltuples, which autovacuum and ANALYZE keep
        # near the truth; negative while the table has never been analyzed.
        estimate = session.scalar(
            text("SELECT reltuples FROM pg_class WHERE oid = CAST(:table AS regclass)"),
            {"table": table},
        )
        return int(estimate) if estimate is not None and estimate >= 0 else None


def _plain(value: Any) -> Any:
    """JSON values as the serializer takes them: any Mapping as a dict."""
    if isinstance(value, Mapping):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_plain(v) for v in value]
    return value
