"""A demoted primary that answers read-only (SQLSTATE 25006) costs no write: the store on
libpq's multi-host URL with ``target_session_attrs=read-write`` and a warm pool, the old
primary made read-only as a demoted one is (its sessions get it at their next
transaction) and the standby promoted, the next write (an upsert, a webhook delivery,
the async face) succeeds on the new primary within its deadline, every pooled connection
then reaches the new primary, and the write is on it."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from functools import partial
from typing import Any

import pytest
from sqlalchemy import Engine, text
from sqlalchemy.orm import Session

from models import EventOutcome
from repository import (
    CustomerRepository,
    UpsertOutcome,
    ingest_delivery,
    make_async_engine,
    make_async_session_factory,
    make_engine,
    make_session_factory,
)
from repository.db.retry import run_in_transaction, run_in_transaction_async
from repository.db.schema import upgrade_to_head
from tests.replication import Pair, replicated_pair
from tests.voucherify_api import make_customers
from tests.webhook_streams import envelope, iso

# make test-slow: starts a primary and a standby, and measures deadlines (docs/testing.md).
pytestmark = pytest.mark.slow

#: The writes' deadline, as the receiver's (Voucherify waits 10 s for an answer).
DEADLINE = 10.0
#: read_only_sql_transaction: what the demoted primary answers a write.
READ_ONLY = "25006"
#: Connections each engine holds at once before the demotion (a warm pool).
WARM = 4


@pytest.fixture(scope="module")
def pair() -> Iterator[Pair]:
    with replicated_pair() as running:
        upgrade_to_head(running.primary.url())
        yield running


class Retries:
    """An ``on_retry`` listener: the SQLSTATEs of the errors that made a write run again."""

    def __init__(self) -> None:
        self.sqlstates: list[str | None] = []

    def __call__(self, error: BaseException | None) -> None:
        self.sqlstates.append(getattr(getattr(error, "orig", None), "sqlstate", None))


def renamed(customer: dict[str, Any], name: str) -> dict[str, Any]:
    return {**customer, "name": name, "updated_at": iso(datetime.now(UTC))}


def upsert(session: Session, customer: dict[str, Any]) -> UpsertOutcome:
    return CustomerRepository(session).upsert(customer)


def delivery(customer: dict[str, Any]) -> bytes:
    body = envelope(f"evt_{uuid.uuid4().hex[:20]}", "customer.updated", {"customer": customer},
                    customer["updated_at"])
    return json.dumps(body).encode()


def servers_of_checkouts(engine: Engine, how_many: int) -> list[tuple[bool, int]]:
    """``(pg_is_in_recovery(), inet_server_port())`` of ``how_many`` connections checked
    out at once: every pooled connection, and new ones if the pool has fewer."""
    connections = [engine.connect() for _ in range(how_many)]
    try:
        return [
            tuple(connection.execute(
                text("SELECT pg_is_in_recovery(), inet_server_port()")
            ).one())
            for connection in connections
        ]
    finally:
        for connection in connections:
            connection.close()


def warm_up(engine: Engine, customers: list[dict[str, Any]]) -> None:
    """Several connections checked out at once, each writing: a warm pool, on the primary."""
    sessions = [make_session_factory(engine)() for _ in range(WARM)]
    try:
        for session, customer in zip(sessions, customers, strict=True):
            CustomerRepository(session).upsert(customer)
            session.commit()
    finally:
        for session in sessions:
            session.close()


def demote(pair: Pair) -> None:
    """The old primary answers read-only, as a demoted one does (its open sessions at
    their next transaction), and the standby is promoted."""
    pair.primary.execute("ALTER SYSTEM SET default_transaction_read_only = on")
    pair.primary.reload()
    deadline = time.monotonic() + 10.0
    while pair.primary.scalar("SHOW default_transaction_read_only") != "on":
        assert time.monotonic() < deadline, "the old primary did not turn read-only"
        time.sleep(0.05)
    pair.standby.promote()
    assert not pair.standby.in_recovery()


def stored_name(pair: Pair, customer_id: str) -> Any:
    return pair.standby.scalar(
        "SELECT name FROM customers WHERE id = %s", [customer_id], database="customers"
    )


def test_writes_after_a_demotion_go_to_the_promoted_standby_within_their_deadline(
    pair: Pair, runner: asyncio.Runner
) -> None:
    url = pair.multi_host_url()
    customers = make_customers(3 * WARM, seed=41)
    upserts, deliveries = make_engine(url), make_engine(url)
    async_engine = make_async_engine(url)
    try:
        warm_up(upserts, customers[:WARM])
        warm_up(deliveries, customers[WARM:2 * WARM])

        async def warm_async() -> None:
            sessions = make_async_session_factory(async_engine)
            opened = [sessions() for _ in range(WARM)]
            try:
                for session, customer in zip(opened, customers[2 * WARM:], strict=True):
                    await session.run_sync(upsert, customer)
                    await session.commit()
            finally:
                for session in opened:
                    await session.close()

        runner.run(warm_async())
        assert {port for _, port in servers_of_checkouts(upserts, WARM)} == {pair.primary.port}

        demote(pair)

        # An upsert, on a pool of connections to the read-only old primary.
        changed = renamed(customers[0], "After the demotion")
        retried = Retries()
        started = time.monotonic()
        outcome = run_in_transaction(
            make_session_factory(upserts), partial(upsert, customer=changed), timeout=DEADLINE,
            on_retry=retried,
        )
        took = time.monotonic() - started
        assert outcome is UpsertOutcome.APPLIED
        assert took < DEADLINE
        # The first attempt met the old primary's read-only answer (on a stale pooled
        # connection), the retry a new connection to the new primary.
        assert retried.sqlstates == [READ_ONLY]
        # Every connection the pool hands out now reaches the new primary.
        assert servers_of_checkouts(upserts, WARM) == [(False, pair.standby.port)] * WARM
        assert stored_name(pair, changed["id"]) == "After the demotion"

        # A webhook delivery, on another pool still all on the old primary.
        delivered = renamed(customers[WARM], "Delivered after the demotion")
        retried = Retries()
        result = ingest_delivery(
            make_session_factory(deliveries), delivery(delivered), timeout=DEADLINE,
            on_retry=retried,
        )
        assert result.outcome is EventOutcome.APPLIED
        assert retried.sqlstates == [READ_ONLY]
        assert servers_of_checkouts(deliveries, WARM) == [(False, pair.standby.port)] * WARM
        assert stored_name(pair, delivered["id"]) == "Delivered after the demotion"

        # The async face.
        later = renamed(customers[2 * WARM], "Async after the demotion")
        retried = Retries()

        async def write_async() -> tuple[UpsertOutcome, list[tuple[bool, int]]]:
            outcome = await run_in_transaction_async(
                make_async_session_factory(async_engine), partial(upsert, customer=later),
                timeout=DEADLINE, on_retry=retried,
            )
            connections = [await async_engine.connect() for _ in range(WARM)]
            try:
                servers = [
                    tuple((await connection.execute(
                        text("SELECT pg_is_in_recovery(), inet_server_port()")
                    )).one())
                    for connection in connections
                ]
            finally:
                for connection in connections:
                    await connection.close()
            return outcome, servers

        async_outcome, async_servers = runner.run(
            asyncio.wait_for(write_async(), timeout=DEADLINE * 2)
        )
        assert async_outcome is UpsertOutcome.APPLIED
        assert retried.sqlstates == [READ_ONLY]
        assert async_servers == [(False, pair.standby.port)] * WARM
        assert stored_name(pair, later["id"]) == "Async after the demotion"
    finally:
        upserts.dispose()
        deliveries.dispose()
        runner.run(async_engine.dispose())
