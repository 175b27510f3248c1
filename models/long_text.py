"""Indexes over text that Voucherify sends, which has no length limit.

A PostgreSQL B-tree entry holds at most 2,704 bytes, so no index may hold such a value
whole: an index holds its first :data:`INDEX_PREFIX` characters (``substr``, the same
function with the same meaning on SQLite and PostgreSQL), and every lookup compares that
prefix, which the index serves, and then the whole value (:func:`equals_indexed`).
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import ColumnElement, and_, func, literal_column

__all__ = ["INDEX_PREFIX", "equals_indexed", "indexed_prefix"]

#: Characters of a value an index holds: at four UTF-8 bytes a character, 800 bytes, which
#: leaves room for a second key beside it (a customer id, a campaign key).
INDEX_PREFIX = 200


def indexed_prefix(text: Any) -> ColumnElement[str]:
    """The start of ``text`` (a column or a value) as the indexes hold it.

    The bounds are written into the SQL, not bound: a database uses an expression index
    only for the very expression it was built on."""
    return func.substr(text, literal_column("1"), literal_column(str(INDEX_PREFIX)))


def equals_indexed(column: Any, value: Any) -> ColumnElement[bool]:
    """``column = value``, found through the index on ``indexed_prefix(column)``."""
    return and_(indexed_prefix(column) == indexed_prefix(value), column == value)
