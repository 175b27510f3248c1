"""Forgetting a customer (erasure on request): rows, child rows and raw webhook bodies.

What remains is a tombstone with the Voucherify id and a time, nothing personal, marked
``forgotten``: no later payload stores the customer again, however new, and a webhook
delivered later about it is recorded without its body (see repository.ingest).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime
from typing import Any, cast

from sqlalchemy import ColumnElement, Table, delete, func, or_, select, update
from sqlalchemy.orm import Session

from models.events import WebhookEventRow
from models.tables import CustomerTombstoneRow
from repository.customers import CustomerRepository, DeleteOutcome

__all__ = ["ErasureReport", "forget_customer"]

_events = cast(Table, WebhookEventRow.__table__)
_tombstones = cast(Table, CustomerTombstoneRow.__table__)

#: Identifiers searched for in raw event bodies; short ones would match unrelated bodies.
_MIN_NEEDLE = 5


@dataclass(frozen=True)
class ErasureReport:
    customer_removed: bool
    events_removed: int


def forget_customer(session: Session, customer_id: str, *, forgotten_at: datetime) -> ErasureReport:
    """Remove the customer, its child rows and every raw event body that mentions it.

    Bodies are matched by the customer id and by the identifiers known for it (email,
    source_id, phone) from the stored row and from its own events, both as written by
    Voucherify and with JSON escapes.
    """
    repo = CustomerRepository(session)
    stored = repo.get(customer_id)
    needles = {customer_id}
    if stored is not None:
        needles.update(_identifiers(stored.to_json()))
    for (body,) in session.execute(
        select(_events.c.body).where(_events.c.customer_id == customer_id)
    ):
        needles.update(_identifiers_in_body(bytes(body), customer_id))
    removed = repo.delete(customer_id, deleted_at=forgotten_at)
    session.execute(
        update(_tombstones).where(_tombstones.c.customer_id == customer_id).values(forgotten=True)
    )
    matches: list[ColumnElement[bool]] = [_events.c.customer_id == customer_id]
    for needle in sorted(needles):
        for form in _encodings(needle):
            matches.append(_contains(session, form))
    removed_events = session.execute(
        delete(_events).where(or_(*matches)).returning(_events.c.event_id)
    ).all()
    return ErasureReport(
        customer_removed=removed is DeleteOutcome.REMOVED, events_removed=len(removed_events)
    )


def _identifiers(customer: dict[str, Any]) -> set[str]:
    found = set()
    for key in ("email", "source_id", "phone"):
        value = customer.get(key)
        if isinstance(value, str) and len(value) >= _MIN_NEEDLE:
            found.add(value)
    return found


def _identifiers_in_body(body: bytes, customer_id: str) -> set[str]:
    try:
        document = json.loads(body)
    except ValueError:
        return set()
    data = document.get("data") if isinstance(document, dict) else None
    customer = data.get("customer") if isinstance(data, dict) else None
    if isinstance(customer, dict) and customer.get("id") == customer_id:
        return _identifiers(customer)
    return set()


def _encodings(needle: str) -> set[bytes]:
    """The byte forms a string takes inside a JSON body: raw UTF-8 and ASCII-escaped."""
    return {
        json.dumps(needle, ensure_ascii=False)[1:-1].encode("utf-8"),
        json.dumps(needle, ensure_ascii=True)[1:-1].encode("ascii"),
    }


def _contains(session: Session, needle: bytes) -> ColumnElement[bool]:
    if session.get_bind().dialect.name == "postgresql":
        # bytea LIKE; "!" escapes, since a backslash is special in bytea literals.
        escaped = needle.replace(b"!", b"!!").replace(b"%", b"!%").replace(b"_", b"!_")
        return _events.c.body.like(b"%" + escaped + b"%", escape="!")
    return func.instr(_events.c.body, needle) > 0
