"""Webhook ingestion on both databases, one rule at a time, then whole shuffled streams.

Every delivery goes through ``ingest_delivery`` in its own transaction, as the receiver
and the CLI do; what it left behind is read back in fresh sessions.
"""

from __future__ import annotations

import asyncio
import copy
import itertools
import json
from collections import Counter
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import pytest
from sqlalchemy import Engine, func, select, update
from sqlalchemy.orm import Session, sessionmaker

from models import EventOutcome, MalformedDelivery, WebhookEventRow
from repository import (
    CustomerRepository,
    IngestResult,
    ingest_delivery,
    ingest_delivery_async,
    make_async_session_factory,
)
from repository.admin import forget_customer
from repository.webhooks import count_events, replay_rejected
from tests.aio import APIS
from tests.conftest import load_example_events
from tests.webhook_streams import build_stream, envelope, legacy_envelope

CUSTOMER_ID = "cust_ingest00000000000001"

#: Example events whose customer is outside the documented types (the customer of
#: tests/fixtures/voucherify/customers/07-ariana-patel-customer-updated.json).
REJECTED_EXAMPLE_EVENTS = {
    "04-customer.updated-data.json": "$.data.customer.referrals.campaigns[0]",
}


# -- helpers -------------------------------------------------------------------------


class Deliveries(sessionmaker[Session]):
    """Sync sessions to read with, and the API (sync or async) deliveries go through."""

    deliver: Callable[[bytes], IngestResult]


@pytest.fixture(params=APIS)
def sessions(
    request: pytest.FixtureRequest, engine: Engine, session: Session, runner: asyncio.Runner
) -> sessionmaker[Session]:
    """Sessions of their own per delivery; the ``session`` fixture empties the tables.
    Every test here delivers through ``ingest_delivery`` and ``ingest_delivery_async``."""
    factory = Deliveries(engine, expire_on_commit=False)
    if request.param == "sync":
        factory.deliver = lambda body: ingest_delivery(factory, body)
    else:
        async_sessions = make_async_session_factory(request.getfixturevalue("async_engine"))
        factory.deliver = lambda body: runner.run(ingest_delivery_async(async_sessions, body))
    return factory


def _customer(customer_id: str = CUSTOMER_ID, **fields: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "id": customer_id,
        "source_id": "ada@shop.example",
        "name": "Ada Lovelace",
        "email": "ada@example.com",
        "address": {"city": "London", "country": "GB", "postal_code": None},
        "summary": {"orders": {"total_amount": 5_000_000_000, "total_count": 3}},
        "loyalty": {"points": 10, "campaigns": {"Summer Campaign": {"points": 10}}},
        "referrals": {"total": 1, "campaigns": [{
            "campaign_id": "camp_1", "referrer_id": "cust_ref", "related_object_id": "r_1",
            "related_object_type": "redemption", "date": "2024-01-02T03:04:05.678Z",
        }]},
        "system_metadata": {},
        "created_at": "2024-01-01T00:00:00.000Z",
        "object": "customer",
    }
    base.update(fields)
    return base


def _version(updated_at: str, **fields: Any) -> dict[str, Any]:
    """An updated customer: ``updated_at`` and metadata that tell the versions apart."""
    return _customer(updated_at=updated_at, metadata={"seen": updated_at}, **fields)


_event_numbers = itertools.count(1)


def _body(
    event_type: str,
    customer: dict[str, Any] | None,
    *,
    event_id: str | None = None,
    created_at: str | None = None,
    legacy: bool = False,
    data: dict[str, Any] | None = None,
) -> bytes:
    event_id = event_id or f"evcus_{next(_event_numbers):018x}"
    data = data if data is not None else {"customer": customer}
    if created_at is None:
        created_at = (customer or {}).get("updated_at") or (customer or {}).get(
            "created_at", "2024-06-01T00:00:00.000Z"
        )
    assert isinstance(created_at, str)
    make = legacy_envelope if legacy else envelope
    document = make(event_id, event_type, data, created_at)
    return json.dumps(document, ensure_ascii=False).encode("utf-8")


def _event_id(body: bytes) -> str:
    document = json.loads(body)
    value = document["id"] if document.get("object") == "event" else document["event"]["id"]
    assert isinstance(value, str)
    return value


