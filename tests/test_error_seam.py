"""One error seam for every path, the driver fast path included (repository/db/driver.py):
a user's ``handle_error`` listener sees the fast path's errors and may call one a
disconnect, which invalidates the pool and gets the read retried; a prepared-statement
clash behind PgBouncer says what to do once; a read in a caller's autocommit session is
retried once after its connection was lost, one in a caller's transaction never is; and
a pool of dead server connections behind PgBouncer costs nothing.

Only this module's own databases' backends are terminated (by ``datname``)."""

from __future__ import annotations

import asyncio
import json
import logging
import threading
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from functools import partial
from typing import Any

import pytest
from sqlalchemy import Engine, event, text
from sqlalchemy.engine import ExceptionContext
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session

from models import EventOutcome
from repository import (
    AsyncCustomerRepository,
    CustomerReader,
    CustomerRepository,
    UpsertOutcome,
    ingest_delivery,
    make_async_engine,
    make_async_session_factory,
    make_engine,
    make_session_factory,
    read_in_session_async,
)
from repository.db import POOLER_HINT, is_pooler_clash
from repository.db.retry import run_in_transaction
from repository.db.schema import upgrade_to_head
from tests.conftest import StoreCustomers
from tests.pgbouncer import PgBouncer
from tests.test_dropped_connections import terminate_backends
from tests.voucherify_api import make_customers
from tests.webhook_streams import envelope, iso

#: undefined_table: what a read finds on a connection whose search_path lost the tables.
UNDEFINED_TABLE = "42P01"


@pytest.fixture(scope="module")
def stored(postgres_url: str, store_customers: StoreCustomers) -> list[dict[str, Any]]:
    return store_customers(postgres_url, make_customers(12, seed=31))


@pytest.fixture
def read_only_engine(postgres_url: str) -> Iterator[Engine]:
    engine = make_engine(postgres_url, read_only=True)
    yield engine
    engine.dispose()


class SeenErrors:
    """A user's ``handle_error`` listener: what it saw, and (``disconnect_sqlstate``) a
    custom rule calling an error of that SQLSTATE a disconnect."""

    def __init__(self, disconnect_sqlstate: str | None = None) -> None:
        self.disconnect_sqlstate = disconnect_sqlstate
        self.seen: list[tuple[str | None, bool, str | None]] = []

    def __call__(self, context: ExceptionContext) -> None:
        sqlstate = getattr(context.original_exception, "sqlstate", None)
        if sqlstate is not None and sqlstate == self.disconnect_sqlstate:
            context.is_disconnect = True
        self.seen.append((sqlstate, context.is_disconnect, context.statement))


def backend_pids(engine: Engine, how_many: int) -> list[int]:
    """The server pids of ``how_many`` connections checked out at once (a warm pool)."""
    connections = [engine.raw_connection() for _ in range(how_many)]
    try:
        pids = []
        for connection in connections:
            cursor = connection.cursor()
            cursor.execute("SELECT pg_backend_pid()")
            row = cursor.fetchone()
            assert row is not None
            pids.append(row[0])
            cursor.close()
        return pids
    finally:
        for connection in connections:
            connection.close()


def live_pids(url: str, pids: list[int]) -> set[int]:
    engine = make_engine(url)
    try:
        with engine.connect() as connection:
            rows = connection.execute(
                text("SELECT pid FROM pg_stat_activity WHERE pid = ANY(:pids)"), {"pids": pids}
            )
            return {row.pid for row in rows}
    finally:
        engine.dispose()


def break_pooled_connections(engine: Engine, how_many: int) -> None:
    """Make ``how_many`` pooled connections ones on which every read of the store fails
    with a statement error (no disconnect by SQLAlchemy's rules): their search_path lost
    the tables. Reads on a new connection work."""
    connections = [engine.raw_connection() for _ in range(how_many)]
    try:
        for connection in connections:
            cursor = connection.cursor()
            cursor.execute("SET search_path TO pg_catalog")
            cursor.close()
    finally:
        for connection in connections:
            connection.close()


# -- handle_error on the fast path -----------------------------------------------------


Read = Callable[[Engine, str], str | None]


def read_through_reader(engine: Engine, customer_id: str) -> str | None:
    return CustomerReader(engine).get_json(customer_id)


def read_through_session(engine: Engine, customer_id: str) -> str | None:
    with make_session_factory(engine, read_only=True)() as session:
        return CustomerRepository(session).get_json(customer_id)


