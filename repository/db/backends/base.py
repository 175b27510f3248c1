"""What differs between the two databases, behind one interface: :class:`Backend`.

Callers ask :func:`repository.db.backends.backend_of` for the backend of their session,
connection or engine, and call its methods; no other module looks at which database it
runs on.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

from sqlalchemy import ColumnElement, Connection, Engine, Table
from sqlalchemy.orm import Session
from sqlalchemy.sql.expression import Executable

__all__ = ["Backend", "ChildRows", "column_names"]

#: A batch's child rows: for each of :data:`~repository.db.tables.child_tables`, in that
#: order, its rows as dicts keyed by column name.
ChildRows = Sequence[Sequence[Mapping[str, Any]]]


def column_names(table: Table) -> list[str]:
    """``table``'s column names, in the table's order."""
    return [column.name for column in table.c]


class Backend(ABC):
    """One database's statements and rules; a stateless singleton per database."""

    #: The database's name, for messages: ``"postgresql"`` or ``"sqlite"``.
    name: ClassVar[str]
    #: Bulk rows can be streamed with ``COPY`` (an import lays its batches out for it).
    copies: ClassVar[bool]
    #: One statement may write several tables (data-modifying ``WITH``): a single upsert,
    #: its tombstones and its old child rows then take one round trip.
    writes_in_one_statement: ClassVar[bool]
    #: Standbys (read replicas) can follow the database, at a WAL position.
    has_standbys: ClassVar[bool]
    #: Roles and privileges exist (what ``grant-app-role`` and the privilege checks use).
    has_roles: ClassVar[bool]

    def __repr__(self) -> str:
        return f"<{self.name} backend>"

    @abstractmethod
    def configure(self, engine: Engine) -> None:
        """Set up a new engine's connections (event listeners)."""

    @abstractmethod
    def insert(self, table: Table) -> Any:
        """The database's own ``INSERT`` for ``table``, the one with
        ``on_conflict_do_update`` / ``on_conflict_do_nothing``."""

    @abstractmethod
    def lock_customers(self, session: Session, customer_ids: Sequence[str]) -> None:
        """Take these customers' write locks until the end of the transaction
        (:mod:`repository.db.locks`)."""

    @abstractmethod
    def delete_children(self, connection: Connection, customer_ids: Sequence[str]) -> None:
        """Delete every child row of these customers (none asked for: nothing sent)."""

    @abstractmethod
    def insert_children(self, connection: Connection, children: ChildRows) -> None:
        """Append child rows, given per child table (:data:`ChildRows`)."""

    def hot_statements(self) -> Sequence[Executable]:
        """Statements of its own that the hot paths send through the driver (built ahead of
        use: :mod:`repository.db.warm_up`)."""
        return ()

    @abstractmethod
    def bound_waits(self, connection: Connection, milliseconds: int) -> None:
        """Make the rest of this transaction wait at most ``milliseconds`` for a lock."""

    @abstractmethod
    def json_rows(self, columns: Sequence[ColumnElement[Any]]) -> ColumnElement[Any]:
        """An aggregate: a JSON array of ``[column, ...]`` arrays, one per row, with
        timestamps as ISO 8601 UTC wall-clock time."""

    @abstractmethod
    def starts_with(self, column: ColumnElement[Any], prefix: str) -> ColumnElement[bool]:
        """``column`` starts with ``prefix``, as a pattern the column's index serves."""

    @abstractmethod
    def json_contains(
        self, document: ColumnElement[Any], wanted: Mapping[str, Any]
    ) -> ColumnElement[bool]:
        """The JSON object ``document`` contains ``wanted``, under PostgreSQL's ``@>``
        rules."""

    @abstractmethod
    def table_bytes(self, session: Session, table: str) -> int | None:
        """Disk space of ``table`` and its indexes, in bytes (None where unknown)."""

    @abstractmethod
    def estimated_rows(self, session: Session, table: str) -> int | None:
        """About how many rows ``table`` holds, cheaply; None where no cheap estimate
        exists (then count)."""

