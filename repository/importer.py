"""Bulk import: every record is stored, counted stale, or rejected with its reason.

Records are validated one by one (a bad record never reaches the database) and written in
batches with :func:`repository.bulk.bulk_upsert`, one transaction per batch, retried when
the database asks for it. If the database refuses a batch, its records are written again
one transaction each, so that only the record it refuses is rejected.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from functools import partial
from itertools import islice

from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session, sessionmaker

from models.customer import Customer
from models.validation import CustomerValidationError, parse_customer
from repository.bulk import bulk_upsert
from repository.customers import UpsertOutcome
from repository.mapping import CustomerRows, customer_to_rows
from repository.records import Record
from repository.retry import is_retryable, run_in_transaction

__all__ = ["DEFAULT_BATCH_SIZE", "ImportReport", "Rejection", "import_records"]

DEFAULT_BATCH_SIZE = 500


@dataclass(frozen=True)
class Rejection:
    location: str
    reason: str


@dataclass
class ImportReport:
    """Running totals of an import."""

    applied: int = 0
    stale: int = 0
    rejected: int = 0
    rejections: list[Rejection] = field(default_factory=list, repr=False)

    @property
    def total(self) -> int:
        return self.applied + self.stale + self.rejected

    def count(self, outcome: UpsertOutcome) -> None:
        if outcome is UpsertOutcome.APPLIED:
            self.applied += 1
        else:
            self.stale += 1


def import_records(
    sessions: sessionmaker[Session],
    records: Iterable[Record],
    *,
    batch_size: int = DEFAULT_BATCH_SIZE,
    on_reject: Callable[[Rejection], None] | None = None,
    on_progress: Callable[[ImportReport], None] | None = None,
) -> ImportReport:
    """Validate and store ``records``; return what happened to each kind."""
    report = ImportReport()

    def reject(location: str, reason: str) -> None:
        report.rejected += 1
        rejection = Rejection(location, reason)
        if on_reject is not None:
            on_reject(rejection)
        else:
            report.rejections.append(rejection)

    for chunk in _chunks(records, batch_size):
        valid: list[tuple[str, Customer]] = []
        for record in chunk:
            if record.error is not None:
                reject(record.location, record.error)
                continue
            try:
                valid.append((record.location, parse_customer(record.value, source=record.text)))
            except CustomerValidationError as exc:
                reject(record.location, str(exc))
        if valid:
            _write_batch(sessions, valid, report, reject)
        if on_progress is not None:
            on_progress(report)
    return report


def _write_batch(
    sessions: sessionmaker[Session],
    batch: list[tuple[str, Customer]],
    report: ImportReport,
    reject: Callable[[str, str], None],
) -> None:
    rows = [customer_to_rows(customer) for _, customer in batch]
    try:
        applied = run_in_transaction(sessions, lambda session: bulk_upsert(session, rows))
    except DBAPIError as exc:
        if is_retryable(exc):
            raise
        # The database refused something in the batch: find which record, one at a time.
        for (location, _), one in zip(batch, rows, strict=True):
            try:
                outcome = run_in_transaction(sessions, partial(_upsert_one, rows=one))
            except DBAPIError as single:
                if is_retryable(single):
                    raise
                reject(location, f"the database refused it: {_first_line(single.orig)}")
                continue
            report.count(UpsertOutcome.APPLIED if outcome else UpsertOutcome.STALE)
        return
    for was_applied in applied:
        report.count(UpsertOutcome.APPLIED if was_applied else UpsertOutcome.STALE)


def _upsert_one(session: Session, *, rows: CustomerRows) -> bool:
    return bulk_upsert(session, [rows])[0]


def _chunks(records: Iterable[Record], size: int) -> Iterator[list[Record]]:
    iterator = iter(records)
    while chunk := list(islice(iterator, size)):
        yield chunk


def _first_line(error: BaseException | None) -> str:
    text = str(error).strip() if error is not None else ""
    return text.splitlines()[0] if text else "unknown error"
