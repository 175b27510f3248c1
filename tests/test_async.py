"""The async API inside an event loop: it never blocks the loop, and concurrent tasks
each get their own answer.

A ticker task wakes every 10 ms beside 300 concurrent ``get`` and ``upsert`` tasks on
PostgreSQL, arriving one after another (the receiver's and an async service's situation);
no tick may be late by more than 100 ms, which a single blocking round trip under that load
would break.
"""

from __future__ import annotations

import asyncio
import copy
import gc
import json
import threading
import time
from typing import Any

import psycopg
import pytest
from sqlalchemy import event
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncEngine

from models import Customer, CustomerValidationError
from models.events import EventOutcome
from repository import (
    AsyncCustomerRepository,
    CustomerFilter,
    UpsertOutcome,
    make_async_engine,
    make_async_session_factory,
)
from repository.db.schema import upgrade_to_head
from repository.store.customers import UpsertSummary
from repository.store.off_loop import INLINE_BODY_BYTES
from repository.webhooks.ingest import IngestResult, ingest_delivery_async
from tests.conftest import EXAMPLES
from tests.webhook_streams import envelope

TICK = 0.01
MAX_LATE = 0.1


def example_customer(customer_id: str, name: str) -> dict[str, Any]:
    customer: dict[str, Any] = json.loads(
        (EXAMPLES / "events" / "03-customer.created-data.json").read_text(encoding="utf-8")
    )["customer"]
    customer = copy.deepcopy(customer)
    customer.update(id=customer_id, name=name, updated_at="2024-05-01T00:00:00.000Z",
                    source_id=f"src-{customer_id}")
    return customer


async def _ticker(stop: asyncio.Event, lateness: list[float]) -> None:
    loop = asyncio.get_running_loop()
    while not stop.is_set():
        expected = loop.time() + TICK
        await asyncio.sleep(TICK)
        lateness.append(loop.time() - expected)


async def _concurrent_work(engine: AsyncEngine) -> tuple[list[float], list[Any]]:
    sessions = make_async_session_factory(engine)
    ids = [f"cust_async{i:05d}" for i in range(150)]

    async def upsert(customer_id: str) -> UpsertOutcome:
        async with sessions.begin() as session:
            return await AsyncCustomerRepository(session).upsert(
                example_customer(customer_id, f"Name {customer_id}")
            )

    async def get(customer_id: str) -> Any:
        async with sessions() as session:
            found = await AsyncCustomerRepository(session).get(customer_id)
            return None if found is None else found.name

    stop, lateness = asyncio.Event(), list[float]()
    # Some exist before the storm, and the pool's connections are open, statements
    # compiled and modules loaded: one-time costs of a cold process, not what this measures.
    await asyncio.gather(*(upsert(i) for i in ids[:20]))
    await asyncio.gather(*(get(i) for i in ids[:20]))
    # What a long-running service has done by now: its start-up heap (here, the whole test
    # session's) moved out of the collector's way, as gc.freeze() is meant for. Otherwise a
    # full collection of that heap, not the store, is what holds the loop.
    gc.collect()
    gc.freeze()
    ticker = asyncio.create_task(_ticker(stop, lateness))
    # The tasks arrive one after another, as requests do, each yielding the loop once: all
    # 300 are in flight together, but the ticker measures what one call holds the loop
    # for, not the sum of 300 tasks' first steps queued in a single turn of the loop
    # (which grows with the machine's slowness whatever the store does).
    tasks = []
    for work in (*(upsert(i) for i in ids), *(get(i) for i in ids)):
        tasks.append(asyncio.ensure_future(work))
        await asyncio.sleep(0)
    results = await asyncio.gather(*tasks)
    stop.set()
    await ticker
    gc.unfreeze()
    return lateness, results


def test_300_concurrent_gets_and_upserts_never_block_the_event_loop(
    make_database: Any, runner: asyncio.Runner
) -> None:
    url: str = make_database("postgresql")
    upgrade_to_head(url)
    # A pool that holds its connections: the test measures the loop, not reconnecting.
    engine = make_async_engine(url, pool_size=20, max_overflow=0)
    try:
        started = time.monotonic()
        lateness, results = runner.run(_concurrent_work(engine))
        elapsed = time.monotonic() - started
    finally:
        runner.run(engine.dispose())

    upserted, got = results[:150], results[150:]
    # The first 20 were stored before the storm, in this very version.
    assert upserted[:20] == [UpsertOutcome.UNCHANGED] * 20
    assert set(upserted[20:]) == {UpsertOutcome.APPLIED}
    # Each get saw its customer either before or after its upsert committed, never a mix.
    assert all(name in (None, f"Name cust_async{i:05d}") for i, name in enumerate(got))
    assert len(lateness) > 10, (len(lateness), elapsed)
    assert max(lateness) < MAX_LATE, lateness


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_async_find_count_and_iter_all_agree_with_what_was_stored(
    make_database: Any, runner: asyncio.Runner, backend: str
) -> None:
    url: str = make_database(backend)
    upgrade_to_head(url)
    engine = make_async_engine(url)
    sessions = make_async_session_factory(engine)
    customers = [example_customer(f"cust_iter{i:04d}", f"Zoë {i}") for i in range(25)]

    async def scenario() -> tuple[int, list[str], list[str], str | None]:
        async with sessions.begin() as session:
            summary = await AsyncCustomerRepository(session).upsert_many(customers)
            assert summary.applied == 25
        async with sessions() as session:
            repo = AsyncCustomerRepository(session)
            counted = await repo.count(CustomerFilter(name_prefix="ZOË 1"))
            page = await repo.find(CustomerFilter(name_prefix="zoë 1"), limit=5)
            streamed = [c.id async for c in repo.iter_all(batch_size=7)]
            by_source = await repo.get_by_source_id("src-cust_iter0003")
            return counted, [c.id for c in page.customers], streamed, (
                by_source.id if by_source else None
            )

    try:
        counted, page, streamed, by_source = runner.run(scenario())
    finally:
        runner.run(engine.dispose())

    tens = [f"cust_iter{i:04d}" for i in [1, *range(10, 20)]]
    assert counted == len(tens)
    assert page == tens[:5]
    assert streamed == sorted(c["id"] for c in customers)
    assert by_source == "cust_iter0003"


