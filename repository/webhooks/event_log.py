"""The webhook event log: recorded deliveries, listed and counted, rejected ones
processed again, and old ones pruned.

Recording a delivery is :mod:`repository.webhooks.ingest`'s work; this module reads what it left.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from datetime import datetime
from functools import partial
from operator import attrgetter, itemgetter
from typing import Any, TypeVar

from sqlalchemy import ColumnElement, Select, and_, delete, func, select
from sqlalchemy.orm import Session, make_transient_to_detached, sessionmaker

from models.events import EventOutcome, WebhookEventRow
from repository.db.keyset import check_page_size, keyset_pages
from repository.db.retry import run_in_transaction
from repository.db.tables import events
from repository.webhooks.ingest import (
    IngestResult,
    MalformedDelivery,
    ingest_delivery,
    is_forgotten,
)

__all__ = ["count_events", "iter_events", "list_events", "prune_events", "replay_rejected"]

_PAGE = 100

S = TypeVar("S", bound="Select[Any]")


def iter_events(
    session: Session, *, outcome: EventOutcome | None = None, page_size: int = 500
) -> Iterator[WebhookEventRow]:
    """Every recorded event (of ``outcome``) ordered by event id, read in keyset pages.

    The events are read as plain rows and handed out detached: the session keeps none of
    them, so memory stays flat, and nothing the caller holds in it is touched."""
    check_page_size("page_size", page_size)
    def fetch(after: str | None) -> list[WebhookEventRow]:
        query = _events_query(select(events), outcome=outcome, after=after, limit=page_size)
        return [_detached(row._mapping) for row in session.execute(query)]

    for page in keyset_pages(fetch, attrgetter("event_id"), size=page_size):
        yield from page


def list_events(
    session: Session,
    *,
    outcome: EventOutcome | None = None,
    after: str | None = None,
    limit: int = 100,
) -> Sequence[WebhookEventRow]:
    """Recorded events ordered by event id, a page at a time (``after`` = last id seen)."""
    query = _events_query(select(WebhookEventRow), outcome=outcome, after=after, limit=limit)
    return session.scalars(query).all()


def _events_query(
    query: S, *, outcome: EventOutcome | None, after: str | None, limit: int
) -> S:
    query = query.order_by(events.c.event_id).limit(limit)
    if outcome is EventOutcome.DUPLICATE:
        query = query.where(events.c.deliveries > 1)
    elif outcome is not None:
        query = query.where(events.c.outcome == outcome.value)
    if after is not None:
        query = query.where(events.c.event_id > after)
    return query


def _detached(values: Mapping[Any, Any]) -> WebhookEventRow:
    """An event row built from column values, detached as if loaded and expunged."""
    event = WebhookEventRow(**values)
    make_transient_to_detached(event)
    return event


def count_events(
    session: Session, *, received_before: datetime | None = None
) -> dict[str, int]:
    """How many recorded events have each outcome, and how many redeliveries were duplicates;
    with ``received_before``, only events last received before that time (what
    :func:`prune_events` would take)."""
    query = select(events.c.outcome, func.count(), func.sum(events.c.deliveries - 1))
    if received_before is not None:
        query = query.where(events.c.last_received_at < _aware(received_before))
    rows = session.execute(query.group_by(events.c.outcome)).all()
    counts = {outcome: int(n) for outcome, n, _ in rows}
    counts[EventOutcome.DUPLICATE.value] = sum(int(d or 0) for _, _, d in rows)
    return counts


def prune_events(
    sessions: sessionmaker[Session],
    *,
    older_than: datetime,
    include_rejected: bool = False,
    batch_size: int = 1000,
    on_progress: Callable[[int], None] | None = None,
) -> int:
    """Delete the recorded events last received before ``older_than`` (keeping ``rejected``
    ones, which ``replay`` may still need, unless ``include_rejected``); the number deleted.

    The log is walked once in event id order, ``batch_size`` events per transaction, so
    no lock is held for long and deliveries go on meanwhile. A batch is a range of event
    ids: the ids are read first (without locking), then the range is deleted with the
    conditions checked again, so an event delivered again in between is kept.
    ``on_progress`` is called with the running total after each batch.

    An event delivered again after it was pruned is processed again, as if new: the
    newest-wins rule makes that harmless for customer changes.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    cutoff = _aware(older_than)
    condition = events.c.last_received_at < cutoff
    if not include_rejected:
        condition = and_(condition, events.c.outcome != EventOutcome.REJECTED.value)
    pruned = 0

    def prune_after(after: str | None) -> list[str]:
        nonlocal pruned
        batch = partial(_prune_batch, condition=condition, after=after, batch_size=batch_size)
        seen, deleted = run_in_transaction(sessions, batch)
        pruned += deleted
        if on_progress is not None and seen:
            on_progress(pruned)
        return seen

    for _ in keyset_pages(prune_after, str, size=batch_size):
        pass
    return pruned


def _prune_batch(
    session: Session,
    *,
    condition: ColumnElement[bool],
    after: str | None,
    batch_size: int,
) -> tuple[list[str], int]:
    """Delete the next ``batch_size`` events meeting ``condition`` after the id ``after``:
    the ids of the range, in order, and how many were deleted."""
    window = select(events.c.event_id).where(condition)
    if after is not None:
        window = window.where(events.c.event_id > after)
    seen = list(session.scalars(window.order_by(events.c.event_id).limit(batch_size)))
    if not seen:
        return [], 0
    in_range = events.c.event_id <= seen[-1]
    if after is not None:
        in_range = and_(events.c.event_id > after, in_range)
    result = session.execute(delete(events).where(in_range, condition))
    return seen, int(result.rowcount or 0)  # type: ignore[attr-defined]


def _aware(moment: datetime) -> datetime:
    if moment.tzinfo is None:
        raise ValueError("naive datetime: give a time zone")
    return moment


def replay_rejected(
    sessions: sessionmaker[Session],
    *,
    on_result: Callable[[IngestResult], None] | None = None,
) -> list[IngestResult]:
    """Process every recorded ``rejected`` event again (after a fix), from its raw body;
    events of forgotten customers are left alone (their bodies were erased)."""
    results: list[IngestResult] = []
    for event_id, body in _rejected_bodies(sessions):
        try:
            result = ingest_delivery(sessions, body, count_delivery=False)
        except MalformedDelivery as exc:  # recorded once, so only a changed parser gets here
            result = IngestResult(event_id, EventOutcome.REJECTED, error=str(exc))
        results.append(result)
        if on_result is not None:
            on_result(result)
    return results


def _rejected_bodies(sessions: sessionmaker[Session]) -> Iterator[tuple[str, bytes]]:
    def fetch(after: str | None) -> Sequence[Any]:
        query = (
            select(events.c.event_id, events.c.body)
            .where(events.c.outcome == EventOutcome.REJECTED.value)
            # Recorded without a body: there is nothing to process again.
            .where(~is_forgotten(events.c.customer_id))
            .order_by(events.c.event_id)
            .limit(_PAGE)
        )
        if after is not None:
            query = query.where(events.c.event_id > after)
        # A session per page: processing an event commits, and must not wait on this read.
        with sessions() as session:
            return session.execute(query).all()

    for page in keyset_pages(fetch, itemgetter(0), size=_PAGE):
        for event_id, body in page:
            yield event_id, bytes(body)
