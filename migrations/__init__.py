"""Alembic migrations of the customer store, shipped in the package for `customer-store migrate`."""

from pathlib import Path

__all__ = ["SCRIPT_LOCATION"]

#: Where Alembic finds env.py and versions/, in a checkout or an installed copy.
SCRIPT_LOCATION = str(Path(__file__).resolve().parent)