def _deliver(sessions: sessionmaker[Session], body: bytes) -> IngestResult:
    assert isinstance(sessions, Deliveries)
    return sessions.deliver(body)


def _stored(sessions: sessionmaker[Session], customer_id: str = CUSTOMER_ID) -> Any:
    with sessions() as s:
        found = CustomerRepository(s).get(customer_id)
        return None if found is None else found.to_dict()


def _row(sessions: sessionmaker[Session], event_id: str) -> WebhookEventRow | None:
    with sessions() as s:
        return s.get(WebhookEventRow, event_id)


def _event_rows(sessions: sessionmaker[Session]) -> int:
    with sessions() as s:
        return int(s.scalar(select(func.count()).select_from(WebhookEventRow)) or 0)


def _counts(sessions: sessionmaker[Session]) -> dict[str, int]:
    with sessions() as s:
        return count_events(s)


# -- one rule at a time --------------------------------------------------------------


def test_customer_created_event_stores_the_customer(sessions: sessionmaker[Session]) -> None:
    customer = _customer()
    body = _body("customer.created", customer)

    result = _deliver(sessions, body)

    assert result.outcome is EventOutcome.APPLIED
    assert result.customer_id == CUSTOMER_ID
    assert _stored(sessions) == customer
    row = _row(sessions, _event_id(body))
    assert row is not None
    assert (row.outcome, row.deliveries, row.event_type, row.customer_id) == (
        "applied", 1, "customer.created", CUSTOMER_ID
    )


def test_newer_update_event_replaces_the_stored_customer(
    sessions: sessionmaker[Session],
) -> None:
    _deliver(sessions, _body("customer.created", _customer()))
    newer = _version("2024-02-01T00:00:00.000Z", name="Ada King")

    result = _deliver(sessions, _body("customer.updated", newer))

    assert result.outcome is EventOutcome.APPLIED
    assert _stored(sessions) == newer


def test_older_update_arriving_after_a_newer_one_is_stale_and_changes_nothing(
    sessions: sessionmaker[Session],
) -> None:
    newer = _version("2024-03-01T00:00:00.000Z", name="Ada King")
    older = _version("2024-02-01T00:00:00.000Z", name="Ada Byron")
    _deliver(sessions, _body("customer.updated", newer))

    body = _body("customer.updated", older)
    result = _deliver(sessions, body)

    assert result.outcome is EventOutcome.STALE
    assert _stored(sessions) == newer
    row = _row(sessions, _event_id(body))
    assert row is not None and row.outcome == "stale"


def test_an_update_of_a_forgotten_customer_is_recorded_as_forgotten_not_stale(
    sessions: sessionmaker[Session],
) -> None:
    _deliver(sessions, _body("customer.updated", _version("2024-03-01T00:00:00.000Z")))
    with sessions() as s, s.begin():
        forget_customer(s, CUSTOMER_ID, forgotten_at=datetime(2024, 3, 2, tzinfo=UTC))

    # Newer than the erasure: still never stored again, and said to be forgotten.
    body = _body("customer.updated", _version("2024-04-01T00:00:00.000Z", name="Back Again"))
    result = _deliver(sessions, body)

    assert result.outcome is EventOutcome.FORGOTTEN
    assert _stored(sessions) is None
    row = _row(sessions, _event_id(body))
    assert row is not None and row.outcome == "forgotten"
    with sessions() as s:
        assert count_events(s).get("forgotten") == 1


def test_same_event_delivered_twice_is_a_duplicate_counted_on_its_row(
    sessions: sessionmaker[Session],
) -> None:
    first = _version("2024-02-01T00:00:00.000Z")
    body = _body("customer.updated", first)
    assert _deliver(sessions, body).outcome is EventOutcome.APPLIED
    # Something newer lands in between: a duplicate must not write the old payload back.
    newest = _version("2024-03-01T00:00:00.000Z", name="Ada King")
    _deliver(sessions, _body("customer.updated", newest))

    again = _deliver(sessions, body)

    assert again.outcome is EventOutcome.DUPLICATE
    assert _stored(sessions) == newest
    row = _row(sessions, _event_id(body))
    assert row is not None
    assert (row.outcome, row.deliveries) == ("applied", 2)
    assert row.last_received_at >= row.first_received_at
    assert _counts(sessions) == {"applied": 2, "duplicate": 1}


