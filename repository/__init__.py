"""Reading and writing customers: the mapping between the shape and the rows, the
queries, bulk import, and running the migrations. All SQL of the project lives here."""

from repository.async_customers import AsyncCustomerRepository
from repository.customers import (
    CustomerRepository,
    DeleteOutcome,
    UpsertOutcome,
    UpsertSummary,
)
from repository.engine import (
    DEFAULT_DATABASE_URL,
    make_async_engine,
    make_async_session_factory,
    make_engine,
    make_session_factory,
)
from repository.erasure import forget_customer
from repository.importer import ImportReport, Rejection, import_records
from repository.queries import CustomerFilter, InvalidCursor, Page
from repository.records import Record, read_records

__all__ = [
    "DEFAULT_DATABASE_URL",
    "AsyncCustomerRepository",
    "CustomerFilter",
    "CustomerRepository",
    "DeleteOutcome",
    "ImportReport",
    "InvalidCursor",
    "Page",
    "Record",
    "Rejection",
    "UpsertOutcome",
    "UpsertSummary",
    "forget_customer",
    "import_records",
    "make_async_engine",
    "make_async_session_factory",
    "make_engine",
    "make_session_factory",
    "read_records",
]
