"""A COMMIT whose outcome is unknown is retried safely: the whole unit of work runs again,
and newest-wins and the webhook event claim make that idempotent. A real proxy between the
store and PostgreSQL (tests/flaky_proxy.py) loses the COMMIT: its answer (the server
committed, the client never heard) or the COMMIT itself (nothing committed)."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import Engine, func, select
from sqlalchemy.engine import make_url

from models import EventOutcome
from repository import (
    CustomerRepository,
    UpsertOutcome,
    ingest_delivery,
    ingest_delivery_async,
    make_async_engine,
    make_async_session_factory,
    make_engine,
    make_session_factory,
)
from repository.db.retry import run_in_transaction
from repository.db.tables import customers, events
from tests.flaky_proxy import FlakyProxy, flaky_proxy
from tests.voucherify_api import make_customers
from tests.webhook_streams import envelope, iso

# make test-slow: drops commits through a proxy and measures retries (docs/testing.md).
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def proxy(postgres_url: str) -> Iterator[FlakyProxy]:
    url = make_url(postgres_url)
    with flaky_proxy(url.host or "127.0.0.1", url.port or 5432) as running:
        yield running


@pytest.fixture(scope="module")
def proxied_url(postgres_url: str, proxy: FlakyProxy) -> str:
    url = make_url(postgres_url).set(host="127.0.0.1", port=proxy.port)
    url = url.update_query_dict({"sslmode": "disable", "gssencmode": "disable"})
    return url.render_as_string(hide_password=False)


@pytest.fixture(scope="module")
def direct(postgres_url: str) -> Iterator[Engine]:
    engine = make_engine(postgres_url)
    yield engine
    engine.dispose()


@pytest.fixture(scope="module")
def proxied(proxied_url: str) -> Iterator[Engine]:
    engine = make_engine(proxied_url)
    yield engine
    engine.dispose()


def customer_versions(seed: int) -> tuple[dict[str, Any], dict[str, Any]]:
    """An older and a newer state of one new customer."""
    old = make_customers(1, seed=seed)[0]
    old["id"] = f"cust_{uuid.uuid4().hex[:20]}"
    old["source_id"] = f"src-{uuid.uuid4().hex[:12]}"
    old_at = datetime.now(UTC) - timedelta(minutes=5)
    old["created_at"] = old["updated_at"] = iso(old_at)
    new = {**old, "name": "Newest Name", "updated_at": iso(old_at + timedelta(minutes=1))}
    return old, new


def stored_rows(engine: Engine, customer_id: str) -> list[Any]:
    with engine.connect() as connection:
        return list(connection.execute(
            select(customers.c.name).where(customers.c.id == customer_id)
        ))


def event_deliveries(engine: Engine, event_id: str) -> list[tuple[str, int]]:
    with engine.connect() as connection:
        return [tuple(row) for row in connection.execute(
            select(events.c.outcome, events.c.deliveries).where(events.c.event_id == event_id)
        )]


def delivery(customer: dict[str, Any]) -> tuple[str, bytes]:
    event_id = f"evt_{uuid.uuid4().hex[:20]}"
    body = envelope(event_id, "customer.updated", {"customer": customer}, customer["updated_at"])
    return event_id, json.dumps(body).encode()


@pytest.mark.parametrize("lost", ["answer", "request"])
def test_an_upsert_whose_commit_is_lost_is_stored_once_in_its_newest_state(
    proxy: FlakyProxy, proxied: Engine, direct: Engine, lost: str
) -> None:
    old, new = customer_versions(1)
    sessions = make_session_factory(proxied)
    assert run_in_transaction(sessions, lambda s: CustomerRepository(s).upsert(old)) is (
        UpsertOutcome.APPLIED
    )
    before = proxy.lost
    proxy.arm(lost)
    outcome = run_in_transaction(sessions, lambda s: CustomerRepository(s).upsert(new))
    assert proxy.lost == before + 1
    # Retried after the lost COMMIT: the newest state is stored (by the first attempt or
    # by the retry), and the retry says it was applied, not stale.
    assert outcome in (UpsertOutcome.APPLIED, UpsertOutcome.UNCHANGED)
    assert [row.name for row in stored_rows(direct, new["id"])] == ["Newest Name"]
    with direct.connect() as connection:
        assert connection.scalar(select(func.count()).select_from(customers).where(
            customers.c.source_id == new["source_id"])) == 1


@pytest.mark.parametrize("lost", ["answer", "request"])
def test_a_delivery_whose_commit_is_lost_is_recorded_once_and_reported_applied(
    proxy: FlakyProxy, proxied: Engine, direct: Engine, lost: str
) -> None:
    old, new = customer_versions(2)
    sessions = make_session_factory(proxied)
    assert ingest_delivery(sessions, delivery(old)[1]).outcome is EventOutcome.APPLIED
    event_id, body = delivery(new)
    before = proxy.lost
    proxy.arm(lost)
    result = ingest_delivery(sessions, body)
    assert proxy.lost == before + 1
    assert result.outcome is EventOutcome.APPLIED and result.error is None
    # One event row, one delivery counted (the retry is not a redelivery), the newest state.
    assert event_deliveries(direct, event_id) == [("applied", 1)]
    assert [row.name for row in stored_rows(direct, new["id"])] == ["Newest Name"]
    # A real redelivery afterwards is a duplicate, and is counted.
    assert ingest_delivery(sessions, body).outcome is EventOutcome.DUPLICATE
    assert event_deliveries(direct, event_id) == [("applied", 2)]


def test_the_async_receiver_path_retries_a_lost_commit_answer_to_one_applied_event(
    proxy: FlakyProxy, proxied_url: str, direct: Engine
) -> None:
    _, new = customer_versions(3)
    event_id, body = delivery(new)

    async def deliver() -> EventOutcome:
        engine = make_async_engine(proxied_url)
        try:
            proxy.arm("answer")
            result = await ingest_delivery_async(
                make_async_session_factory(engine), body, timeout=5.0
            )
            return result.outcome
        finally:
            await engine.dispose()

    before = proxy.lost
    assert asyncio.run(deliver()) is EventOutcome.APPLIED
    assert proxy.lost == before + 1
    assert event_deliveries(direct, event_id) == [("applied", 1)]
    assert [row.name for row in stored_rows(direct, new["id"])] == ["Newest Name"]
