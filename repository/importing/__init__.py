"""Imports from files: scanning records out of JSON and JSON Lines, and the importer."""

from repository.importing.importer import (
    DEFAULT_BATCH_SIZE,
    ImportReport,
    Rejection,
    import_records,
)
from repository.importing.records import Record, read_records

__all__ = [
    "DEFAULT_BATCH_SIZE",
    "ImportReport",
    "Record",
    "Rejection",
    "import_records",
    "read_records",
]
