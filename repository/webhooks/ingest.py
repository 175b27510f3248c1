"""Webhook ingestion: at-least-once, out-of-order deliveries stored exactly once.

Every delivery with an event id is recorded in ``webhook_events`` with its raw body. The
event row is claimed with a native upsert before anything else happens: the first
delivery inserts it, a redelivery of a rejected event takes it over, and any other
redelivery finds it taken and is a duplicate. The claim, the customer change and the
outcome commit together, so a crash leaves either all of them or none.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import partial
from typing import Any

from sqlalchemy import ColumnElement, LargeBinary, and_, bindparam, case, literal, select, update
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from sqlalchemy.orm import Session, sessionmaker
from sqlalchemy.sql.expression import Executable

from models.errors import CustomerValidationError
from models.events import EventOutcome
from models.ids import customer_id_problem
from models.validation import parse_customer
from models.webhook import CUSTOMER_CHANGE_EVENTS, Envelope, MalformedDelivery, parse_envelope
from models.wire import parse_datetime
from repository.db.backends import Backend, backend_of
from repository.db.driver import Sent, fetch_first, pipelined, send
from repository.db.locks import lock_customers
from repository.db.retry import (
    RetryListener,
    database_refusal,
    run_in_transaction,
    run_in_transaction_async,
)
from repository.db.tables import events, tombstones
from repository.db.warm_up import hot_statements
from repository.store.customers import CustomerRepository, DeleteOutcome, UpsertOutcome
from repository.store.mapping import CustomerRows, customer_to_rows
from repository.store.off_loop import INLINE_BODY_BYTES, off_loop

__all__ = [
    "DEFAULT_DELIVERY_TIMEOUT",
    "DEFAULT_MAX_BODY_BYTES",
    "IngestResult",
    "MalformedDelivery",
    "ingest",
    "ingest_delivery",
    "ingest_delivery_async",
    "ingest_or_record_refusal",
    "is_forgotten",
]

#: Seconds the receiver gives one delivery, lock waits and retries included. Voucherify
#: counts an answer that takes more than 10 s as a failed sendout; this leaves room for
#: the network and for reading the body.
DEFAULT_DELIVERY_TIMEOUT = 5.0
#: The largest body the receiver takes by default: Voucherify's are a few kilobytes.
DEFAULT_MAX_BODY_BYTES = 1024 * 1024

#: What an event about a forgotten customer keeps of its error.
ERASED_ERROR = "rejected; the details were erased with the customer (forget)"


@dataclass(frozen=True)
class IngestResult:
    """What one delivery did."""

    event_id: str
    outcome: EventOutcome
    event_type: str | None = None
    customer_id: str | None = None
    error: str | None = None


@dataclass(frozen=True)
class _Upsert:
    rows: CustomerRows


@dataclass(frozen=True)
class _Delete:
    customer_id: str
    deleted_at: datetime


@dataclass(frozen=True)
class _Ignore:
    pass


@dataclass(frozen=True)
class _Reject:
    error: str


_Action = _Upsert | _Delete | _Ignore | _Reject


def ingest(
    session: Session,
    body: bytes,
    *,
    received_at: datetime | None = None,
    count_delivery: bool = True,
    refused: str | None = None,
) -> IngestResult:
    """Record and process one delivery in the caller's transaction.

    Raises :class:`MalformedDelivery` (and records nothing) when the body is not a JSON
    object with an event id. With ``refused`` (why the database refused the delivery's
    change), it is recorded as rejected with that error, and nothing else is written.
    """
    return _record(
        session, _read(body, refused), body,
        received_at=received_at, count_delivery=count_delivery,
    )


@dataclass(frozen=True)
class _Delivery:
    """A body read and validated: what it is, and what it asks for."""

    envelope: Envelope
    action: _Action


def _read(body: bytes, refused: str | None = None) -> _Delivery:
    """Read and validate a delivery's body (:class:`MalformedDelivery` if it cannot be),
    before any transaction: once, whatever the retries, and off the loop for a large one
    (:func:`ingest_delivery_async`)."""
    envelope = parse_envelope(body)
    return _Delivery(envelope, _Reject(refused) if refused is not None else _plan(envelope))


def _record(
    session: Session,
    delivery: _Delivery,
    body: bytes,
    *,
    received_at: datetime | None,
    count_delivery: bool,
) -> IngestResult:
    """:func:`ingest` of a delivery already read (:func:`_read`)."""
    envelope, action = delivery.envelope, delivery.action
    now = received_at or datetime.now(UTC)
    provisional = _provisional_outcome(action)
    error = _storable_text(action.error) if isinstance(action, _Reject) else None
    # The transaction's start, the lock and the claim go to the server together: one
    # round trip where each would take its own.
    with pipelined(session.connection()):
        if envelope.customer_id is not None:
            # Before the claim, so that an erasure of this customer (which takes the same
            # lock) either finds this event recorded or is seen by it: the claim, a
            # statement of its own, takes its snapshot once the lock is held.
            lock_customers(session, [envelope.customer_id])
        claim = _claim(session, envelope, body, now, provisional, error, count_delivery)
    row = claim.first()
    if row is None:
        earlier = _own_earlier_attempt(session, envelope, now)
        if earlier is not None:
            return earlier
    claimed = _claimed(session, envelope, row, now, count_delivery)
    if claimed is None:
        return IngestResult(
            envelope.event_id, EventOutcome.DUPLICATE, envelope.event_type, envelope.customer_id
        )
    outcome = _perform(session, action)
    if outcome is not provisional:
        params = {"p_event_id": envelope.event_id, "p_outcome": outcome.value}
        send(session.connection(), _SET_OUTCOME, params).close()
    return IngestResult(
        envelope.event_id, outcome, envelope.event_type, envelope.customer_id, claimed.error
    )


def ingest_delivery(
    sessions: sessionmaker[Session],
    body: bytes,
    *,
    received_at: datetime | None = None,
    count_delivery: bool = True,
    timeout: float | None = None,
    on_retry: RetryListener | None = None,
) -> IngestResult:
    """:func:`ingest` in a transaction of its own, retried when the database asks for it.

    A retry after a COMMIT whose outcome was unknown (the connection lost while it was
    answered) that finds the event recorded by its own earlier attempt reports what that
    attempt did, not a duplicate: every attempt records the same receipt time.

    With ``timeout`` (seconds), lock waits and retries included, it commits within that
    time or raises :class:`~repository.db.retry.DeadlineExceeded` having recorded nothing.
    ``on_retry`` is called with the error before each retry.
    """
    received_at = received_at or datetime.now(UTC)  # one for every attempt
    work = partial(
        _record, delivery=_read(body), body=body,
        received_at=received_at, count_delivery=count_delivery,
    )
    return run_in_transaction(sessions, work, timeout=timeout, on_retry=on_retry)


def ingest_or_record_refusal(sessions: sessionmaker[Session], body: bytes) -> IngestResult:
    """:func:`ingest_delivery`, except that a delivery whose change the database refuses
    (a value it cannot hold, not a transient failure) is recorded as rejected with the
    database's reason, in a transaction of its own: ``replay`` processes it again once the
    cause is mended, and a file of deliveries goes on past it."""
    try:
        return ingest_delivery(sessions, body)
    except DBAPIError as exc:
        reason = database_refusal(exc)
        if reason is None:
            raise
    return run_in_transaction(sessions, partial(ingest, body=body, refused=reason))


async def ingest_delivery_async(
    sessions: async_sessionmaker[AsyncSession],
    body: bytes,
    *,
    received_at: datetime | None = None,
    count_delivery: bool = True,
    timeout: float | None = None,
    on_retry: RetryListener | None = None,
) -> IngestResult:
    """:func:`ingest_delivery` for asyncio: the same transaction, retries, time bound and
    ``on_retry``, awaited on an async session factory.

    The body is read and validated once, before the transaction: on the loop if it is
    small (:data:`~repository.store.off_loop.INLINE_BODY_BYTES`), else in a worker thread.
    A delivery's statements are compiled when the engine is made
    (:mod:`repository.db.warm_up`).
    """
    received_at = received_at or datetime.now(UTC)  # one for every attempt
    delivery = await off_loop(len(body) > INLINE_BODY_BYTES, _read, body)
    work = partial(
        _record, delivery=delivery, body=body,
        received_at=received_at, count_delivery=count_delivery,
    )
    return await run_in_transaction_async(sessions, work, timeout=timeout, on_retry=on_retry)


@hot_statements
def _hot_statements(backend: Backend) -> list[Executable]:
    """What recording a delivery sends through the driver, for building ahead of use."""
    return [
        _claim_statement(backend, True),
        _claim_statement(backend, False),
        _REDELIVERED,
        _OWN_ATTEMPT,
        _SET_OUTCOME,
    ]


def _plan(envelope: Envelope) -> _Action:
    """Decide what the delivery asks for, before touching the database."""
    if envelope.problem is not None:
        return _Reject(envelope.problem)
    if envelope.event_type not in CUSTOMER_CHANGE_EVENTS:
        # Other events may carry a smaller customer; it must not replace the full one.
        return _Ignore()
    customer = envelope.customer
    if not isinstance(customer, dict):
        return _Reject("$.data.customer: expected an object")
    if envelope.event_type == "customer.deleted":
        return _plan_deletion(envelope, customer)
    try:
        return _Upsert(customer_to_rows(parse_customer(customer, source=envelope.text)))
    except CustomerValidationError as exc:
        return _Reject("; ".join(
            f"$.data.customer{e.path[1:]}: {e.message}" for e in exc.errors
        ))


def _plan_deletion(envelope: Envelope, customer: dict[str, Any]) -> _Action:
    customer_id = envelope.customer_id
    if customer_id is None:
        return _Reject(f"$.data.customer.id: {customer_id_problem(customer.get('id'))}")
    times = [envelope.created_at] if envelope.created_at is not None else []
    for key in ("updated_at", "created_at"):
        value = customer.get(key)
        if value is None:
            continue
        try:
            times.append(parse_datetime(value))
        except (TypeError, ValueError) as exc:
            return _Reject(f"$.data.customer.{key}: {str(exc) or 'expected a date-time string'}")
        break
    if not times:
        return _Reject("no time to date the deletion: $.event.created_at is missing")
    # The tombstone is dated at the later of the customer's last change and the event, so
    # that no update of the customer, however late it arrives, outlives the deletion.
    return _Delete(customer_id, max(times))


def _storable_text(text: str) -> str:
    """``text`` with what no text column (or UTF-8 response) can hold escaped: an error may
    quote a key or value of the body, lone surrogates and NULs included."""
    return text.encode("utf-8", "backslashreplace").decode("utf-8").replace("\x00", "\\u0000")


def _provisional_outcome(action: _Action) -> EventOutcome:
    if isinstance(action, _Reject):
        return EventOutcome.REJECTED
    if isinstance(action, _Ignore):
        return EventOutcome.IGNORED
    return EventOutcome.APPLIED


@dataclass(frozen=True)
class _Claimed:
    error: str | None
    """The error as recorded (erased when the customer was forgotten)."""


def _claim(
    session: Session,
    envelope: Envelope,
    body: bytes,
    now: datetime,
    outcome: EventOutcome,
    error: str | None,
    count_delivery: bool,
) -> Sent:
    """Send the claim: insert the event row, or take over a rejected one (its row
    returned); no row if another delivery has it.

    A delivery about a forgotten customer is recorded without its body and error text: both
    may carry the personal data that was erased.
    """
    statement = _claim_statement(backend_of(session), count_delivery)
    return send(session.connection(), statement, {
        "p_event_id": envelope.event_id,
        "p_envelope_id": envelope.envelope_id,
        "p_event_type": envelope.event_type,
        "p_project_id": envelope.project_id,
        "p_customer_id": envelope.customer_id,
        "p_event_created_at": envelope.created_at,
        "p_now": now,
        "p_outcome": outcome.value,
        "p_error": error,
        "p_body": body,
    })


def _claimed(
    session: Session,
    envelope: Envelope,
    row: dict[str, Any] | None,
    now: datetime,
    count_delivery: bool,
) -> _Claimed | None:
    """What the claim's ``row`` says; a redelivery (no row) is counted on the event's row."""
    if row is not None:
        return _Claimed(row["error"])
    if count_delivery:
        params = {"p_event_id": envelope.event_id, "p_now": now}
        send(session.connection(), _REDELIVERED, params).close()
    return None


def _own_earlier_attempt(
    session: Session, envelope: Envelope, now: datetime
) -> IngestResult | None:
    """What an earlier attempt of this very delivery recorded, when the event row holds
    its receipt time (``now``): its COMMIT went through though its answer was lost, and
    this attempt is its retry, not a redelivery."""
    row = fetch_first(session.connection(), _OWN_ATTEMPT, {
        "p_event_id": envelope.event_id, "p_now": now,
    })
    if row is None:
        return None
    return IngestResult(
        envelope.event_id, EventOutcome(row["outcome"]), envelope.event_type,
        envelope.customer_id, row["error"],
    )


@functools.cache
def _claim_statement(backend: Backend, count_delivery: bool) -> Any:
    """The claim of :func:`_claim`, built once: a delivery binds its values to it (named
    ``p_…``: SQLAlchemy keeps the columns' own names for itself)."""
    forgotten = is_forgotten(bindparam("p_customer_id", type_=events.c.customer_id.type))
    body = bindparam("p_body", type_=LargeBinary)
    error = bindparam("p_error", type_=events.c.error.type)
    fields = {
        "envelope_id": bindparam("p_envelope_id", type_=events.c.envelope_id.type),
        "event_type": bindparam("p_event_type", type_=events.c.event_type.type),
        "project_id": bindparam("p_project_id", type_=events.c.project_id.type),
        "customer_id": bindparam("p_customer_id", type_=events.c.customer_id.type),
        "event_created_at": bindparam("p_event_created_at", type_=events.c.event_created_at.type),
        "last_received_at": bindparam("p_now", type_=events.c.last_received_at.type),
        "outcome": bindparam("p_outcome", type_=events.c.outcome.type),
        "error": case((and_(forgotten, error.is_not(None)), literal(ERASED_ERROR)), else_=error),
        "body": case((forgotten, literal(b"", LargeBinary)), else_=body),
    }
    ins = backend.insert(events).values(
        event_id=bindparam("p_event_id", type_=events.c.event_id.type),
        first_received_at=bindparam("p_now", type_=events.c.first_received_at.type),
        deliveries=1,
        **fields,
    )
    deliveries = events.c.deliveries + 1 if count_delivery else events.c.deliveries
    return ins.on_conflict_do_update(
        index_elements=[events.c.event_id],
        set_={**{name: ins.excluded[name] for name in fields}, "deliveries": deliveries},
        where=events.c.outcome == EventOutcome.REJECTED.value,
    ).returning(events.c.error)


_REDELIVERED = (
    update(events)
    .where(events.c.event_id == bindparam("p_event_id"))
    .values(
        deliveries=events.c.deliveries + 1,
        last_received_at=bindparam("p_now", type_=events.c.last_received_at.type),
    )
)
_OWN_ATTEMPT = select(events.c.outcome, events.c.error).where(
    events.c.event_id == bindparam("p_event_id"),
    events.c.last_received_at == bindparam("p_now", type_=events.c.last_received_at.type),
)
_SET_OUTCOME = (
    update(events)
    .where(events.c.event_id == bindparam("p_event_id"))
    .values(outcome=bindparam("p_outcome", type_=events.c.outcome.type))
)


def is_forgotten(customer_id: Any) -> ColumnElement[bool]:
    """Whether the customer was erased on request (``customer_id``: a value or a column)."""
    return (
        select(tombstones.c.customer_id)
        .where(tombstones.c.customer_id == customer_id, tombstones.c.forgotten.is_(True))
        .exists()
    )


#: The event's version is stored (written now, or held already), or it is not: older than
#: what is stored, or about a customer erased on request.
_EVENT_OUTCOMES = {
    UpsertOutcome.APPLIED: EventOutcome.APPLIED,
    UpsertOutcome.UNCHANGED: EventOutcome.APPLIED,
    UpsertOutcome.STALE: EventOutcome.STALE,
    UpsertOutcome.FORGOTTEN: EventOutcome.FORGOTTEN,
}


def _perform(session: Session, action: _Action) -> EventOutcome:
    if isinstance(action, _Reject):
        return EventOutcome.REJECTED
    if isinstance(action, _Ignore):
        return EventOutcome.IGNORED
    repo = CustomerRepository(session)
    if isinstance(action, _Upsert):
        return _EVENT_OUTCOMES[repo.upsert_row(action.rows)]
    deleted = repo.delete(action.customer_id, deleted_at=action.deleted_at)
    return EventOutcome.STALE if deleted is DeleteOutcome.STALE else EventOutcome.APPLIED
