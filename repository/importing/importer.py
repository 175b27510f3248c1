"""Bulk import: every record is stored, counted unchanged, stale or forgotten, or rejected
with its reason.

Records are validated one by one (a bad record never reaches the database) and written in
batches with :meth:`CustomerRepository.upsert_rows` (the write behind ``upsert_many``), one
transaction per batch, retried when the database asks for it. If the database refuses a
batch, its records are written again one transaction each, so that only the record it
refuses is rejected. Validation runs in this process, or in worker processes while this one
only writes (``workers``): it is Python, held to one CPU per process.
"""

from __future__ import annotations

import gc
import multiprocessing
import threading
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ProcessPoolExecutor, ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import partial
from itertools import count, islice

from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session, sessionmaker

from models.errors import CustomerValidationError
from models.validation import parse_customer
from repository.db.backends import Backend, backend_of
from repository.db.retry import database_refusal, run_in_transaction
from repository.importing.records import Record, decode_line
from repository.store.bulk import Laid
from repository.store.customers import CustomerRepository, UpsertOutcome
from repository.store.mapping import customer_to_rows
from repository.store.pg_copy import copy_ready

__all__ = ["COLLECT_EVERY", "DEFAULT_BATCH_SIZE", "ImportReport", "Rejection", "import_records"]

DEFAULT_BATCH_SIZE = 1000
#: Batches written between two runs of the cyclic garbage collector, with ``tune_gc``.
COLLECT_EVERY = 20


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
    #: Records of the very version already stored (written again as they were).
    unchanged: int = 0
    #: Records of customers erased on request (``forget``): never stored again.
    forgotten: int = 0
    rejections: list[Rejection] = field(default_factory=list, repr=False)
    #: Reading stopped at this error (also counted as rejected): the rest of the input
    #: was not imported.
    stopped: Rejection | None = None

    @property
    def total(self) -> int:
        return self.applied + self.unchanged + self.stale + self.forgotten + self.rejected

    def count(self, outcome: UpsertOutcome) -> None:
        setattr(self, outcome.value, getattr(self, outcome.value) + 1)


@dataclass
class _BatchResult:
    outcomes: list[UpsertOutcome] = field(default_factory=list)
    refused: list[Rejection] = field(default_factory=list)


def import_records(
    sessions: sessionmaker[Session],
    records: Iterable[Record],
    *,
    batch_size: int = DEFAULT_BATCH_SIZE,
    on_reject: Callable[[Rejection], None] | None = None,
    on_progress: Callable[[ImportReport], None] | None = None,
    workers: int = 0,
    tune_gc: bool = False,
) -> ImportReport:
    """Validate and store ``records``; return what happened to each kind.

    While one batch is written (the writer thread mostly waits for the database), the next
    is validated: the two overlap, and at most two batches are held in memory.

    ``workers`` (processes) validate and lay out the batches instead of this thread, which
    then only writes: for large inputs on a machine with CPUs to spare (validation is
    Python, held to one CPU per process). Records read with ``decode_lines=False`` are
    decoded there too. Up to ``workers + 2`` batches more are then held, in flight. The
    default (0) validates in this process: a library caller's process is not forked unless
    it asks.

    ``tune_gc`` is for a process that is the import's own, such as the command line's: the
    garbage collector serves every thread of the process, so it is changed only on request.
    This process's cyclic collector is then set aside during the import, to run once every
    :data:`COLLECT_EVERY` batches written (:class:`_SparseCollection`; workers always do
    so), and where workers are forked, the objects this process holds stay out of the
    collector's runs until the workers end (``gc.freeze``), so that the workers keep
    sharing its memory rather than copying it. Both are undone when the import ends, by
    error too.
    """
    report = ImportReport()
    collection = _SparseCollection(COLLECT_EVERY) if tune_gc else None

    def reject(rejection: Rejection) -> None:
        report.rejected += 1
        if on_reject is not None:
            on_reject(rejection)
        else:
            report.rejections.append(rejection)

    def collect(result: _BatchResult) -> None:
        if collection is not None:
            collection.tick()
        for outcome in result.outcomes:
            report.count(outcome)
        for rejection in result.refused:
            reject(rejection)
        if on_progress is not None:
            on_progress(report)

    # The processes start before the writer thread does: a process forked with threads
    # running could inherit a lock one of them holds.
    # On PostgreSQL, batches are laid out as COPY text where they are validated (in workers,
    # if any): the writing thread then only sends them.
    lay_out = partial(_prepare, for_copy=_backend(sessions).copies)
    with (
        _sparse(collection),
        _preparing(lay_out, workers, freeze=tune_gc) as prepare,
        ThreadPoolExecutor(max_workers=1, thread_name_prefix="import-writer") as writer,
    ):
        pending: Future[_BatchResult] | None = None
        for batch in prepare(_chunks(records, batch_size)):
            for rejection, stopped in batch.rejections:
                if stopped:
                    report.stopped = rejection
                reject(rejection)
            if pending is not None:
                collect(pending.result())
            # Batches are written one after another, in input order: among versions of a
            # customer with the same timestamp, the later line wins, as it would one by one.
            pending = writer.submit(_write_batch, sessions, batch.locations, batch.rows)
        if pending is not None:
            collect(pending.result())
    return report


