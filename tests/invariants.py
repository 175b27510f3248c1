"""Invariants every database of the customer store keeps, whatever was fed into it.

:func:`check_invariants` reads a database directly and returns the list of what is wrong
(empty when all is well); :func:`assert_invariants` fails with that list. The checks:

- no child row (address, loyalty campaign, referral entry) without its customer;
- no live customer with a tombstone at least as new as the customer's version (a version
  newer than the deletion clears the tombstone; a customer without a version never
  outlives one);
- every stored customer reassembles, by ``repo.get`` and by ``repo.iter_all`` alike, and
  its JSON validates again into the same JSON (``parse_customer(c.to_dict())``);
- every ``webhook_events`` row has an outcome a row may have, at least one delivery, an
  error exactly when rejected, and its raw body: an envelope whose event id is the row's.
"""

from __future__ import annotations

import json
from typing import Any, cast

from sqlalchemy import Engine, Table, exists, not_, or_, select
from sqlalchemy.orm import Session

from models import CustomerValidationError, parse_customer
from models.events import EventOutcome, WebhookEventRow
from models.tables import (
    CustomerAddressRow,
    CustomerRow,
    CustomerTombstoneRow,
    LoyaltyCampaignRow,
    ReferralEntryRow,
)
from models.webhook import MalformedDelivery, parse_envelope
from repository import CustomerRepository

__all__ = ["assert_invariants", "check_invariants"]

_customers = cast(Table, CustomerRow.__table__)
_tombstones = cast(Table, CustomerTombstoneRow.__table__)
_events = cast(Table, WebhookEventRow.__table__)
_CHILDREN = [
    cast(Table, row.__table__) for row in (CustomerAddressRow, LoyaltyCampaignRow, ReferralEntryRow)
]
_ROW_OUTCOMES = {o.value for o in EventOutcome if o is not EventOutcome.DUPLICATE}


def check_invariants(engine: Engine) -> list[str]:
    """Everything wrong with the database behind ``engine`` (empty list: nothing)."""
    problems: list[str] = []
    with Session(engine) as session:
        problems += _orphans(session)
        problems += _revived(session)
        problems += _customers_reassemble(session)
        problems += _events_are_whole(session)
        session.rollback()
    return problems


def assert_invariants(engine: Engine) -> None:
    problems = check_invariants(engine)
    assert not problems, "database invariants broken:\n" + "\n".join(problems[:50])


def _orphans(session: Session) -> list[str]:
    problems = []
    for table in _CHILDREN:
        orphans = session.execute(
            select(table.c.customer_id)
            .where(not_(exists().where(_customers.c.id == table.c.customer_id)))
            .limit(10)
        ).scalars().all()
        problems += [f"{table.name}: row of missing customer {cid!r}" for cid in orphans]
    return problems


def _revived(session: Session) -> list[str]:
    rows = session.execute(
        select(_customers.c.id, _customers.c.version_at, _tombstones.c.deleted_at)
        .join(_tombstones, _tombstones.c.customer_id == _customers.c.id)
        .where(or_(
            _customers.c.version_at.is_(None),
            _tombstones.c.deleted_at >= _customers.c.version_at,
        ))
        .limit(10)
    ).all()
    return [
        f"customer {cid!r} (version {version}) is live despite a tombstone at {deleted}"
        for cid, version, deleted in rows
    ]


def _customers_reassemble(session: Session) -> list[str]:
    problems = []
    repo = CustomerRepository(session)
    ids = list(session.execute(select(_customers.c.id).order_by(_customers.c.id)).scalars())
    try:
        iterated = {c.id: c.to_dict() for c in repo.iter_all(batch_size=7)}
    except Exception as exc:  # what is stored must read back; say why it does not
        problems.append(f"iter_all fails: {type(exc).__name__}: {str(exc)[:300]}")
        iterated = {}
    else:
        if sorted(iterated) != ids:
            problems.append(f"iter_all gave {len(iterated)} customers for {len(ids)} rows")
    for customer_id in ids:
        where = f"customer {customer_id!r}"
        try:
            fetched = repo.get(customer_id)
        except Exception as exc:
            problems.append(f"{where}: get fails: {type(exc).__name__}: {str(exc)[:300]}")
            continue
        if fetched is None:
            problems.append(f"{where}: get finds nothing")
            continue
        as_json = fetched.to_dict()
        if iterated and iterated.get(customer_id) != as_json:
            problems.append(f"{where}: get differs from iter_all")
        try:
            again = parse_customer(json.loads(json.dumps(as_json))).to_dict()
        except CustomerValidationError as exc:
            problems.append(f"{where}: stored JSON does not validate: {str(exc)[:300]}")
            continue
        if again != as_json:
            problems.append(f"{where}: JSON changes when validated again")
    return problems


def _events_are_whole(session: Session) -> list[str]:
    problems = []
    forgotten = set(session.execute(
        select(_tombstones.c.customer_id).where(_tombstones.c.forgotten.is_(True))
    ).scalars())
    rows = session.execute(
        select(_events.c.event_id, _events.c.outcome, _events.c.deliveries, _events.c.error,
               _events.c.body, _events.c.customer_id)
    ).all()
    for event_id, outcome, deliveries, error, body, customer_id in rows:
        where = f"webhook event {event_id!r}"
        if outcome not in _ROW_OUTCOMES:
            problems.append(f"{where}: outcome {outcome!r}")
        if deliveries is None or deliveries < 1:
            problems.append(f"{where}: {deliveries} deliveries")
        if (outcome == EventOutcome.REJECTED.value) != bool(error):
            problems.append(f"{where}: outcome {outcome} with error {error!r}")
        if customer_id in forgotten and not bytes(body):
            continue  # erased on request: the body is kept empty on purpose
        problems += _body_problem(where, event_id, body)
    return problems


def _body_problem(where: str, event_id: str, body: Any) -> list[str]:
    if not isinstance(body, bytes | bytearray | memoryview) or not bytes(body):
        return [f"{where}: no body stored"]
    try:
        envelope = parse_envelope(bytes(body))
    except MalformedDelivery as exc:
        return [f"{where}: the stored body is not an envelope: {exc}"]
    if envelope.event_id != event_id:
        return [f"{where}: the stored body is the envelope of {envelope.event_id!r}"]
    return []