def test_deletion_removes_the_customer_and_a_late_older_update_cannot_revive_it(
    sessions: sessionmaker[Session],
) -> None:
    created = _customer()
    update_body = _body("customer.updated", _version("2024-02-01T00:00:00.000Z"))
    _deliver(sessions, _body("customer.created", created))
    gone = _version("2024-03-01T00:00:00.000Z",
                    source_id="ada@shop.example_deleted2024-03-01T00:00:00.000Z")

    deleted = _deliver(sessions, _body("customer.deleted", gone,
                                       created_at="2024-03-01T00:00:01.000Z"))
    late = _deliver(sessions, update_body)

    assert deleted.outcome is EventOutcome.APPLIED
    assert late.outcome is EventOutcome.STALE
    assert _stored(sessions) is None
    with sessions() as s:
        repo = CustomerRepository(s)
        assert repo.deleted_at(CUSTOMER_ID) is not None
        assert repo.get_by_source_id("ada@shop.example") is None


def test_deletion_arriving_before_the_creation_makes_the_creation_stale(
    sessions: sessionmaker[Session],
) -> None:
    gone = _version("2024-03-01T00:00:00.000Z", source_id="ada_deleted2024-03-01T00:00:00.000Z")
    assert _deliver(sessions, _body("customer.deleted", gone)).outcome is EventOutcome.APPLIED

    creation = _deliver(sessions, _body("customer.created", _customer()))

    assert creation.outcome is EventOutcome.STALE
    assert _stored(sessions) is None


@pytest.mark.parametrize("event_type", ["customer.order.paid", "customer.rewarded",
                                        "voucher.published", "customer.loyalty.tier.upgraded"])
def test_event_of_another_type_with_a_smaller_customer_is_ignored(
    sessions: sessionmaker[Session], event_type: str
) -> None:
    stored = _version("2024-02-01T00:00:00.000Z")
    _deliver(sessions, _body("customer.updated", stored))
    small = {"id": CUSTOMER_ID, "name": "Someone Else", "email": "else@example.com",
             "source_id": "else", "metadata": {"acquisition_channel": "Website"},
             "object": "customer"}
    stranger = dict(small, id="cust_neverCreated0000000001")

    known = _deliver(sessions, _body(event_type, small, created_at="2024-09-01T00:00:00.000Z"))
    unknown = _deliver(sessions, _body(event_type, stranger,
                                       created_at="2024-09-01T00:00:00.000Z"))

    assert known.outcome is EventOutcome.IGNORED
    assert unknown.outcome is EventOutcome.IGNORED
    assert _stored(sessions) == stored
    assert _stored(sessions, "cust_neverCreated0000000001") is None
    with sessions() as s:
        assert CustomerRepository(s).count() == 1
    assert _counts(sessions) == {"applied": 1, "ignored": 2, "duplicate": 0}


def test_rejected_event_names_the_customer_path_and_a_fixed_redelivery_is_applied(
    sessions: sessionmaker[Session],
) -> None:
    stored = _customer()
    _deliver(sessions, _body("customer.created", stored))
    fixed = _version("2024-02-01T00:00:00.000Z", name="Ada King")
    bad = copy.deepcopy(fixed)
    bad["summary"]["orders"]["total_amount"] = "12"
    event_id = "evcus_rejected0000000001"
    bad_body = _body("customer.updated", bad, event_id=event_id)

    rejected = _deliver(sessions, bad_body)

    assert rejected.outcome is EventOutcome.REJECTED
    assert rejected.error is not None
    assert "$.data.customer.summary.orders.total_amount" in rejected.error
    assert _stored(sessions) == stored
    row = _row(sessions, event_id)
    assert row is not None
    assert (row.outcome, row.error, row.body) == ("rejected", rejected.error, bad_body)

    fixed_body = _body("customer.updated", fixed, event_id=event_id)
    retried = _deliver(sessions, fixed_body)

    assert retried.outcome is EventOutcome.APPLIED
    assert _stored(sessions) == fixed
    row = _row(sessions, event_id)
    assert row is not None
    assert (row.outcome, row.error, row.deliveries, row.body) == (
        "applied", None, 2, fixed_body
    )


