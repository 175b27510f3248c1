"""The webhook event log: recorded deliveries, listed and counted, and rejected ones
processed again.

Recording a delivery is :mod:`repository.ingest`'s work; this module reads what it left.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from typing import cast

from sqlalchemy import Table, func, select
from sqlalchemy.orm import Session, sessionmaker

from models.events import EventOutcome, WebhookEventRow
from repository.ingest import IngestResult, MalformedDelivery, ingest_delivery, is_forgotten

__all__ = ["count_events", "list_events", "replay_rejected"]

_events = cast(Table, WebhookEventRow.__table__)


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
        select(_events.c.outcome, func.count(), func.sum(_events.c.deliveries - 1))
        .group_by(_events.c.outcome)
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
    after = ""
    while True:
        with sessions() as session:
            page = session.execute(
                select(_events.c.event_id, _events.c.body)
                .where(_events.c.outcome == EventOutcome.REJECTED.value)
                .where(_events.c.event_id > after)
                # Recorded without a body: there is nothing to process again.
                .where(~is_forgotten(_events.c.customer_id))
                .order_by(_events.c.event_id)
                .limit(100)
            ).all()
        if not page:
            return
        for event_id, body in page:
            yield event_id, bytes(body)
        after = page[-1][0]
