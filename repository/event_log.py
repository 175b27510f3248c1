"""The webhook event log: recorded deliveries, listed and counted, and rejected ones
processed again.

Recording a delivery is :mod:`repository.ingest`'s work; this module reads what it left.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from functools import partial
from operator import attrgetter, itemgetter
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from models.events import EventOutcome, WebhookEventRow
from repository.ingest import IngestResult, MalformedDelivery, ingest_delivery, is_forgotten
from repository.keyset import keyset_pages
from repository.tables import events

__all__ = ["count_events", "iter_events", "list_events", "replay_rejected"]

_PAGE = 100


def iter_events(
    session: Session, *, outcome: EventOutcome | None = None, page_size: int = 500
) -> Iterator[WebhookEventRow]:
    """Every recorded event (of ``outcome``) ordered by event id, read in keyset pages;
    rows already yielded are expunged so memory stays flat."""
    fetch = partial(list_events, session, outcome=outcome, limit=page_size)
    for page in keyset_pages(
        lambda after: fetch(after=after), attrgetter("event_id"), size=page_size
    ):
        yield from page
        session.expunge_all()


def list_events(
    session: Session,
    *,
    outcome: EventOutcome | None = None,
    after: str | None = None,
    limit: int = 100,
) -> Sequence[WebhookEventRow]:
    """Recorded events ordered by event id, a page at a time (``after`` = last id seen)."""
    query = select(WebhookEventRow).order_by(WebhookEventRow.event_id).limit(limit)
    if outcome is EventOutcome.DUPLICATE:
        query = query.where(WebhookEventRow.deliveries > 1)
    elif outcome is not None:
        query = query.where(WebhookEventRow.outcome == outcome.value)
    if after is not None:
        query = query.where(WebhookEventRow.event_id > after)
    return session.scalars(query).all()


def count_events(session: Session) -> dict[str, int]:
    """How many recorded events have each outcome, and how many redeliveries were duplicates."""
    rows = session.execute(
        select(events.c.outcome, func.count(), func.sum(events.c.deliveries - 1))
        .group_by(events.c.outcome)
    ).all()
    counts = {outcome: int(n) for outcome, n, _ in rows}
    counts[EventOutcome.DUPLICATE.value] = sum(int(d or 0) for _, _, d in rows)
    return counts


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
