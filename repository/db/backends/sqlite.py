"""SQLite: the embedded database (one writer at a time, JSON kept as text)."""

from __future__ import annotations

import sqlite3
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

from sqlalchemy import (
    ColumnElement,
    Connection,
    Engine,
    Table,
    and_,
    case,
    delete,
    event,
    exists,
    func,
    insert,
    text,
    true,
)
from sqlalchemy.dialects import sqlite
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session

from repository.db.backends.base import Backend, ChildRows
from repository.db.tables import child_tables

__all__ = ["SQLITE_BUSY_TIMEOUT_MS", "SQLiteBackend", "set_sqlite_busy_timeout"]

#: Milliseconds a SQLite writer waits for another writer's lock before giving up.
SQLITE_BUSY_TIMEOUT_MS = 30_000
# Marks a pooled SQLite connection whose busy timeout was changed for one checkout.
_BUSY_TIMEOUT_CHANGED = "customer_store.busy_timeout_changed"


def set_sqlite_busy_timeout(connection: Connection, milliseconds: int) -> None:
    """Make this checkout of a SQLite connection wait at most ``milliseconds`` for a lock;
    the connection gets the default back when it returns to the pool."""
    connection.info[_BUSY_TIMEOUT_CHANGED] = True
    # PRAGMA takes no bound parameters; the value is an int rendered by %d.
    connection.exec_driver_sql(f"PRAGMA busy_timeout = {int(milliseconds):d}")