def test_redelivered_rejected_event_with_the_same_bad_data_stays_rejected(
    sessions: sessionmaker[Session],
) -> None:
    stored = _customer()
    _deliver(sessions, _body("customer.created", stored))
    bad = _version("2024-02-01T00:00:00.000Z", birthdate="YYYY-MM-DD")
    body = _body("customer.updated", bad)

    outcomes = [_deliver(sessions, body) for _ in range(2)]

    assert [r.outcome for r in outcomes] == [EventOutcome.REJECTED] * 2
    assert all(r.error is not None and "$.data.customer.birthdate" in r.error
               for r in outcomes)
    assert _stored(sessions) == stored
    row = _row(sessions, _event_id(body))
    assert row is not None
    assert (row.outcome, row.deliveries) == ("rejected", 2)


@pytest.mark.parametrize(
    ("change", "path", "reason"),
    [
        ({"name": "Ada\u0000King"}, "$.data.customer.name", "U+0000"),
        ({"description": "\ud800"}, "$.data.customer.description", "lone surrogate"),
        ({"metadata": {"deep": json.loads("[" * 70 + "]" * 70)}},
         "$.data.customer.metadata.deep", "nested deeper"),
    ],
    ids=["nul", "lone-surrogate", "deep-nesting"],
)
def test_a_customer_value_no_column_can_hold_is_rejected_with_its_path(
    sessions: sessionmaker[Session], change: dict[str, Any], path: str, reason: str
) -> None:
    stored = _customer()
    _deliver(sessions, _body("customer.created", stored))
    bad = {**_version("2024-02-01T00:00:00.000Z"), **change}
    # Escaped in the JSON text (\u0000, \ud800), as a sender would write them.
    document = envelope("evcus_unstorable", "customer.updated", {"customer": bad},
                        bad["updated_at"])
    body = json.dumps(document).encode("ascii")

    result = _deliver(sessions, body)

    assert result.outcome is EventOutcome.REJECTED
    assert result.error is not None and path in result.error and reason in result.error
    assert _stored(sessions) == stored


def test_legacy_2018_envelope_is_stored_the_same_way(sessions: sessionmaker[Session]) -> None:
    customer = _version("2024-02-01T00:00:00.000Z")
    body = _body("customer.updated", customer, legacy=True, event_id="evcus_legacy000000000001")

    first = _deliver(sessions, body)
    second = _deliver(sessions, body)

    assert (first.outcome, second.outcome) == (EventOutcome.APPLIED, EventOutcome.DUPLICATE)
    assert first.event_id == "evcus_legacy000000000001"
    assert _stored(sessions) == customer
    row = _row(sessions, "evcus_legacy000000000001")
    assert row is not None
    assert (row.envelope_id, row.event_type, row.deliveries) == (
        "wh_streamLegacy01", "customer.updated", 2
    )


@pytest.mark.parametrize(
    "body",
    [
        pytest.param(b"this is not json", id="not-json"),
        pytest.param(b"\xff\xfe{}", id="not-utf8"),
        pytest.param(b"", id="empty"),
        pytest.param(b'[{"event": {"id": "evcus_1"}}]', id="array"),
        pytest.param(b'"customer.created"', id="string"),
        pytest.param(b'{"type": "customer.created", "data": {}}', id="no-event"),
        pytest.param(
            json.dumps({"project_id": "proj_1", "type": "customer.created",
                        "data": {"customer": {"id": CUSTOMER_ID}},
                        "event": {"type": "customer.created",
                                  "created_at": "2024-01-01T00:00:00.000Z"}}).encode(),
            id="no-event-id",
        ),
        pytest.param(b'{"object": "event", "id": 42, "type": "customer.created"}',
                     id="legacy-numeric-id"),
    ],
)
def test_delivery_without_an_event_id_is_malformed_and_records_nothing(
    sessions: sessionmaker[Session], body: bytes
) -> None:
    with pytest.raises(MalformedDelivery):
        _deliver(sessions, body)

    assert _event_rows(sessions) == 0
    assert _stored(sessions) is None


