"""The declarative base, its naming convention and the column types the tables share."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    ColumnElement,
    DateTime,
    Dialect,
    MetaData,
    Text,
    TypeDecorator,
)
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.orm import DeclarativeBase
from sqlalchemy.sql.compiler import SQLCompiler
from sqlalchemy.sql.functions import FunctionElement

__all__ = ["NAMING_CONVENTION", "Base", "JSONDocument", "SortedText", "UTCDateTime", "in_utc"]

#: Alembic's recommended convention, so every constraint has a predictable name.
NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)
    type_annotation_map = {int: BigInteger, str: Text}


class UTCDateTime(TypeDecorator[datetime]):
    """A point in time, stored in UTC and always read back as an aware UTC datetime.

    PostgreSQL keeps it as ``timestamptz``; SQLite as text in a fixed-width form, which
    sorts in time order, so comparisons in SQL work on both.

    PostgreSQL renders a ``timestamptz`` in the session's time zone, which is the server's
    (or the role's, or the database's) unless a connection sets its own, and a pooler lets
    no connection do that. In that zone the last instants of year 9999 fall in year 10000
    and those of year 1 in a local mean time with an offset in seconds, which the driver
    cannot read. So every ``SELECT`` reads these columns as UTC wall-clock time
    (:func:`in_utc`), the same in any zone.
    """

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime: give a time zone")
        # SQLite's DATETIME writes it without its offset: UTC wall-clock time.
        return value.astimezone(UTC)

    def process_result_value(self, value: Any, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        moment: datetime = value
        if moment.tzinfo is None:
            return moment.replace(tzinfo=UTC)
        return moment.astimezone(UTC)

    def column_expression(self, column: ColumnElement[Any]) -> ColumnElement[Any]:
        """What a ``SELECT`` reads of such a column: the instant in UTC (:func:`in_utc`)."""
        return in_utc(column)


class in_utc(FunctionElement[datetime]):
    """A ``timestamptz`` as UTC wall-clock time, whatever the session's time zone:
    ``timezone('UTC', column)`` on PostgreSQL (a ``timestamp``, no offset); the column
    itself on SQLite, which keeps UTC text. Of the column's type, so it is read back as
    the column is."""

    name = "in_utc"
    inherit_cache = True

    def __init__(self, column: ColumnElement[Any]) -> None:
        super().__init__(column)
        self.type = column.type


@compiles(in_utc)
def _in_utc(element: in_utc, compiler: SQLCompiler, **kw: Any) -> str:
    return compiler.process(element.clauses, **kw)


@compiles(in_utc, "postgresql")
def _in_utc_postgresql(element: in_utc, compiler: SQLCompiler, **kw: Any) -> str:
    return f"timezone('UTC', {compiler.process(element.clauses, **kw)})"


#: Arbitrary JSON: JSONB on PostgreSQL, JSON text on SQLite. SQL NULL stands for "none";
#: whether a key was absent or ``null`` is recorded beside it, not in the value.
JSONDocument = JSON(none_as_null=True).with_variant(JSONB(none_as_null=True), "postgresql")

#: Keys (customer ids, campaign keys) sort bytewise on both databases ("C" collation on
#: PostgreSQL), so
#: ``ORDER BY id`` and keyset pagination agree between them and use the primary key.
SortedText = Text().with_variant(Text(collation="C"), "postgresql")
