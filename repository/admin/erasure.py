"""Forgetting a customer (erasure on request): rows, child rows and raw webhook bodies.

What remains is a tombstone with the Voucherify id and a time, nothing personal, marked
``forgotten``: no later payload stores the customer again, however new, and a webhook
delivered later about it is recorded without its body or error text (see
repository.webhooks.ingest).

Other customers' events are removed only when they hold one of the forgotten customer's
identifiers as a whole JSON string value (its id, email ignoring case, source_id, phone):
never by substring, so that forgetting ``cust_Ann`` keeps the events of ``cust_JoAnn`` and
a source_id ``10000`` does not match an amount of 10000.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from operator import itemgetter
from typing import Any

from sqlalchemy import delete, or_, select, update
from sqlalchemy.orm import Session

from models.ids import InvalidCustomerId, require_customer_id
from models.json_decoding import loads_json
from repository.db.keyset import keyset_pages
from repository.db.locks import lock_customers
from repository.db.tables import events, tombstones
from repository.store.customers import CustomerRepository, DeleteOutcome
from repository.store.mapping import fold

__all__ = [
    "ErasureReport",
    "InvalidCustomerId",
    "forget_customer",
    "require_customer_id",
]

#: Ids, emails, source_ids and phones shorter than this are too common to be searched for
#: in other customers' events (the customer's own events go whatever they hold).
_MIN_IDENTIFIER = 5
_SCAN_PAGE = 500


@dataclass(frozen=True)
class ErasureReport:
    customer_removed: bool
    events_removed: int


@dataclass
class _Identifiers:
    """What names the customer in a JSON body: whole string values, emails compared as
    search compares them (:func:`repository.store.mapping.fold`)."""

    exact: set[str]
    emails: set[str] = field(default_factory=set)

    def learn(self, customer: Any) -> None:
        if not isinstance(customer, dict):
            return
        for key in ("source_id", "phone"):
            value = customer.get(key)
            if isinstance(value, str) and len(value) >= _MIN_IDENTIFIER:
                self.exact.add(value)
        email = customer.get("email")
        if isinstance(email, str) and len(email) >= _MIN_IDENTIFIER:
            self.emails.add(fold(email))

    def may_be_in(self, text: str) -> bool:
        """A quick screen that never misses a body :meth:`is_in` would find."""
        # Escapes can spell any value (\u0041 for A): only parsing can tell.
        return "\\" in text or self._mentioned(text)

    def is_in(self, text: str) -> bool:
        try:
            document = loads_json(text)
        except (ValueError, RecursionError):
            return self._mentioned(text)  # not JSON (never recorded so): by its text
        return any(self._names(value) for value in _string_values(document))

    def _mentioned(self, text: str) -> bool:
        folded = fold(text)
        return any(fold(value) in folded for value in self.exact | self.emails)

    def _names(self, value: str) -> bool:
        return value in self.exact or fold(value) in self.emails


def forget_customer(
    session: Session,
    customer_id: str,
    *,
    forgotten_at: datetime,
    on_progress: Callable[[int], None] | None = None,
) -> ErasureReport:
    """Remove the customer, its child rows, its events, and every other event whose body
    names it (see the module docstring); ``on_progress`` gets the number of bodies read.
    Any id a customer can be stored with can be forgotten (:mod:`models.ids`); another
    raises :class:`InvalidCustomerId`.

    The identifiers come from the stored row and from the customer's own events.
    """
    require_customer_id(customer_id)
    # Taken first: a delivery about this customer committing meanwhile would be missed.
    lock_customers(session, [customer_id])
    # An id as short as the values too common to search for (possible outside Voucherify's
    # own ids) would match unrelated events: the customer's own events go all the same.
    identifiers = _Identifiers({customer_id} if len(customer_id) >= _MIN_IDENTIFIER else set())
    repo = CustomerRepository(session)
    stored = repo.get(customer_id)
    if stored is not None:
        identifiers.learn(stored.to_dict())
    for (body,) in session.execute(
        select(events.c.body).where(events.c.customer_id == customer_id)
    ):
        identifiers.learn(_customer_in(bytes(body), customer_id))
    removed = repo.delete(customer_id, deleted_at=forgotten_at)
    session.execute(
        update(tombstones).where(tombstones.c.customer_id == customer_id).values(forgotten=True)
    )
    own = session.execute(
        delete(events).where(events.c.customer_id == customer_id).returning(events.c.event_id)
    ).all()
    others = _events_naming(session, customer_id, identifiers, on_progress)
    for start in range(0, len(others), _SCAN_PAGE):
        chunk = others[start : start + _SCAN_PAGE]
        session.execute(delete(events).where(events.c.event_id.in_(chunk)))
    return ErasureReport(
        customer_removed=removed is DeleteOutcome.REMOVED, events_removed=len(own) + len(others)
    )


def _events_naming(
    session: Session,
    customer_id: str,
    identifiers: _Identifiers,
    on_progress: Callable[[int], None] | None,
) -> list[str]:
    """Ids of other events whose bodies name the customer, read a page at a time."""
    others = or_(events.c.customer_id != customer_id, events.c.customer_id.is_(None))

    def fetch(after: str | None) -> Sequence[Any]:
        query = select(events.c.event_id, events.c.body).where(others)
        if after is not None:
            query = query.where(events.c.event_id > after)
        return session.execute(query.order_by(events.c.event_id).limit(_SCAN_PAGE)).all()

    found: list[str] = []
    scanned = 0
    for page in keyset_pages(fetch, itemgetter(0), size=_SCAN_PAGE):
        for event_id, body in page:
            text = _stored_text(bytes(body))
            if text and identifiers.may_be_in(text) and identifiers.is_in(text):
                found.append(event_id)
        scanned += len(page)
        if on_progress is not None:
            on_progress(scanned)
    return found


def _stored_text(body: bytes) -> str:
    """A recorded body as text. The receiver takes UTF-8 only (models.json_decoding), but
    bodies recorded before it refused UTF-16 and UTF-32 are read in their own encoding, so
    that the customer's data is found in them too."""
    return body.decode(json.detect_encoding(body), "replace")


def _customer_in(body: bytes, customer_id: str) -> Any:
    try:
        document = loads_json(_stored_text(body))
    except (ValueError, RecursionError):
        return None
    data = document.get("data") if isinstance(document, dict) else None
    customer = data.get("customer") if isinstance(data, dict) else None
    return customer if isinstance(customer, dict) and customer.get("id") == customer_id else None


def _string_values(document: Any) -> Iterator[str]:
    stack = [document]
    while stack:
        value = stack.pop()
        if isinstance(value, str):
            yield value
        elif isinstance(value, dict):
            stack.extend(value.values())
        elif isinstance(value, list):
            stack.extend(value)