def test_raw_body_is_stored_byte_for_byte(sessions: sessionmaker[Session]) -> None:
    customer = _customer(name="Zoë \u2603 O'Brien", metadata={"b": 1, "a": [1.50, "\u00e9"]})
    document = envelope("evcus_rawbody00000000001", "customer.created",
                        {"customer": customer}, "2024-01-01T00:00:00.000Z")
    # Indentation, escaped non-ASCII, a float written as 1.50 and trailing blanks: the
    # body must come back as these very bytes, not as a re-serialisation.
    text = json.dumps(document, indent=3, ensure_ascii=True).replace("1.5,", "1.50,")
    body = text.encode("ascii") + b"  \r\n"

    assert _deliver(sessions, body).outcome is EventOutcome.APPLIED

    row = _row(sessions, "evcus_rawbody00000000001")
    assert row is not None
    assert bytes(row.body) == body


_HANDOVER_ORDERS = list(itertools.permutations(["old created", "old deleted", "new created"]))


@pytest.mark.parametrize("order", _HANDOVER_ORDERS, ids=[" > ".join(o) for o in _HANDOVER_ORDERS])
def test_source_id_handover_resolves_to_the_new_customer_in_any_arrival_order(
    sessions: sessionmaker[Session], order: tuple[str, ...]
) -> None:
    old_id, new_id, source_id = "cust_oldHolder000000000001", "cust_newHolder000000000001", "S-1"
    old = _version("2024-02-01T00:00:00.000Z", source_id=source_id)
    old = dict(old, id=old_id)
    renamed = dict(old, source_id=f"{source_id}_deleted2024-03-01T00:00:00.000Z",
                   updated_at="2024-03-01T00:00:00.010Z")
    new = dict(_customer(new_id, source_id=source_id), created_at="2024-03-01T00:05:00.000Z")
    bodies = {
        "old created": _body("customer.created", old),
        "old deleted": _body("customer.deleted", renamed, created_at="2024-03-01T00:00:00.500Z"),
        "new created": _body("customer.created", new),
    }

    results = [_deliver(sessions, bodies[step]) for step in order]

    assert all(r.outcome in (EventOutcome.APPLIED, EventOutcome.STALE) for r in results)
    assert results[order.index("new created")].outcome is EventOutcome.APPLIED
    with sessions() as s:
        repo = CustomerRepository(s)
        holder = repo.get_by_source_id(source_id)
        assert holder is not None and holder.to_dict() == new
        assert repo.get(old_id) is None
        assert repo.get_by_source_id(renamed["source_id"]) is None


def test_replay_applies_a_rejected_event_whose_stored_body_was_fixed(
    sessions: sessionmaker[Session],
) -> None:
    fixed = _version("2024-02-01T00:00:00.000Z")
    bad = dict(fixed, created_at="yesterday")
    event_id = "evcus_replayfixed0000001"
    assert _deliver(sessions, _body("customer.updated", bad, event_id=event_id)).outcome is (
        EventOutcome.REJECTED
    )
    fixed_body = _body("customer.updated", fixed, event_id=event_id)
    with sessions.begin() as s:
        s.execute(update(WebhookEventRow).where(WebhookEventRow.event_id == event_id)
                  .values(body=fixed_body))

    results = replay_rejected(sessions)

    assert [(r.event_id, r.outcome) for r in results] == [(event_id, EventOutcome.APPLIED)]
    assert _stored(sessions) == fixed
    row = _row(sessions, event_id)
    assert row is not None
    assert (row.outcome, row.error, row.deliveries) == ("applied", None, 1)
    assert _counts(sessions) == {"applied": 1, "duplicate": 0}
    assert replay_rejected(sessions) == []


