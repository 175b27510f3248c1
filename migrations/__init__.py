"""Alembic migrations of the customer store, shipped in the package for `customer-store migrate`."""

from pathlib import Path
from typing import Any

__all__ = ["HEAD", "SCRIPT_LOCATION", "include_object_for"]

#: Where Alembic finds env.py and versions/, in a checkout or an installed copy.
SCRIPT_LOCATION = str(Path(__file__).resolve().parent)
#: The newest revision in versions/ (a new migration moves it): the commands check a
#: database's schema against it without loading Alembic. tests/test_migrations.py holds it
#: to the head Alembic finds.
HEAD = "0010"


def include_object_for(dialect: str) -> Any:
    """Autogenerate's ``include_object`` hook for a database of ``dialect``."""

    def include_object(obj: Any, name: Any, type_: str, reflected: bool, compare_to: Any) -> bool:
        # Indexes that exist on one database only (``Index(...).ddl_if(dialect=...)``)
        # are not missing on the others.
        ddl_if = getattr(obj, "_ddl_if", None)
        return not (
            type_ == "index" and ddl_if is not None and ddl_if.dialect not in (None, dialect)
        )

    return include_object
