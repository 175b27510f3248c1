"""Bulk import: every record is stored, counted stale, or rejected with its reason.

Records are validated one by one (a bad record never reaches the database) and written in
batches with :meth:`CustomerRepository.upsert_rows` (the write behind ``upsert_many``), one
transaction per batch, retried when the database asks for it. If the database refuses a
batch, its records are written again one transaction each, so that only the record it
refuses is rejected.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import partial
from itertools import islice

from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session, sessionmaker

from models.errors import CustomerValidationError
from models.validation import parse_customer
from repository.customers import CustomerRepository, UpsertOutcome
from repository.driver import is_pooler_clash
from repository.mapping import CustomerRows, customer_to_rows
from repository.records import Record
from repository.retry import is_retryable, run_in_transaction

__all__ = ["DEFAULT_BATCH_SIZE", "ImportReport", "Rejection", "import_records"]

DEFAULT_BATCH_SIZE = 1000


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
    #: Reading stopped at this error (also counted as rejected): the rest of the input
    #: was not imported.
    stopped: Rejection | None = None

    @property
    def total(self) -> int:
        return self.applied + self.stale + self.rejected

    def count(self, outcome: UpsertOutcome) -> None:
        if outcome is UpsertOutcome.APPLIED:
            self.applied += 1
        else:
            self.stale += 1


@dataclass
class _BatchResult:
    applied: list[bool] = field(default_factory=list)
    refused: list[Rejection] = field(default_factory=list)


def import_records(
    sessions: sessionmaker[Session],
    records: Iterable[Record],
    *,
    batch_size: int = DEFAULT_BATCH_SIZE,
    on_reject: Callable[[Rejection], None] | None = None,
    on_progress: Callable[[ImportReport], None] | None = None,
) -> ImportReport:
    """Validate and store ``records``; return what happened to each kind.

    While one batch is written (the writer thread mostly waits for the database), the next
    is validated: the two overlap, and at most two batches are held in memory.
    """
    report = ImportReport()

    def reject(rejection: Rejection) -> None:
        report.rejected += 1
        if on_reject is not None:
            on_reject(rejection)
        else:
            report.rejections.append(rejection)

    def collect(result: _BatchResult) -> None:
        for was_applied in result.applied:
            report.count(UpsertOutcome.APPLIED if was_applied else UpsertOutcome.STALE)
        for rejection in result.refused:
            reject(rejection)
        if on_progress is not None:
            on_progress(report)

    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="import-writer") as writer:
        pending: Future[_BatchResult] | None = None
        for chunk in _chunks(records, batch_size):
            locations: list[str] = []
            rows: list[CustomerRows] = []
            for record in chunk:
                if record.error is not None:
                    rejection = Rejection(record.location, record.error)
                    if record.stopped:
                        report.stopped = rejection
                    reject(rejection)
                    continue
                try:
                    customer = parse_customer(record.value, source=record.text)
                except CustomerValidationError as exc:
                    reject(Rejection(record.location, str(exc)))
                    continue
                locations.append(record.location)
                rows.append(customer_to_rows(customer))
            if pending is not None:
                collect(pending.result())
            # Batches are written one after another, in input order: among versions of a
            # customer with the same timestamp, the later line wins, as it would one by one.
            pending = writer.submit(_write_batch, sessions, locations, rows)
        if pending is not None:
            collect(pending.result())
    return report


def _write_batch(
    sessions: sessionmaker[Session], locations: list[str], rows: list[CustomerRows]
) -> _BatchResult:
    if not rows:
        return _BatchResult()
    try:
        return _BatchResult(
            applied=run_in_transaction(sessions, partial(_upsert_rows, batch=rows))
        )
    except DBAPIError as exc:
        # Prepared statements clashing behind a pooler are no record's fault: stop, saying so.
        if is_retryable(exc) or is_pooler_clash(exc):
            raise
    # The database refused something in the batch: find which record, one at a time.
    result = _BatchResult()
    for location, one in zip(locations, rows, strict=True):
        try:
            result.applied.append(run_in_transaction(sessions, partial(_upsert_one, rows=one)))
        except DBAPIError as single:
            if is_retryable(single) or is_pooler_clash(single):
                raise
            reason = f"the database refused it: {_first_line(single.orig)}"
            result.refused.append(Rejection(location, reason))
    return result


def _upsert_rows(session: Session, *, batch: list[CustomerRows]) -> list[bool]:
    return CustomerRepository(session).upsert_rows(batch)


def _upsert_one(session: Session, *, rows: CustomerRows) -> bool:
    return _upsert_rows(session, batch=[rows])[0]


def _chunks(records: Iterable[Record], size: int) -> Iterator[list[Record]]:
    iterator = iter(records)
    while chunk := list(islice(iterator, size)):
        yield chunk


def _first_line(error: BaseException | None) -> str:
    text = str(error).strip() if error is not None else ""
    return text.splitlines()[0] if text else "unknown error"