# -- validation: once, before the transaction, off the loop for large inputs -------------


@pytest.fixture(scope="module")
def pg_url(make_database: Any) -> str:
    url: str = make_database("postgresql")
    upgrade_to_head(url)
    return url


class _Validations:
    """Where each customer was validated: a hook on the model's own validation (which
    every path calls), recording the thread and how many connections were checked out."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, engine: AsyncEngine) -> None:
        self.calls: list[tuple[int, int]] = []
        validate = Customer.model_validate
        pool = engine.sync_engine.pool

        def recorded(obj: Any, *args: Any, **kwargs: Any) -> Customer:
            self.calls.append((threading.get_ident(), pool.checkedout()))  # type: ignore[attr-defined]
            return validate(obj, *args, **kwargs)

        monkeypatch.setattr(Customer, "model_validate", recorded)

    def threads(self) -> set[int]:
        return {thread for thread, _ in self.calls}

    def checked_out(self) -> set[int]:
        return {count for _, count in self.calls}


def test_a_large_batch_is_validated_once_off_the_loop_before_any_connection(
    pg_url: str, runner: asyncio.Runner, monkeypatch: pytest.MonkeyPatch
) -> None:
    engine = make_async_engine(pg_url)
    sessions = make_async_session_factory(engine)
    customers = [example_customer(f"cust_big{i:04d}", f"Big {i}") for i in range(40)]
    validations = _Validations(monkeypatch, engine)

    async def scenario() -> UpsertSummary:
        async with sessions.begin() as session:
            return await AsyncCustomerRepository(session).upsert_many(customers)

    try:
        summary = runner.run(scenario())
    finally:
        runner.run(engine.dispose())
    assert summary.applied == 40
    assert len(validations.calls) == 40  # once each
    # Not on the loop's thread (the runner runs the loop on this one), and before the
    # transaction took a connection.
    assert threading.get_ident() not in validations.threads()
    assert validations.checked_out() == {0}


def test_an_invalid_batch_raises_before_the_database_is_touched(
    pg_url: str, runner: asyncio.Runner
) -> None:
    engine = make_async_engine(pg_url)
    sessions = make_async_session_factory(engine)
    checkouts: list[object] = []
    event.listen(engine.sync_engine, "checkout", lambda *args: checkouts.append(args))
    customers = [example_customer(f"cust_bad{i:04d}", f"Bad {i}") for i in range(40)]
    customers[30]["email"] = 42

    async def scenario() -> None:
        async with sessions.begin() as session:
            await AsyncCustomerRepository(session).upsert_many(customers)

    try:
        with pytest.raises(CustomerValidationError):
            runner.run(scenario())
    finally:
        runner.run(engine.dispose())
    assert checkouts == []


def _terminate_backends(url: str) -> None:
    """End every server connection to the database at ``url``: the next statement on a
    pooled one meets a lost connection, which the transaction runner retries."""
    parsed = make_url(url)
    with psycopg.connect(
        host=parsed.host, port=parsed.port, user=parsed.username, dbname="postgres",
        autocommit=True,
    ) as admin:
        admin.execute(
            "SELECT pg_terminate_backend(pid, 5000) FROM pg_stat_activity"
            " WHERE datname = %s AND pid <> pg_backend_pid()",
            [parsed.database],
        )


def test_a_large_delivery_is_validated_once_off_the_loop_however_often_it_is_retried(
    pg_url: str, runner: asyncio.Runner, monkeypatch: pytest.MonkeyPatch
) -> None:
    # One pooled connection, ended by the server before the delivery: the first attempt
    # meets it lost, the second runs on a new one.
    engine = make_async_engine(pg_url, pool_size=1, max_overflow=0)
    sessions = make_async_session_factory(engine)
    customer = example_customer("cust_retried01", "Retried")
    customer["metadata"] = {f"note_{i:03d}": "x" * 200 for i in range(150)}
    body = json.dumps(envelope(
        "evt_retried0000000001", "customer.updated", {"customer": customer},
        customer["updated_at"],
    )).encode()
    assert len(body) > INLINE_BODY_BYTES
    retries: list[BaseException | None] = []

    async def scenario() -> IngestResult:
        async with engine.connect() as connection:
            await connection.exec_driver_sql("SELECT 1")
        _terminate_backends(pg_url)
        validations.calls.clear()
        return await ingest_delivery_async(sessions, body, on_retry=retries.append)

    validations = _Validations(monkeypatch, engine)
    try:
        result = runner.run(scenario())
    finally:
        runner.run(engine.dispose())
    assert result.outcome is EventOutcome.APPLIED
    assert len(retries) == 1
    assert len(validations.calls) == 1
    assert threading.get_ident() not in validations.threads()
    assert validations.checked_out() == {0}