def test_replay_of_a_still_bad_event_keeps_it_rejected_and_counts_no_delivery(
    sessions: sessionmaker[Session],
) -> None:
    good = _body("customer.created", _customer())
    bad = _body("customer.updated", _version("2024-02-01T00:00:00.000Z", loyalty={"points": 1.5}))
    _deliver(sessions, good)
    _deliver(sessions, bad)
    seen: list[IngestResult] = []

    results = replay_rejected(sessions, on_result=seen.append)

    assert [r.outcome for r in results] == [EventOutcome.REJECTED]
    assert seen == results
    assert results[0].error is not None and "$.data.customer.loyalty.points" in results[0].error
    row = _row(sessions, _event_id(bad))
    assert row is not None
    assert (row.outcome, row.deliveries) == ("rejected", 1)
    assert _counts(sessions) == {"applied": 1, "rejected": 1, "duplicate": 0}
    assert _stored(sessions) == _customer()


# -- Voucherify's own examples -------------------------------------------------------


def _example_delivery(name: str, raw: dict[str, Any]) -> tuple[str, bytes]:
    """(event type, body): full envelopes as they are, data parts wrapped in one."""
    if not name.endswith("-data.json"):
        return raw["event"]["type"], json.dumps(raw).encode("utf-8")
    event_type = name.split("-", 1)[1].removesuffix("-data.json")
    number = name.split("-", 1)[0]
    body = envelope(f"evcus_example{number:0>11}", event_type, raw,
                    "2025-10-16T16:54:11.816Z", entity_id="cust_example")
    return event_type, json.dumps(body).encode("utf-8")


@pytest.mark.parametrize(
    ("name", "raw"),
    [pytest.param(name, raw, id=name[:45]) for name, raw in load_example_events()],
)
def test_every_voucherify_example_event_is_applied_or_ignored(
    sessions: sessionmaker[Session], name: str, raw: dict[str, Any]
) -> None:
    event_type, body = _example_delivery(name, raw)

    result = _deliver(sessions, body)

    data = raw if name.endswith("-data.json") else raw["data"]
    customer: dict[str, Any] = data.get("customer") or {}
    if name in REJECTED_EXAMPLE_EVENTS:
        assert result.outcome is EventOutcome.REJECTED
        assert result.error is not None and REJECTED_EXAMPLE_EVENTS[name] in result.error
    elif event_type in ("customer.created", "customer.updated"):
        assert result.outcome is EventOutcome.APPLIED
        assert _stored(sessions, customer["id"]) == customer
    elif event_type == "customer.deleted":
        assert result.outcome is EventOutcome.APPLIED
        with sessions() as s:
            assert CustomerRepository(s).deleted_at(customer["id"]) is not None
    else:
        assert result.outcome is EventOutcome.IGNORED
        with sessions() as s:
            assert CustomerRepository(s).count() == 0
    assert _event_rows(sessions) == 1


# -- whole streams -------------------------------------------------------------------


def test_shuffled_duplicated_stream_ends_in_the_expected_state(
    sessions: sessionmaker[Session], backend: str
) -> None:
    seed = 7 if backend == "sqlite" else 8  # two different streams for the two databases
    stream = build_stream(60, seed=seed)
    deliveries = stream.deliveries(seed)
    assert len(deliveries) > len(stream.events)  # duplicates really are in it

    outcomes = Counter(_deliver(sessions, body).outcome for body in deliveries)

    assert outcomes[EventOutcome.REJECTED] == 0
    assert outcomes[EventOutcome.DUPLICATE] == len(deliveries) - len(stream.events)
    noise = sum(e.event_type not in ("customer.created", "customer.updated", "customer.deleted")
                for e in stream.events)
    assert outcomes[EventOutcome.IGNORED] == noise
    with sessions() as s:
        repo = CustomerRepository(s)
        stored = {c.id: c.to_dict() for c in repo.iter_all(batch_size=17)}
        assert stored.keys() == stream.expected.keys()
        assert stored == stream.expected
        for customer_id in stream.deleted_ids | stream.noise_only_ids:
            assert repo.get(customer_id) is None
        for customer_id in stream.deleted_ids:
            assert repo.deleted_at(customer_id) is not None
        assert stream.source_id_answers_of(repo) == stream.source_id_answers
        counts = count_events(s)
    assert counts["applied"] + counts["stale"] + counts["ignored"] == len(stream.events)
    assert counts["duplicate"] == len(deliveries) - len(stream.events)
    assert _event_rows(sessions) == len(stream.events)
