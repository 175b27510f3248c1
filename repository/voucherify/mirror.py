"""The mirror of Voucherify's list API (the CLI's ``sync``): a full backfill, then
incremental runs, never a skip.

Listing follows ``GET /v1/customers`` in ascending order (``order=created_at`` for a full
listing and for new customers, ``order=updated_at`` for changes) a page of 100 at a time.
Many customers can share one timestamp (bulk imports), and ``starting_after`` returns
only those strictly after it, so each next page starts one millisecond before the last
timestamp seen and the customers already seen at that timestamp are skipped. When a whole
page shares one timestamp, that timestamp is read on its own by page number
(``created_at[after]``/``[before]`` around it, ``page`` 1 to 99).

Each page is stored with the newest-wins rule (a newer webhook wins, an older one loses)
in one transaction together with the checkpoint, so a run that is interrupted resumes at
the last committed page. Every page must move forward: its customers in ascending order and
after the cursor, else the run stops (:class:`ApiUnavailable`) rather than page on.

A full listing (the first run, or ``full=True``) notes every id it sees; ``full=True`` then
sweeps: it records a deletion (a ``swept`` tombstone, which any later payload of the
customer undoes) for every stored customer it did not see and that is older than the
listing's start (on the server's clock), only after a listing complete by every sign the
API gives and within ``max_deletions`` (:mod:`repository.voucherify.sweep`); else it deletes
nothing.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, NoReturn, TypeVar

from sqlalchemy import and_, or_, select
from sqlalchemy.orm import Session, sessionmaker

from models.errors import CustomerValidationError
from models.validation import parse_customer
from models.wire import format_datetime, parse_datetime
from repository.db.retry import run_in_transaction
from repository.db.tables import customers, tombstones
from repository.importing.importer import Rejection
from repository.store.customers import CustomerRepository
from repository.store.mapping import CustomerRows, customer_to_rows
from repository.store.newest_wins import UpsertOutcome, older_tombstone
from repository.voucherify.client import (
    ApiUnavailable,
    CustomerList,
    RequestLimitReached,
    VoucherifyClient,
    VoucherifyError,
)
from repository.voucherify.mirror_state import (
    MirrorState,
    count_listed,
    forget_listed,
    load_mirror_state,
    remember_listed,
    save_mirror_state,
)
from repository.voucherify.sweep import (
    SweepRefused,
    delete_unlisted,
    excess_deletions,
    incomplete_listing,
    missing_from,
)

__all__ = [
    "DEFAULT_OVERLAP",
    "PAGE_SIZE",
    "MirrorReport",
    "TieOverflow",
    "mirror_customers",
]

T = TypeVar("T")

PAGE_SIZE = 100
#: The API's last page number: a run of ties is readable up to 99 pages of 100.
MAX_PAGE = 99
#: How far an incremental run reaches back before its checkpoint.
DEFAULT_OVERLAP = timedelta(seconds=1)
_TICK = timedelta(milliseconds=1)
#: How far ahead of this machine's clock a stored checkpoint may be and still be trusted.
_CLOCK_SKEW = timedelta(minutes=5)


class TieOverflow(VoucherifyError):
    """More customers share one timestamp than the API can list (99 pages of 100)."""


@dataclass
class MirrorReport:
    """What a mirror run did (or, with ``dry_run``, would do)."""

    mode: str = "incremental"
    dry_run: bool = False
    #: The customers count the API reported for the listing (the progress bar's total).
    total: int | None = None
    listed: int = 0
    #: Payloads stored: new customers, or newer versions than the stored ones.
    applied: int = 0
    #: Versions the store already held (an incremental run's overlap re-reads them).
    unchanged: int = 0
    stale: int = 0
    #: Customers erased on request (``forget``): never stored again.
    forgotten: int = 0
    rejected: int = 0
    deleted: int = 0
    #: With ``dry_run``: customers the store lacks, holds in an older version, or holds
    #: although Voucherify no longer lists them (only a full listing finds those).
    new: int = 0
    newer: int = 0
    missing: int = 0
    requests: int = 0
    #: False when the run stopped early (``max_requests``); the next run goes on.
    complete: bool = True
    stopped: str | None = None
    rejections: list[Rejection] = field(default_factory=list, repr=False)

    @property
    def repaired(self) -> int:
        return self.applied + self.deleted

    @property
    def drifted(self) -> bool:
        return bool(self.new or self.newer or self.missing)


@dataclass
class _Batch:
    """Customers of one list answer to store, and the checkpoint they let a run resume at."""

    customers: list[dict[str, Any]]
    #: Where the next run may resume: every customer before it is on this or an earlier page.
    checkpoint: datetime | None
    where: str


def mirror_customers(
    sessions: sessionmaker[Session],
    client: VoucherifyClient,
    *,
    full: bool = False,
    dry_run: bool = False,
    overlap: timedelta = DEFAULT_OVERLAP,
    max_deletions: int | None = None,
    on_progress: Callable[[MirrorReport], None] | None = None,
    on_reject: Callable[[Rejection], None] | None = None,
) -> MirrorReport:
    """Bring the store level with Voucherify's customer list; see the module docstring.

    ``max_deletions``: the most customers a sweep may delete (default
    :func:`default_max_deletions` of the customers stored); beyond it, none.
    """
    if max_deletions is not None and max_deletions < 0:
        raise ValueError("max_deletions must not be negative")
    with sessions() as session:
        state = load_mirror_state(session, client.api_url) or MirrorState(client.api_url)
    run = _Run(sessions, client, state, dry_run, on_progress, on_reject)
    run.max_deletions = max_deletions
    try:
        if (full or state.listing_started_at is not None
                or not _trusted(state.created_cursor) or not _trusted(state.updated_cursor)):
            run.listing(sweep=full)
        else:
            run.incremental(overlap)
    except RequestLimitReached as exc:
        run.report.complete = False
        run.report.stopped = str(exc)
    run.report.requests = client.requests
    return run.report


class _Run:
    def __init__(
        self,
        sessions: sessionmaker[Session],
        client: VoucherifyClient,
        state: MirrorState,
        dry_run: bool,
        on_progress: Callable[[MirrorReport], None] | None,
        on_reject: Callable[[Rejection], None] | None,
    ) -> None:
        self.sessions = sessions
        self.client = client
        self.state = state
        self.report = MirrorReport(dry_run=dry_run)
        self.on_progress = on_progress
        self.on_reject = on_reject
        self.listed_ids: set[str] = set()  # dry run only: a full listing's ids, in memory
        self.max_deletions: int | None = None
        #: The ``total`` of the listing's latest answer (the whole list's count).
        self.listing_total: int | None = None

    # -- the two kinds of run ----------------------------------------------------------

    def listing(self, *, sweep: bool) -> None:
        state = self.state
        if self.report.dry_run or state.listing_started_at is None or (
            sweep and not state.listing_sweeps
        ):
            # A new listing (a listing without a sweep is restarted to sweep: its ids
            # were not noted; a dry run notes its ids in memory, from the start).
            state.listing_started_at = None
            state.listing_cursor = None
            state.listing_sweeps = sweep
            if not self.report.dry_run:
                self._commit(lambda session: forget_listed(session, state.api_url))
        sweeping = bool(state.listing_sweeps)
        self.report.mode = "full" if sweeping else "backfill"
        start = state.listing_cursor - _TICK if state.listing_cursor is not None else None
        for page in self._walk("created_at", start, count_total=True):
            if state.listing_started_at is None:
                state.listing_started_at = self._server_time()
            state.listing_cursor = self._held_back(page.checkpoint) or state.listing_cursor
            self._store(page, note_listed=sweeping)
        started = state.listing_started_at or self._server_time()
        if sweeping:
            self._check_complete()
            self._check_bound(started)
            self.report.deleted = self._sweep(started)
        # Whatever changed since the listing began has a timestamp after its start.
        state.created_cursor = state.updated_cursor = started
        state.listing_started_at = state.listing_cursor = state.listing_sweeps = None
        self._finish(clear_listed=sweeping)

    def incremental(self, overlap: timedelta) -> None:
        state = self.state
        for order in ("created_at", "updated_at"):
            cursor = getattr(state, f"{order.removesuffix('_at')}_cursor")
            for page in self._walk(order, cursor - overlap if cursor else None):
                if page.checkpoint is not None:
                    setattr(state, f"{order.removesuffix('_at')}_cursor",
                            self._held_back(page.checkpoint))
                self._store(page, note_listed=False)
        self._finish(clear_listed=False)

    # -- listing -----------------------------------------------------------------------

    def _walk(
        self, order: str, after: datetime | None, *, count_total: bool = False
    ) -> Iterator[_Batch]:
        """Every customer listed ascending by ``order`` after ``after``, in pages."""
        boundary: datetime | None = None  # the last timestamp of the previous page
        seen: set[str] = set()  # ids seen at ``boundary``
        tie_read: datetime | None = None
        number = 0
        while True:
            cursor = after if boundary is None else boundary - _TICK
            if tie_read is not None and boundary == tie_read:
                cursor = boundary  # every customer at it is read: strictly after it now
            params = {"order": order, "limit": str(PAGE_SIZE)}
            if cursor is not None:
                params["starting_after"] = format_datetime(cursor)
            answer = self.client.list_customers(params)
            number += 1
            if count_total:
                if self.report.total is None:
                    self.report.total = answer.total
                self.listing_total = answer.total
            items = answer.customers
            stamps = [_stamp(c, order) for c in items]
            last = stamps[-1] if stamps else None
            where = f"page {number} of order={order}" + (
                f" starting_after={params['starting_after']}" if cursor is not None else ""
            )
            _check_forward(stamps, cursor, order, where)
            fresh = [c for c in items if _id(c) not in seen]
            if items and last is None and answer.has_more:
                raise ApiUnavailable(f"customers without {order} on {where}: cannot page on")
            if not items and answer.has_more:
                raise ApiUnavailable(f"no customers but has_more on {where}: cannot page on")
            if boundary is not None and last is not None and last < boundary:
                raise ApiUnavailable(f"the cursor went backwards on {where}: stopped")
            if items and all(s == last for s in stamps) and last == boundary:
                if len(items) < PAGE_SIZE or not answer.has_more:
                    if fresh:
                        yield _Batch(fresh, last, where)
                    return
                if tie_read == last:
                    raise ApiUnavailable(
                        f"the API listed customers at starting_after again on {where}"
                    )
                # A whole page at the one timestamp already being read: read it by number.
                assert last is not None
                yield from self._read_tie(order, last, seen, answer)
                tie_read = last
                continue
            if fresh or items:
                yield _Batch(fresh, _checkpoint(stamps), where)
            if not answer.has_more:
                return
            seen = {_id(c) for c, s in zip(items, stamps, strict=True) if s == last} | (
                seen if last == boundary else set()
            )
            boundary = last

    def _read_tie(
        self, order: str, at: datetime, seen: set[str], first: CustomerList[dict[str, Any]]
    ) -> Iterator[_Batch]:
        base = {
            "order": order,
            "limit": str(PAGE_SIZE),
            f"{order}[after]": format_datetime(at - _TICK),
            f"{order}[before]": format_datetime(at + _TICK),
        }
        for number in range(1, MAX_PAGE + 1):
            answer = self.client.list_customers({**base, "page": str(number)})
            where = f"page {number} of {order}={format_datetime(at)}"
            if any(_stamp(c, order) != at for c in answer.customers):
                raise ApiUnavailable(f"customers at another {order} on {where}: stopped")
            fresh = [c for c in answer.customers if _id(c) not in seen]
            seen.update(_id(c) for c in fresh)
            if fresh:
                yield _Batch(fresh, at, where)
            if not answer.has_more:
                return
            if not fresh and number > 1:
                raise ApiUnavailable(f"the page number does not advance on {where}: stopped")
        raise TieOverflow(
            f"more than {MAX_PAGE * PAGE_SIZE} customers share {order} {format_datetime(at)}: "
            "the API cannot list them all"
        )

    def _server_time(self) -> datetime:
        """The server's clock at its last answer (the ``Date`` header, rounded down): what
        existed before then was listed. Never later than this machine's clock: a ``Date``
        in the future would become a checkpoint after which every later run finds nothing,
        while a checkpoint too early only makes the next run read a little again (so no
        allowance is made for the server's clock being ahead)."""
        now = datetime.now(UTC)
        server = self.client.last_server_time
        # No Date header: this machine's clock, held back for a possible skew.
        return min(server, now) if server is not None else now - timedelta(minutes=5)

    def _held_back(self, checkpoint: datetime | None) -> datetime | None:
        """A page's checkpoint, never later than the server's time (:meth:`_server_time`):
        a customer stamped in the future would otherwise make every later run start after
        it and find nothing; held back, later runs read that customer again instead."""
        return None if checkpoint is None else min(checkpoint, self._server_time())

    # -- storing -----------------------------------------------------------------------

    def _store(self, page: _Batch, *, note_listed: bool) -> None:
        report = self.report
        rows: list[CustomerRows] = []
        for index, raw in enumerate(page.customers):
            try:
                rows.append(customer_to_rows(parse_customer(raw)))
            except CustomerValidationError as exc:
                self._reject(Rejection(f"customers[{index}] on {page.where}", str(exc)))
        report.listed += len(page.customers)
        ids = [_id(c) for c in page.customers if _id(c)]
        if report.dry_run:
            self._compare(rows)
            if note_listed:
                self.listed_ids.update(ids)
        else:
            state = self.state

            def write(session: Session) -> list[UpsertOutcome]:
                outcomes = CustomerRepository(session).upsert_rows(rows)
                if note_listed:
                    remember_listed(session, state.api_url, ids)
                save_mirror_state(session, state)
                return outcomes

            for outcome in self._commit(write):
                setattr(report, outcome.value, getattr(report, outcome.value) + 1)
        if self.on_progress is not None:
            self.on_progress(report)

    def _compare(self, rows: list[CustomerRows]) -> None:
        if not rows:
            return
        ids = [r.id for r in rows]
        # Tombstones a payload would not clear (the rule of the upsert itself).
        blocking = or_(*(
            and_(tombstones.c.customer_id == r.id, ~older_tombstone(r.version_at)) for r in rows
        ))
        with self.sessions() as session:
            stored = {cid: version for cid, version in session.execute(
                select(customers.c.id, customers.c.version_at).where(customers.c.id.in_(ids))
            )}
            blocked = set(session.scalars(select(tombstones.c.customer_id).where(blocking)))
        for rows_ in rows:
            if rows_.id in stored:
                version = stored[rows_.id]
                if version is None or (
                    rows_.version_at is not None and rows_.version_at > version
                ):
                    self.report.newer += 1
            elif rows_.id not in blocked:
                self.report.new += 1

    def _check_complete(self) -> None:
        """Refuse the sweep unless the listing saw as many customers as the API reported."""
        if self.report.dry_run:
            seen = len(self.listed_ids)
        else:
            with self.sessions() as session:
                seen = count_listed(session, self.state.api_url)
        reason = incomplete_listing(seen, self.listing_total)
        if reason is not None:
            self._refuse(None, reason)

    def _check_bound(self, started: datetime) -> None:
        """Refuse the sweep when it would delete more than ``max_deletions`` customers."""
        if self.report.dry_run:
            return  # it deletes nothing: its ``missing`` says how many
        with self.sessions() as session:
            reason = excess_deletions(session, self.state.api_url, started, self.max_deletions)
        if reason is not None:
            self._refuse(started, reason)

    def _refuse(self, complete_at: datetime | None, reason: str) -> NoReturn:
        """Give up the sweep, deleting nothing: the listing is closed (the next full run
        lists again); ``complete_at``, the start of a listing found complete, is the
        checkpoint the next incremental run goes on from (else the old one stays)."""
        state = self.state
        if not self.report.dry_run:
            if complete_at is not None:
                state.created_cursor = state.updated_cursor = complete_at
            state.listing_started_at = state.listing_cursor = state.listing_sweeps = None

            def close(session: Session) -> None:
                forget_listed(session, state.api_url)
                save_mirror_state(session, state)

            self._commit(close)
        raise SweepRefused(reason)

    def _sweep(self, started: datetime) -> int:
        """Delete what the completed listing did not see (dry run: count it)."""
        if self.report.dry_run:
            with self.sessions() as session:
                self.report.missing += missing_from(session, started, self.listed_ids)
            return 0
        return delete_unlisted(self.sessions, self.state.api_url, started)

    def _finish(self, *, clear_listed: bool) -> None:
        if self.report.dry_run:
            return
        state = self.state
        state.last_success_at = datetime.now(UTC)
        state.last_repaired = self.report.repaired

        def finish(session: Session) -> None:
            if clear_listed:
                forget_listed(session, state.api_url)
            save_mirror_state(session, state)

        self._commit(finish)

    def _reject(self, rejection: Rejection) -> None:
        self.report.rejected += 1
        if self.on_reject is not None:
            self.on_reject(rejection)
        else:
            self.report.rejections.append(rejection)

    def _commit(self, work: Callable[[Session], T]) -> T:
        return run_in_transaction(self.sessions, work)


def _trusted(cursor: datetime | None) -> bool:
    """Whether a stored checkpoint can be gone on from: one in the future (written before
    checkpoints were held back to the clock) would skip every change until it; the run
    lists everything again instead, as a first run does."""
    return cursor is not None and cursor <= datetime.now(UTC) + _CLOCK_SKEW


def _id(customer: Any) -> str:
    value = customer.get("id") if isinstance(customer, dict) else None
    return value if isinstance(value, str) else ""


def _stamp(customer: Any, order: str) -> datetime | None:
    value = customer.get(order) if isinstance(customer, dict) else None
    try:
        return parse_datetime(value) if value is not None else None
    except (TypeError, ValueError):
        return None


def _check_forward(
    stamps: list[datetime | None], cursor: datetime | None, order: str, where: str
) -> None:
    """Stop a page that does not move forward: its customers must come after the cursor
    (``starting_after`` is strict), in ascending order, the ones without ``order`` last."""
    low, strict, undated = cursor, True, False
    for index, stamp in enumerate(stamps):
        if stamp is None:
            undated = True
            continue
        if undated or (low is not None and (stamp < low or (strict and stamp == low))):
            raise ApiUnavailable(
                f"the listing went backwards on {where}: customers[{index}]'s {order} "
                f"{format_datetime(stamp)} is not after the cursor or the customer before "
                "it: stopped"
            )
        low, strict = stamp, False


def _checkpoint(stamps: list[datetime | None]) -> datetime | None:
    known = [s for s in stamps if s is not None]
    return max(known) if known else None