def _configure_connection(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    try:
        cursor.execute("PRAGMA foreign_keys = ON")
        cursor.execute(f"PRAGMA busy_timeout = {SQLITE_BUSY_TIMEOUT_MS:d}")
        try:
            cursor.execute("PRAGMA journal_mode = WAL")
        except sqlite3.OperationalError as exc:
            # Leaving rollback-journal mode needs the database to itself, and SQLite does
            # not wait for that (no busy timeout): while another connection holds a lock,
            # stay in the current mode, whose writes do wait; a later connection switches.
            if "locked" not in str(exc):
                raise
        cursor.execute("PRAGMA synchronous = NORMAL")
    finally:
        cursor.close()


def _restore_busy_timeout(dbapi_connection: Any, record: Any) -> None:
    if dbapi_connection is not None and record.info.pop(_BUSY_TIMEOUT_CHANGED, False):
        dbapi_connection.execute(f"PRAGMA busy_timeout = {SQLITE_BUSY_TIMEOUT_MS:d}")


class SQLiteBackend(Backend):
    """SQLite: a single writer (no locks to take), multi-row ``INSERT``, JSON functions."""

    name: ClassVar[str] = "sqlite"
    copies: ClassVar[bool] = False
    writes_in_one_statement: ClassVar[bool] = False
    has_standbys: ClassVar[bool] = False
    has_roles: ClassVar[bool] = False

    def configure(self, engine: Engine) -> None:
        event.listen(engine, "connect", _configure_connection)
        event.listen(engine, "checkin", _restore_busy_timeout)

    def insert(self, table: Table) -> Any:
        return sqlite.insert(table)

    def lock_customers(self, session: Session, customer_ids: Sequence[str]) -> None:
        """Nothing: SQLite has a single writer, so writers of a customer take turns."""

    def delete_children(self, connection: Connection, customer_ids: Sequence[str]) -> None:
        if not customer_ids:
            return
        for table in child_tables:
            connection.execute(delete(table).where(table.c.customer_id.in_(customer_ids)))

    def insert_children(self, connection: Connection, children: ChildRows) -> None:
        for table, rows in zip(child_tables, children, strict=True):
            if rows:
                connection.execute(insert(table), rows)

    def bound_waits(self, connection: Connection, milliseconds: int) -> None:
        set_sqlite_busy_timeout(connection, milliseconds)

    def json_rows(self, columns: Sequence[ColumnElement[Any]]) -> ColumnElement[Any]:
        # SQLite keeps JSON as text: json() embeds it as JSON rather than as a string.
        # Its timestamps are stored as UTC wall-clock time already.
        embedded = [func.json(c) if _name(c) == "extra" else c for c in columns]
        return func.json_group_array(func.json(func.json_array(*embedded)))

    def starts_with(self, column: ColumnElement[Any], prefix: str) -> ColumnElement[bool]:
        # GLOB: SQLite's LIKE ignores ASCII case and so cannot use an index.
        escaped = "".join(f"[{ch}]" if ch in "*?[" else ch for ch in prefix)
        return column.op("GLOB", is_comparison=True)(escaped + "*")

    def json_contains(
        self, document: ColumnElement[Any], wanted: Mapping[str, Any]
    ) -> ColumnElement[bool]:
        return and_(func.json_type(document) == "object", *_members(document, wanted))

    def table_bytes(self, session: Session, table: str) -> int | None:
        try:
            # dbstat is compiled into most SQLite builds; where it is not, the size is unknown.
            with session.begin_nested():
                size = session.scalar(
                    text(
                        "SELECT SUM(d.pgsize) FROM dbstat AS d JOIN sqlite_master AS m"
                        " ON d.name = m.name WHERE m.tbl_name = :table"
                    ),
                    {"table": table},
                )
        except OperationalError:
            return None
        return int(size or 0)

    def estimated_rows(self, session: Session, table: str) -> int | None:
        return None


def _name(column: ColumnElement[Any]) -> str | None:
    return getattr(column, "name", None)


# PostgreSQL's @> rules, spelled with SQLite's JSON functions. Keys are compared as values
# (json_each's key column), never written into a JSON path: SQLite's paths cannot quote
# every key (one holding a double quote, for one). A nested value is read by json_each only
# where its type says it is an object or an array (a CASE), never as text that is not JSON.
# The members of nested objects are joined in one subquery (a key names at most one
# member, so the join cannot multiply rows); each wanted array element is a subquery of its
# own. Nesting subqueries costs SQLite's parser stack, hence MAX_METADATA_DEPTH.


def _members(document: Any, wanted: Mapping[str, Any]) -> list[ColumnElement[bool]]:
    """For each wanted key, the object ``document`` has the key with a matching value."""
    out: list[ColumnElement[bool]] = []
    for key, item in wanted.items():
        member = func.json_each(document).table_valued("key", "value", "type")
        froms: list[Any] = [member]
        where: list[ColumnElement[bool]] = [member.c.key == key]
        _match(member, item, froms, where)
        out.append(_exists(froms, where))
    return out


def _match(node: Any, wanted: Any, froms: list[Any], where: list[ColumnElement[bool]]) -> None:
    """Add to ``froms`` and ``where`` what makes ``node`` (a json_each row) contain
    ``wanted``."""
    value, kind = node.c.value, node.c.type
    if isinstance(wanted, Mapping):
        where.append(kind == "object")
        inner = case((kind == "object", value))
        for key, item in wanted.items():
            member = func.json_each(inner).table_valued("key", "value", "type")
            froms.append(member)
            where.append(member.c.key == key)
            _match(member, item, froms, where)
    elif isinstance(wanted, list):
        where.append(kind == "array")
        inner = case((kind == "array", value))
        for item in wanted:
            element = func.json_each(inner).table_valued("value", "type")
            element_froms: list[Any] = [element]
            element_where: list[ColumnElement[bool]] = []
            _match(element, item, element_froms, element_where)
            where.append(_exists(element_froms, element_where))
    elif wanted is None:
        where.append(kind == "null")
    elif isinstance(wanted, bool):
        where.append(kind == ("true" if wanted else "false"))
    elif isinstance(wanted, (int, float)):
        where.append(and_(kind.in_(["integer", "real"]), value == wanted))
    else:
        where.append(and_(kind == "text", value == wanted))


def _exists(froms: list[Any], where: list[ColumnElement[bool]]) -> ColumnElement[bool]:
    # Each json_each reads a column of one before it: a join on nothing more.
    joined = froms[0]
    for later in froms[1:]:
        joined = joined.join(later, true())
    return exists().select_from(joined).where(true(), *where)
