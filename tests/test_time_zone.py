"""Timestamps read back exactly whatever the database's time zone, with no session setting.

The store sends no startup ``options`` (PgBouncer refuses them) and sets nothing on its
sessions, so a session runs in the server's, role's or database's ``TimeZone``. Here the
database's is Pacific/Kiritimati, as far from UTC as zones go: UTC+14 today, and a local
mean time of -10:29:20 before 1901. Rendered in it, the last millisecond of year 9999
falls in year 10000 and the first of year 1 in 1 BC with an offset in seconds; the
statements read times in UTC instead. Directly and through PgBouncer with the flag.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import Session

from repository import (
    AsyncCustomerRepository,
    CustomerFilter,
    CustomerRepository,
    ingest_delivery,
    make_async_engine,
    make_engine,
    make_session_factory,
)
from repository.db import upgrade_to_head
from repository.webhooks import list_events
from tests.conftest import alter_database
from tests.webhook_streams import envelope

FAR_ZONE = "Pacific/Kiritimati"
LAST = "9999-12-31T23:59:59.999Z"
FIRST = "0001-01-01T00:00:00.000Z"
FIRST_MS = "0001-01-01T00:00:00.001Z"


@pytest.fixture(params=["direct", "pgbouncer"])
def far_url(
    request: pytest.FixtureRequest, make_postgres_database: Any, postgres_admin_url: str
) -> Iterator[str]:
    """A migrated database whose own ``TimeZone`` is Pacific/Kiritimati."""
    url: str = make_postgres_database()
    alter_database(postgres_admin_url, url, f"ALTER DATABASE {{name}} SET timezone = '{FAR_ZONE}'")
    if request.param == "pgbouncer":
        url = request.getfixturevalue("pgbouncer").url(url)
    upgrade_to_head(url)
    yield url


def customer(customer_id: str, created_at: str, updated_at: str, *dates: str) -> dict[str, Any]:
    return {
        "id": customer_id,
        "source_id": f"src-{customer_id}",
        "name": f"Time {customer_id}",
        "summary": {"orders": {"total_count": 1, "last_order_date": updated_at}},
        "referrals": {"total": len(dates), "campaigns": [
            {"campaign_id": f"camp_{i}", "date": date} for i, date in enumerate(dates)
        ]},
        "created_at": created_at,
        "updated_at": updated_at,
        "object": "customer",
    }


CUSTOMERS = [
    customer("cust_tz_edges", FIRST, LAST, LAST, FIRST_MS, "2024-02-29T10:00:00.500Z"),
    customer("cust_tz_first", FIRST, FIRST_MS, FIRST, FIRST_MS),
    customer("cust_tz_last", "9999-12-31T00:00:00.001Z", LAST, "9999-12-31T10:00:00.000Z"),
    customer("cust_tz_ms", "2024-06-30T23:59:59.999Z", "2024-07-01T00:00:00.001Z",
             "2024-12-31T23:59:59.999Z"),
]


def test_customers_read_back_byte_for_byte_in_a_far_time_zone(far_url: str) -> None:
    engine = make_engine(far_url)
    try:
        with Session(engine) as session:
            assert session.scalar(text("SHOW timezone")) == FAR_ZONE  # nobody overrode it
            repo = CustomerRepository(session)
            for payload in CUSTOMERS:
                repo.upsert(payload)
            repo.upsert_many([customer("cust_tz_bulk", FIRST, LAST, LAST, FIRST)])
            session.commit()
        expected = [*CUSTOMERS, customer("cust_tz_bulk", FIRST, LAST, LAST, FIRST)]
        expected_text = [json.dumps(c, sort_keys=True) for c in sorted(expected,
                                                                       key=lambda c: c["id"])]
        with Session(engine) as session:
            repo = CustomerRepository(session)
            for payload in expected:
                got = repo.get(payload["id"])
                assert got is not None
                assert json.dumps(got.to_dict(), sort_keys=True) == json.dumps(
                    payload, sort_keys=True
                )
            streamed = [json.dumps(c.to_dict(), sort_keys=True)
                        for c in repo.iter_all(batch_size=2)]
            assert streamed == expected_text
            page = repo.find(CustomerFilter(updated_from=datetime(9999, 12, 31, tzinfo=UTC)))
            assert [c.id for c in page.customers] == ["cust_tz_bulk", "cust_tz_edges",
                                                       "cust_tz_last"]
            found = repo.find(CustomerFilter(updated_before=datetime(2, 1, 1, tzinfo=UTC)))
            assert [json.dumps(c.to_dict(), sort_keys=True) for c in found.customers] == [
                json.dumps(CUSTOMERS[1], sort_keys=True)
            ]
    finally:
        engine.dispose()

    async def read_async() -> list[Any]:
        async_engine = make_async_engine(far_url, read_only=True)
        try:
            async with AsyncSession(async_engine) as session:
                repo = AsyncCustomerRepository(session)
                return [await repo.get(p["id"]) for p in CUSTOMERS]
        finally:
            await async_engine.dispose()

    read_back = asyncio.run(read_async())
    assert [c.to_dict() if c else None for c in read_back] == CUSTOMERS


def test_event_times_and_tombstones_are_right_in_a_far_time_zone(far_url: str) -> None:
    engine = make_engine(far_url)
    sessions = make_session_factory(engine)
    gone = customer("cust_tz_gone", FIRST, "2024-01-01T00:00:00.000Z")
    created = envelope("evcus_tz_created", "customer.created", {"customer": gone}, FIRST_MS,
                       entity_id=gone["id"])
    deleted = envelope("evcus_tz_deleted", "customer.deleted", {"customer": gone}, LAST,
                       entity_id=gone["id"])
    first_seen = datetime(1, 1, 1, 0, 0, 0, 2000, tzinfo=UTC)
    last_seen = datetime(9999, 12, 31, 23, 59, 59, 998000, tzinfo=UTC)
    try:
        ingest_delivery(sessions, json.dumps(created).encode(), received_at=first_seen)
        ingest_delivery(sessions, json.dumps(deleted).encode(), received_at=first_seen)
        duplicate = ingest_delivery(sessions, json.dumps(deleted).encode(), received_at=last_seen)
        assert duplicate.outcome.value == "duplicate"
        with Session(engine) as session:
            repo = CustomerRepository(session)
            assert repo.get("cust_tz_gone") is None
            assert repo.deleted_at("cust_tz_gone") == datetime(
                9999, 12, 31, 23, 59, 59, 999000, tzinfo=UTC
            )
            early = datetime(1, 1, 1, 0, 0, 0, 1000, tzinfo=UTC)
            repo.delete("cust_tz_early", deleted_at=early)
            session.commit()
            assert repo.deleted_at("cust_tz_early") == early
            rows = {row.event_id: row for row in list_events(session)}
        assert {event_id: (r.event_created_at, r.first_received_at, r.last_received_at)
                for event_id, r in rows.items()} == {
            "evcus_tz_created": (datetime(1, 1, 1, 0, 0, 0, 1000, tzinfo=UTC), first_seen,
                                 first_seen),
            "evcus_tz_deleted": (datetime(9999, 12, 31, 23, 59, 59, 999000, tzinfo=UTC),
                                 first_seen, last_seen),
        }
    finally:
        engine.dispose()