@dataclass
class _Prepared:
    """A batch validated and laid out: rows to write, and the records refused, in order."""

    locations: list[str] = field(default_factory=list)
    rows: list[Laid] = field(default_factory=list)
    #: (rejection, whether reading stopped there).
    rejections: list[tuple[Rejection, bool]] = field(default_factory=list)


def _prepare(chunk: list[Record], *, for_copy: bool) -> _Prepared:
    """Validate and lay out a batch of records (in this process or a worker): as rows, or
    ``for_copy`` as the text PostgreSQL's ``COPY`` reads."""
    batch = _Prepared()
    for record in (one for line in chunk for one in decode_line(line)):
        if record.error is not None:
            batch.rejections.append((Rejection(record.location, record.error), record.stopped))
            continue
        try:
            customer = parse_customer(record.value, source=record.text)
        except CustomerValidationError as exc:
            batch.rejections.append((Rejection(record.location, str(exc)), False))
            continue
        batch.locations.append(record.location)
        rows = customer_to_rows(customer)
        batch.rows.append(copy_ready(rows) if for_copy else rows)
    return batch


_Prepare = Callable[[Iterator[list[Record]]], Iterator[_Prepared]]


@contextmanager
def _preparing(
    lay_out: Callable[[list[Record]], _Prepared], workers: int, *, freeze: bool
) -> Iterator[_Prepare]:
    """What turns batches of records into prepared batches, in order: ``lay_out``
    here, or on ``workers`` processes with ``workers + 2`` batches in flight (``freeze``:
    this process's objects frozen while forked ones run, :func:`_frozen`)."""
    if workers < 1:
        yield partial(map, lay_out)
        return
    # Forked, the workers start at once with every module loaded; spawned (where fork is
    # missing, or threads run that a fork could catch holding a lock), they import them.
    fork = "fork" in multiprocessing.get_all_start_methods() and threading.active_count() == 1
    context = multiprocessing.get_context("fork" if fork else "spawn")
    with _frozen(fork and freeze), ProcessPoolExecutor(
        workers, mp_context=context, initializer=_start_worker
    ) as pool:

        def prepared(chunks: Iterator[list[Record]]) -> Iterator[_Prepared]:
            in_flight: deque[Future[_Prepared]] = deque()
            for chunk in chunks:
                in_flight.append(pool.submit(_prepare_in_worker, lay_out, chunk))
                # Two batches beyond one per worker wait their turn: the workers go on
                # while this thread waits for the writer.
                if len(in_flight) > workers + 1:
                    yield in_flight.popleft().result()
            while in_flight:
                yield in_flight.popleft().result()

        yield prepared