READS = [pytest.param(read_through_reader, id="reader"),
         pytest.param(read_through_session, id="read-only-session")]


@pytest.mark.parametrize("read", READS)
def test_a_handle_error_listener_sees_a_terminated_backend_on_the_fast_path(
    read_only_engine: Engine, postgres_url: str, stored: list[dict[str, Any]], read: Read
) -> None:
    seen = SeenErrors()
    event.listen(read_only_engine, "handle_error", seen)
    customer = stored[0]
    assert read(read_only_engine, customer["id"]) is not None  # a pooled connection
    assert terminate_backends(postgres_url) >= 1

    answer = read(read_only_engine, customer["id"])

    assert answer is not None and json.loads(answer)["id"] == customer["id"]
    # Seen once, as a disconnect, and on the driver's cursor (no statement of
    # SQLAlchemy's execute): the retry on a new connection met no error.
    assert len(seen.seen) == 1, seen.seen
    sqlstate, disconnect, statement = seen.seen[0]
    assert disconnect is True
    assert sqlstate in (None, "57P01") or sqlstate.startswith("08")
    assert statement is None


@pytest.mark.parametrize("read", READS)
def test_a_handle_error_listener_can_call_a_fast_path_error_a_disconnect_and_the_read_is_retried(
    read_only_engine: Engine, postgres_url: str, stored: list[dict[str, Any]], read: Read
) -> None:
    customer = stored[1]
    warm = backend_pids(read_only_engine, 3)
    break_pooled_connections(read_only_engine, 3)

    # Without the custom rule, the statement error is the caller's, not retried.
    plain = SeenErrors()
    event.listen(read_only_engine, "handle_error", plain)
    with pytest.raises(DBAPIError) as caught:
        read(read_only_engine, customer["id"])
    assert getattr(caught.value.orig, "sqlstate", None) == UNDEFINED_TABLE
    assert caught.value.connection_invalidated is False
    assert plain.seen == [(UNDEFINED_TABLE, False, None)]
    event.remove(read_only_engine, "handle_error", plain)

    # The custom rule: that error means the connection is broken.
    rule = SeenErrors(disconnect_sqlstate=UNDEFINED_TABLE)
    event.listen(read_only_engine, "handle_error", rule)
    answer = read(read_only_engine, customer["id"])

    assert answer is not None and json.loads(answer)["id"] == customer["id"]
    assert rule.seen == [(UNDEFINED_TABLE, True, None)]
    # The whole pool was invalidated, not only the broken connection: none of the
    # connections opened before is used again (their backends are closed).
    fresh = backend_pids(read_only_engine, 3)
    assert not set(fresh) & set(warm)
    assert not live_pids(postgres_url, warm)


def test_async_reads_go_through_the_seam_and_are_retried_once_after_a_terminated_backend(
    postgres_url: str, stored: list[dict[str, Any]], runner: asyncio.Runner
) -> None:
    """The async face: a read of its own (``read_in_session_async``, as the read API's) and
    one in a caller's autocommit session (``AsyncCustomerRepository``); the listener is
    the sync engine's, as SQLAlchemy's async engines have it."""
    engine = make_async_engine(postgres_url, read_only=True)
    seen = SeenErrors()
    event.listen(engine.sync_engine, "handle_error", seen)
    sessions = make_async_session_factory(engine, read_only=True)
    customer = stored[4]

    def get_json(session: Session) -> str | None:
        return CustomerRepository(session).get_json(customer["id"])

    async def reads() -> list[str | None]:
        answers = [await read_in_session_async(sessions, get_json)]
        assert terminate_backends(postgres_url) >= 1
        answers.append(await read_in_session_async(sessions, get_json))
        async with sessions() as session:
            repo = AsyncCustomerRepository(session)
            answers.append(await repo.get_json(customer["id"]))
            assert terminate_backends(postgres_url) >= 1
            answers.append(await repo.get_json(customer["id"]))
            answers.append(await repo.get_json(customer["id"]))
        return answers

    try:
        answers = runner.run(asyncio.wait_for(reads(), timeout=30))
    finally:
        runner.run(engine.dispose())
    assert [json.loads(a)["id"] if a else None for a in answers] == [customer["id"]] * 5
    assert [(disconnect, statement) for _, disconnect, statement in seen.seen] == [
        (True, None), (True, None)
    ]


# -- the PgBouncer hint ------------------------------------------------------------------


@pytest.fixture
def bounced_database(make_postgres_database: Any, pgbouncer: PgBouncer) -> tuple[str, str]:
    """A migrated database: its direct URL, and the URL through PgBouncer without the flag."""
    direct: str = make_postgres_database()
    upgrade_to_head(direct)
    return direct, pgbouncer.url(direct, flag=False)


def test_the_pooler_hint_is_added_once_to_a_clash_on_the_fast_path(
    bounced_database: tuple[str, str],
) -> None:
    """Two readers without a session (the driver fast path on a pooled connection), one
    after the other through PgBouncer without the flag: the second's ``_pg3_0`` clashes
    with the first's on the one server connection."""
    direct, url = bounced_database
    customer = make_customers(1, seed=32)[0]
    with make_session_factory(make_engine(direct)).begin() as session:
        CustomerRepository(session).upsert(customer)
    first, second = make_engine(url, read_only=True), make_engine(url, read_only=True)
    seen = SeenErrors()
    event.listen(second, "handle_error", seen)
    try:
        for _ in range(6):
            assert CustomerReader(first).get_json(customer["id"]) is not None
        reader = CustomerReader(second)
        for _ in range(5):
            assert reader.get_json(customer["id"]) is not None
        with pytest.raises(DBAPIError) as caught:
            reader.get_json(customer["id"])
    finally:
        first.dispose()
        second.dispose()

    error = caught.value
    assert getattr(error.orig, "sqlstate", None) == "42P05", error
    assert error.__notes__ == [POOLER_HINT]
    # Through the seam once: not retried (no lost connection), seen by the listener once.
    assert seen.seen == [("42P05", False, None)]


def test_the_pooler_hint_is_added_once_to_a_clash_on_the_pipelined_write_path(
    bounced_database: tuple[str, str],
) -> None:
    """Deliveries (the driver's pipelined writes) through PgBouncer without the flag, by
    one client and then another: the second's prepared statements clash with the first's
    left on the server connection. Each clash is raised through the seam once (not
    retried: no lost connection), with the hint once."""
    _, url = bounced_database
    customers = make_customers(20, seed=34)
    first, second = make_engine(url), make_engine(url)
    seen = SeenErrors()
    event.listen(second, "handle_error", seen)
    errors: list[DBAPIError] = []
    try:
        for customer in customers[:7]:
            ingest_delivery(make_session_factory(first), delivery(customer))
        for customer in customers[7:]:
            try:
                ingest_delivery(make_session_factory(second), delivery(customer))
            except DBAPIError as exc:
                errors.append(exc)
    finally:
        first.dispose()
        second.dispose()

    assert errors
    for error in errors:
        assert is_pooler_clash(error), error
        assert error.__notes__ == [POOLER_HINT]
    assert len(seen.seen) == len(errors)


# -- reads in a caller's session ---------------------------------------------------------


def ids_found(repo: CustomerRepository, customer: dict[str, Any], read: str) -> set[str]:
    """The ids one read of the repository finds (each read has a customer to find)."""
    if read == "get":
        found = repo.get(customer["id"])
        return {found.id} if found is not None else set()
    if read == "get_json":
        text = repo.get_json(customer["id"])
        return {json.loads(text)["id"]} if text is not None else set()
    if read == "by-source-id":
        found = repo.get_by_source_id(customer["source_id"])
        return {found.id} if found is not None else set()
    if read == "deleted_at":  # no tombstone for it: None, read without error
        return {customer["id"]} if repo.deleted_at(customer["id"]) is None else set()
    if read == "count":
        return {customer["id"]} if repo.count() >= 12 else set()
    if read == "find":
        return {found.id for found in repo.find(limit=100).customers}
    assert read == "iter_all"
    return {found.id for found in repo.iter_all(batch_size=5)}


SESSION_READS = ["get", "get_json", "by-source-id", "deleted_at", "count", "find", "iter_all"]