class _SparseCollection:
    """The cyclic garbage collector run once every ``every`` batches instead of on its own.

    What an import allocates is freed by reference counting once its batch is written or
    sent, but the collector would scan the batches in memory again and again (about a
    tenth of the time); the few cycles there are (a session and its transaction, a
    rejection's traceback) go at the next run.
    """

    def __init__(self, every: int) -> None:
        self.every = every
        self._batches = count(1)

    def tick(self) -> None:
        """One batch done."""
        if next(self._batches) % self.every == 0:
            gc.collect()


@contextmanager
def _sparse(collection: _SparseCollection | None) -> Iterator[None]:
    """The automatic collector off while ``collection`` runs it instead, then as it was."""
    collecting = gc.isenabled()
    if collection is not None:
        gc.disable()
    try:
        yield
    finally:
        if collection is not None and collecting:
            gc.enable()


@contextmanager
def _frozen(forking: bool) -> Iterator[None]:
    """While forked workers run, the objects this process holds when they start are left
    out of cyclic garbage collection (``gc.freeze``), here and so in the workers.

    A forked worker shares this process's memory until either writes to it, and a cyclic
    collection, in the worker or here, writes to every object it scans: each worker would
    soon hold a private copy of what it inherited (about 25 MB more per worker at 50,000
    customers, as the collections came). Nothing is lost: the objects return to the
    collector at the end. A process that froze objects itself (a service's start-up heap)
    is left as it is: unfreezing would give the collector back its objects too.
    """
    if not forking or gc.get_freeze_count():
        yield
        return
    gc.collect()  # garbage made so far is freed, not kept for the import's length
    gc.freeze()
    try:
        yield
    finally:
        gc.unfreeze()


#: Batches a worker prepares between two runs of its cyclic garbage collector.
_WORKER_COLLECT_EVERY = 20
_worker_collection = _SparseCollection(_WORKER_COLLECT_EVERY)


def _start_worker() -> None:
    gc.disable()  # the worker's collection is sparse (_prepare_in_worker), for good


def _prepare_in_worker(
    lay_out: Callable[[list[Record]], _Prepared], chunk: list[Record]
) -> _Prepared:
    _worker_collection.tick()
    return lay_out(chunk)


def _write_batch(
    sessions: sessionmaker[Session], locations: list[str], rows: list[Laid]
) -> _BatchResult:
    if not rows:
        return _BatchResult()
    try:
        return _BatchResult(
            outcomes=run_in_transaction(sessions, partial(_upsert_rows, batch=rows))
        )
    except DBAPIError as exc:
        # Prepared statements clashing behind a pooler are no record's fault: stop, saying so.
        if database_refusal(exc) is None:
            raise
    # The database refused something in the batch: find which record, one at a time.
    result = _BatchResult()
    for location, one in zip(locations, rows, strict=True):
        try:
            result.outcomes.append(run_in_transaction(sessions, partial(_upsert_one, rows=one)))
        except DBAPIError as single:
            reason = database_refusal(single)
            if reason is None:
                raise
            result.refused.append(Rejection(location, reason))
    return result


def _upsert_rows(session: Session, *, batch: list[Laid]) -> list[UpsertOutcome]:
    return CustomerRepository(session).upsert_rows(batch)


def _upsert_one(session: Session, *, rows: Laid) -> UpsertOutcome:
    return _upsert_rows(session, batch=[rows])[0]


def _backend(sessions: sessionmaker[Session]) -> Backend:
    with sessions() as session:  # no connection is made to ask
        return backend_of(session)


def _chunks(records: Iterable[Record], size: int) -> Iterator[list[Record]]:
    iterator = iter(records)
    while chunk := list(islice(iterator, size)):
        yield chunk