@pytest.mark.parametrize("read", SESSION_READS)
def test_a_read_in_a_callers_autocommit_session_is_retried_once_after_its_connection_was_lost(
    postgres_url: str, stored: list[dict[str, Any]], read: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    engine = make_engine(postgres_url)
    seen = SeenErrors()
    event.listen(engine, "handle_error", seen)
    customer = stored[2]
    try:
        with make_session_factory(engine, read_only=True)() as session:
            repo = CustomerRepository(session)
            # The session holds a connection.
            assert customer["id"] in ids_found(repo, customer, read)
            assert terminate_backends(postgres_url) >= 1
            with caplog.at_level(logging.WARNING, logger="repository.db.retry"):
                assert customer["id"] in ids_found(repo, customer, read)
            # And the session goes on reading.
            assert customer["id"] in ids_found(repo, customer, read)
    finally:
        engine.dispose()
    assert [disconnect for _, disconnect, _ in seen.seen] == [True]
    retries = [r for r in caplog.records if "retrying a read" in r.getMessage()]
    assert len(retries) == 1


@pytest.mark.parametrize("read", SESSION_READS)
def test_a_read_in_a_callers_transaction_is_not_retried_after_its_connection_was_lost(
    postgres_url: str, stored: list[dict[str, Any]], read: str
) -> None:
    engine = make_engine(postgres_url)
    seen = SeenErrors()
    event.listen(engine, "handle_error", seen)
    customer = stored[3]
    try:
        with Session(engine) as session:
            repo = CustomerRepository(session)
            # The transaction has begun.
            assert customer["id"] in ids_found(repo, customer, read)
            assert terminate_backends(postgres_url) >= 1
            with pytest.raises(DBAPIError) as caught:
                ids_found(repo, customer, read)
    finally:
        engine.dispose()
    assert caught.value.connection_invalidated is True
    assert len(seen.seen) == 1


# -- a dropped pool behind PgBouncer -----------------------------------------------------


def delivery(customer: dict[str, Any]) -> bytes:
    changed = {**customer, "name": f"{customer['name']} (renamed)",
               "updated_at": iso(datetime.now(UTC))}
    body = envelope(f"evt_{uuid.uuid4().hex[:20]}", "customer.updated", {"customer": changed},
                    changed["updated_at"])
    return json.dumps(body).encode()


def upsert(session: Session, customer: dict[str, Any]) -> UpsertOutcome:
    return CustomerRepository(session).upsert(customer)


def test_after_the_server_connections_behind_pgbouncer_are_dropped_reads_and_writes_succeed(
    make_postgres_database: Any, pgbouncer: PgBouncer
) -> None:
    direct: str = make_postgres_database()
    url = pgbouncer.url(direct)
    upgrade_to_head(url)
    customers = make_customers(16, seed=33)
    engine = make_engine(url)
    reader_engine = make_engine(url, read_only=True)
    seen = SeenErrors()
    for watched in (engine, reader_engine):
        event.listen(watched, "handle_error", seen)
    try:
        sessions = make_session_factory(engine)
        reader = CustomerReader(reader_engine)
        # Warm pools (ours and PgBouncer's): concurrent writes and reads.
        start = threading.Barrier(4)

        def warm(part: list[dict[str, Any]]) -> None:
            start.wait(timeout=10)
            for customer in part:
                run_in_transaction(sessions, partial(upsert, customer=customer))
                assert reader.get_json(customer["id"]) is not None

        with ThreadPoolExecutor(4) as pool:
            list(pool.map(warm, [customers[k::4] for k in range(4)]))
        assert terminate_backends(direct) >= 2

        found = [reader.get_json(c["id"]) for c in customers[:4]]
        by_source = [reader.get_json_by_source_id(c["source_id"]) for c in customers[4:8]]
        with make_session_factory(reader_engine, read_only=True)() as session:
            page = CustomerRepository(session).find(limit=100)
        renamed = {**customers[8], "name": "After the drop",
                   "updated_at": iso(datetime.now(UTC))}
        upserted = run_in_transaction(sessions, partial(upsert, customer=renamed), timeout=10)
        ingested = [ingest_delivery(sessions, delivery(c), timeout=10) for c in customers[9:12]]
    finally:
        engine.dispose()
        reader_engine.dispose()

    assert all(text is not None for text in found + by_source)
    assert len(page.customers) == 16
    assert upserted is UpsertOutcome.APPLIED
    assert [r.outcome for r in ingested] == [EventOutcome.APPLIED] * 3
    # Whatever the drop cost (PgBouncer may notice a dead server connection before a
    # client meets it, or pass the server's 57P01 on) was a disconnect, retried.
    assert all(disconnect for _, disconnect, _ in seen.seen), seen.seen
