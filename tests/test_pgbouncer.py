"""The store behind a real PgBouncer in transaction pooling mode (tests/pgbouncer.py).

With ``?pgbouncer=true`` the store prepares no statements on the server and sends no
startup parameter a pooler refuses: migrations, concurrent writers and readers (threads and
asyncio), the CLI and ``serve`` all work through PgBouncer, and leave what the same writes
leave over a direct connection. Direct connections keep psycopg's prepared statements.

Without the flag, PgBouncer hands each transaction whichever server connection is free,
and psycopg's prepared statements (named ``_pg3_0``, ``_pg3_1``... per client connection)
meet other clients' of the same name: the error then says to add ``?pgbouncer=true``.
"""

from __future__ import annotations

import asyncio
import json
import random
import threading
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine, text
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session

from repository import (
    AsyncCustomerRepository,
    CustomerFilter,
    CustomerRepository,
    UpsertOutcome,
    make_async_engine,
    make_async_session_factory,
    make_engine,
)
from repository.db import (
    POOLER_HINT,
    behind_pooler,
    current_revision,
    first_line,
    head_revision,
    is_pooler_clash,
    upgrade_to_head,
)
from tests.pgbouncer import PgBouncer
from tests.servers import running_server
from tests.test_cli import Run, cli, describe, parse_jsonl
from tests.webhook_streams import envelope

# make test-slow: starts PgBouncer and customer-store processes (docs/testing.md).
pytestmark = pytest.mark.slow

FLAG_HINT = "?pgbouncer=true"
T0 = datetime(2024, 5, 1, 9, 0, tzinfo=UTC)
THREADS = 4
TASKS = 6
ROUNDS = 60
#: Customers every writer writes (versions never tie: each writer has its own residue).
SHARED = [f"cust_shared{k}" for k in range(3)]
SECRET = "whsec_pgbouncer_test"
READ_ENV = {"CUSTOMER_STORE_APP_ID": "store-reader", "CUSTOMER_STORE_APP_TOKEN": "reader-token"}


# -- databases ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Database:
    """A fresh database: its direct URL, and the same database through PgBouncer."""

    direct: str
    pooled: str
    bouncer: PgBouncer

    def without_flag(self) -> str:
        return self.bouncer.url(self.direct, flag=False)


@pytest.fixture
def fresh(pgbouncer: PgBouncer, make_postgres_database: Any) -> Database:
    """An empty database, not migrated, that PgBouncer has not connected to yet."""
    direct: str = make_postgres_database()
    return Database(direct, pgbouncer.url(direct), pgbouncer)


@pytest.fixture
def migrated(fresh: Database) -> Database:
    """A database migrated through PgBouncer with the flag."""
    upgrade_to_head(fresh.pooled)
    return fresh


@pytest.fixture
def migrated_directly(fresh: Database) -> Database:
    """A database migrated over a direct connection: PgBouncer's pool for it is empty."""
    upgrade_to_head(fresh.direct)
    return fresh


def stored_state(url: str) -> list[dict[str, Any]]:
    engine = make_engine(url)
    try:
        with Session(engine) as session:
            return [customer.to_dict() for customer in CustomerRepository(session).iter_all()]
    finally:
        engine.dispose()


def write_directly(url: str, payloads: list[dict[str, Any]]) -> None:
    engine = make_engine(url)
    try:
        with Session(engine) as session:
            repo = CustomerRepository(session)
            for customer in payloads:
                repo.upsert(customer)
            session.commit()
    finally:
        engine.dispose()


def replayed_directly(make_postgres_database: Any, writes: list[dict[str, Any]]) -> list[Any]:
    """What ``writes`` leave in a fresh database written over a direct connection."""
    direct: str = make_postgres_database()
    upgrade_to_head(direct)
    write_directly(direct, random.Random(7).sample(writes, len(writes)))
    return stored_state(direct)


# -- the flag ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("query", "expected"),
    [("", False), ("?pgbouncer=true", True), ("?pgbouncer=1", True), ("?pgbouncer=TRUE", True),
     ("?pgbouncer=false", False), ("?pgbouncer=0", False),
     ("?sslmode=disable&pgbouncer=true", True)],
)
def test_the_flag_is_read_from_the_url(query: str, expected: bool) -> None:
    assert behind_pooler(f"postgresql://u@db.example/store{query}") is expected


@pytest.mark.parametrize(
    "url",
    ["postgresql://u@h/db?pgbouncer=yes", "postgresql://u@h/db?pgbouncer=",
     "postgresql://u@h/db?pgbouncer=true&pgbouncer=false", "sqlite:///x.db?pgbouncer=true"],
)
def test_other_values_of_the_flag_are_refused(url: str) -> None:
    with pytest.raises(ValueError, match="pgbouncer"):
        make_engine(url)
    with pytest.raises(ValueError, match="pgbouncer"):
        make_async_engine(url)


@pytest.mark.parametrize("make", [make_engine, make_async_engine])
def test_the_flag_never_reaches_the_driver(make: Callable[..., Any]) -> None:
    engine = make("postgres://u:pw@db.example:6432/store?pgbouncer=true&sslmode=require")
    url = (engine.sync_engine if hasattr(engine, "sync_engine") else engine).url
    assert url.drivername == "postgresql+psycopg"
    assert dict(url.query) == {"sslmode": "require"}


def test_a_bad_flag_is_a_usage_error_of_the_cli(tmp_path: Path) -> None:
    run = cli("export", url="postgresql://postgres@127.0.0.1:5432/test?pgbouncer=maybe",
              cwd=tmp_path)
    assert run.returncode == 2, describe(run)
    assert "bad database URL: ?pgbouncer= must be true, false, 1 or 0" in run.stderr


class _ServerError(Exception):
    def __init__(self, sqlstate: str, message: str) -> None:
        super().__init__(message)
        self.sqlstate = sqlstate


@pytest.mark.parametrize(
    ("sqlstate", "message", "clash"),
    [("42P05", 'prepared statement "_pg3_0" already exists', True),
     ("26000", 'prepared statement "_pg3_7" does not exist', True),
     ("08P01", 'bind message supplies 2 parameters, but prepared statement "_pg3_3" requires 1',
      True),
     ("08P01", "insufficient data left in message", True),
     ("08P01", "unsupported startup parameter: options", False),
     ("26000", 'cursor "c" does not exist', False),
     ("40001", "could not serialize access due to concurrent update", False)],
)
def test_clashes_of_prepared_statements_are_told_apart(
    sqlstate: str, message: str, clash: bool
) -> None:
    error = DBAPIError.instance(None, None, _ServerError(sqlstate, message), Exception)
    assert is_pooler_clash(error) is clash
    assert first_line(error) == (f"{message} ({POOLER_HINT})" if clash else message)


def _driver_settings(engine: Engine) -> tuple[int | None, str, list[str]]:
    """prepare_threshold, the ``options`` startup parameter, and the session's prepared
    statements, seen on one connection after the same ``get`` ran ten times in a transaction
    (so that PgBouncer keeps the server connection for all of it)."""
    with Session(engine) as session:
        repo = CustomerRepository(session)
        for _ in range(10):
            assert repo.get("cust_prepared") is not None
        names = list(session.scalars(text("SELECT statement FROM pg_prepared_statements")))
        driver = session.connection().connection.driver_connection
        assert driver is not None
        return driver.prepare_threshold, driver.info.options, names


def test_direct_connections_keep_prepared_statements_and_the_flag_prepares_none(
    migrated: Database,
) -> None:
    write_directly(migrated.direct, [payload("cust_prepared", 1, 0)])
    direct = make_engine(migrated.direct)
    pooled = make_engine(migrated.pooled)
    try:
        threshold, options, statements = _driver_settings(direct)
        assert (threshold, options) == (5, "")  # psycopg's default; no startup options
        assert any("FROM customers" in s and "json_agg" in s for s in statements), statements
        threshold, options, statements = _driver_settings(pooled)
        assert (threshold, options, statements) == (None, "", [])
    finally:
        direct.dispose()
        pooled.dispose()


def test_migrations_run_through_pgbouncer_with_the_flag(fresh: Database) -> None:
    upgrade_to_head(fresh.pooled)
    upgrade_to_head(fresh.pooled)  # again: nothing to do
    engine = make_engine(fresh.pooled)
    try:
        assert current_revision(engine) == head_revision()
    finally:
        engine.dispose()
    # No session setting of the migrations stayed on PgBouncer's server connections.
    engine = make_engine(fresh.pooled, pool_size=8)
    try:
        connections = [engine.connect() for _ in range(8)]
        for connection in connections:
            connection.begin()
            assert connection.scalar(text("SHOW lock_timeout")) == "0"
        for connection in connections:
            connection.close()
    finally:
        engine.dispose()


# -- concurrent writers and readers ----------------------------------------------------


def payload(customer_id: str, version: int, writer: int) -> dict[str, Any]:
    """Version ``version`` of a customer (``updated_at`` ``version`` ms after T0)."""
    at = T0 + timedelta(milliseconds=version)
    stamp = at.strftime("%Y-%m-%dT%H:%M:%S.") + f"{at.microsecond // 1000:03d}Z"
    return {
        "id": customer_id,
        "source_id": f"src-{customer_id}",
        "name": f"Writer {writer} version {version}",
        "email": f"{customer_id}@pool.example",
        "address": {"city": "Kraków", "country": "PL", "postal_code": None},
        "metadata": {"writer": writer, "version": version, "big": 2**70},
        "summary": {"orders": {"total_amount": version * 100, "total_count": version}},
        "loyalty": {"points": version, "campaigns": {f"Campaign {writer}": {"points": version}}},
        "referrals": {"total": 1, "campaigns": [{
            "campaign_id": f"camp_{version}", "referrer_id": "cust_ref",
            "related_object_id": f"r_{version}", "related_object_type": "redemption",
            "date": stamp,
        }]},
        "created_at": "2024-01-01T00:00:00.000Z",
        "updated_at": stamp,
        "object": "customer",
    }


@dataclass
class Workload:
    """What each writer writes and reads, and what it saw that was wrong."""

    writers: int
    writes: list[dict[str, Any]] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def round(self, writer: int, index: int) -> tuple[dict[str, Any], dict[str, Any]]:
        """The two payloads of one round: the writer's own customer and a shared one."""
        version = index * self.writers + writer + 1
        own = payload(f"cust_w{writer}_{index % 4}", version, writer)
        shared = payload(SHARED[index % len(SHARED)], version, writer)
        with self._lock:
            self.writes += [own, shared]
        return own, shared

    def check(self, own: dict[str, Any], shared: dict[str, Any], got: Any, got_shared: Any,
              outcomes: list[UpsertOutcome]) -> None:
        """After a round committed: the writer's own customer reads back as written; the
        shared one at least as new as this round's (newest wins)."""
        problems = []
        if outcomes[0] is not UpsertOutcome.APPLIED:
            problems.append(f"{own['id']}: {outcomes[0]}")
        if got is None or got.to_dict() != own:
            problems.append(f"{own['id']} read back as {got and got.to_dict()}")
        if got_shared is None or got_shared.to_dict()["updated_at"] < shared["updated_at"]:
            problems.append(f"{shared['id']} read back older than {shared['updated_at']}")
        if problems:
            with self._lock:
                self.problems += problems

    def expected(self) -> list[dict[str, Any]]:
        newest: dict[str, dict[str, Any]] = {}
        for write in self.writes:
            current = newest.get(write["id"])
            if current is None or write["updated_at"] > current["updated_at"]:
                newest[write["id"]] = write
        return [newest[key] for key in sorted(newest)]


def test_threads_writing_and_reading_through_pgbouncer_leave_what_a_direct_connection_does(
    migrated: Database, make_postgres_database: Any
) -> None:
    work = Workload(THREADS)
    engine = make_engine(migrated.pooled)
    # Reads as a service's request handlers do them: each statement in a transaction of
    # its own, so nothing (no ROLLBACK) ever resets psycopg's count of executions.
    reader = make_engine(migrated.pooled, read_only=True)
    start = threading.Barrier(THREADS)

    def writer(number: int) -> None:
        start.wait()
        with Session(engine) as session, Session(reader) as reads:
            repo, read_repo = CustomerRepository(session), CustomerRepository(reads)
            for index in range(ROUNDS):
                own, shared = work.round(number, index)
                outcomes = [repo.upsert(own), repo.upsert(shared)]
                session.commit()
                work.check(own, shared, read_repo.get(own["id"]), read_repo.get(shared["id"]),
                           outcomes)
                if index % 10 == 0:
                    found = read_repo.find(CustomerFilter(source_id=f"src-{own['id']}"))
                    if [c.id for c in found.customers] != [own["id"]]:
                        work.problems.append(f"find by source_id of {own['id']}: {found}")

    try:
        with ThreadPoolExecutor(max_workers=THREADS) as pool:
            for future in [pool.submit(writer, n) for n in range(THREADS)]:
                future.result()  # re-raises a writer's error
    finally:
        engine.dispose()
        reader.dispose()

    assert work.problems == []
    expected = work.expected()
    assert len(expected) == THREADS * 4 + len(SHARED)
    assert stored_state(migrated.direct) == expected
    assert replayed_directly(make_postgres_database, work.writes) == expected


def test_async_tasks_writing_and_reading_through_pgbouncer_leave_what_a_direct_connection_does(
    migrated: Database, make_postgres_database: Any
) -> None:
    work = Workload(TASKS)

    async def scenario() -> None:
        engine = make_async_engine(migrated.pooled)
        reader = make_async_engine(migrated.pooled, read_only=True)
        sessions = make_async_session_factory(engine)
        reads = make_async_session_factory(reader)

        async def task(number: int) -> None:
            async with sessions() as session, reads() as read_session:
                repo = AsyncCustomerRepository(session)
                read_repo = AsyncCustomerRepository(read_session)
                for index in range(ROUNDS):
                    own, shared = work.round(number, index)
                    outcomes = [await repo.upsert(own), await repo.upsert(shared)]
                    await session.commit()
                    work.check(own, shared, await read_repo.get(own["id"]),
                               await read_repo.get(shared["id"]), outcomes)

        try:
            await asyncio.gather(*(task(n) for n in range(TASKS)))
        finally:
            await engine.dispose()
            await reader.dispose()

    asyncio.run(scenario())
    assert work.problems == []
    expected = work.expected()
    assert len(expected) == TASKS * 4 + len(SHARED)
    assert stored_state(migrated.direct) == expected
    assert replayed_directly(make_postgres_database, work.writes) == expected


# -- the command line and serve ----------------------------------------------------------


def _jsonl(values: list[Any]) -> bytes:
    return b"".join(json.dumps(v, ensure_ascii=False).encode() + b"\n" for v in values)


def _event(event_type: str, customer: dict[str, Any], at: str) -> dict[str, Any]:
    return envelope(f"evcus_{uuid.uuid4().hex}", event_type, {"customer": customer}, at,
                    entity_id=customer["id"])


def _ok(run: Run) -> Run:
    assert run.returncode == 0, describe(run)
    return run


def test_the_cli_works_through_pgbouncer_with_the_flag(fresh: Database, tmp_path: Path) -> None:
    url = fresh.pooled
    _ok(cli("migrate", url=url, cwd=tmp_path))
    imported = [payload(f"cust_cli{i:03d}", 10, 0) for i in range(40)]
    (tmp_path / "a.jsonl").write_bytes(_jsonl(imported[:20]))
    (tmp_path / "b.jsonl").write_bytes(_jsonl(imported[20:]))
    updated = [payload(f"cust_cli{i:03d}", 20, 1) for i in range(0, 40, 4)]
    created = [payload(f"cust_hook{i:03d}", 5, 2) for i in range(10)]
    events = [_event("customer.updated", c, c["updated_at"]) for c in updated]
    events += [_event("customer.created", c, c["updated_at"]) for c in created]
    deleted = payload("cust_cli001", 30, 3)
    events.append(_event("customer.deleted", deleted, deleted["updated_at"]))
    (tmp_path / "events.jsonl").write_bytes(_jsonl(events))

    # Two imports in small batches and an ingest at once: PgBouncer mixes their transactions
    # over its server connections.
    with ThreadPoolExecutor(max_workers=3) as pool:
        runs = list(pool.map(lambda args: cli(*args, url=url, cwd=tmp_path), [
            ("import", "a.jsonl", "--batch-size", "3"),
            ("import", "b.jsonl", "--batch-size", "3"),
            ("ingest", "events.jsonl"),
        ]))
    for run in runs:
        _ok(run)
    assert "imported 20 records" in runs[0].stderr and "imported 20 records" in runs[1].stderr
    assert "ingested 21 events" in runs[2].stderr

    found = _ok(cli("find", "--email", "CUST_CLI004@pool.example", url=url, cwd=tmp_path))
    assert parse_jsonl(found.stdout) == [payload("cust_cli004", 20, 1)]
    forgot = _ok(cli("forget", "cust_cli002", url=url, cwd=tmp_path))
    assert "forgot cust_cli002: customer removed" in forgot.stderr

    newest = {c["id"]: c for c in imported} | {c["id"]: c for c in updated + created}
    del newest["cust_cli001"], newest["cust_cli002"]
    exported = _ok(cli("export", url=url, cwd=tmp_path))
    assert parse_jsonl(exported.stdout) == [newest[key] for key in sorted(newest)]
    assert stored_state(fresh.direct) == [newest[key] for key in sorted(newest)]


def test_serve_receives_webhooks_and_serves_reads_through_pgbouncer_with_the_flag(
    migrated: Database, tmp_path: Path
) -> None:
    work = Workload(THREADS)
    with running_server(migrated.pooled, log_path=tmp_path / "serve.log", secret=SECRET,
                        env=READ_ENV) as server:
        headers = {"X-App-Id": READ_ENV["CUSTOMER_STORE_APP_ID"],
                   "X-App-Token": READ_ENV["CUSTOMER_STORE_APP_TOKEN"]}

        def read(customer_id: str) -> Any:
            reply = server.connection()
            reply.request("GET", f"/v1/customers/{customer_id}", headers=headers)
            response = reply.getresponse()
            body = response.read()
            reply.close()
            return json.loads(body) if response.status == 200 else response.status

        def sender(number: int) -> None:
            for index in range(ROUNDS // 2):
                own, shared = work.round(number, index)
                for customer in (own, shared):
                    event = _event("customer.updated", customer, customer["updated_at"])
                    reply = server.deliver(json.dumps(event).encode())
                    if reply.status != 200 or reply.json()["outcome"] not in (
                        "applied", "stale"
                    ):
                        work.problems.append(f"{reply.status} {reply.data}")
                if read(own["id"]) != own:
                    work.problems.append(f"GET {own['id']}: {read(own['id'])}")

        with ThreadPoolExecutor(max_workers=THREADS) as pool:
            for future in [pool.submit(sender, n) for n in range(THREADS)]:
                future.result()
        gone = payload(SHARED[0], 10_000, 9)
        reply = server.deliver(json.dumps(_event("customer.deleted", gone, gone["updated_at"]))
                               .encode())
        assert (reply.status, reply.json()["outcome"]) == (200, "applied")
        assert read(SHARED[0]) == 404
        log = server.log()

    assert work.problems == []
    assert "status=200" in log and "refused=" not in log, log
    expected = [c for c in work.expected() if c["id"] != SHARED[0]]
    assert stored_state(migrated.direct) == expected
    engine = make_engine(migrated.direct)
    try:
        with Session(engine) as session:
            assert CustomerRepository(session).deleted_at(SHARED[0]) == T0 + timedelta(seconds=10)
    finally:
        engine.dispose()


# -- without the flag ----------------------------------------------------------------------


def test_without_the_flag_a_second_client_clashes_and_is_told_to_add_it(
    migrated_directly: Database,
) -> None:
    """Two read-only clients one after the other, so that PgBouncer runs everything on one
    server connection: the first has psycopg prepare ``get`` there as ``_pg3_0`` (at its
    sixth run), and the second, preparing its own ``_pg3_0``, finds that name taken."""
    write_directly(migrated_directly.direct, [payload("cust_clash", 1, 0)])
    url = migrated_directly.without_flag()
    first, second = make_engine(url, read_only=True), make_engine(url, read_only=True)
    try:
        with Session(first) as session:
            for _ in range(6):
                assert CustomerRepository(session).get("cust_clash") is not None
        with Session(second) as session:
            repo = CustomerRepository(session)
            for _ in range(5):
                assert repo.get("cust_clash") is not None
            with pytest.raises(DBAPIError) as caught:
                repo.get("cust_clash")
    finally:
        first.dispose()
        second.dispose()

    error = caught.value
    assert getattr(error.orig, "sqlstate", None) == "42P05"
    assert str(error.orig) == 'prepared statement "_pg3_0" already exists'
    assert is_pooler_clash(error)
    assert error.__notes__ == [POOLER_HINT]
    assert first_line(error) == f'prepared statement "_pg3_0" already exists ({POOLER_HINT})'
    assert FLAG_HINT in POOLER_HINT


def test_without_the_flag_concurrent_reads_work_or_fail_naming_the_flag(
    migrated_directly: Database,
) -> None:
    """Every client prepares the same ``get`` as ``_pg3_0``, so wherever a client's
    ``_pg3_0`` runs it is the right statement: a read either returns the customer or fails
    because the server connection has no ``_pg3_0`` yet (26000) or already has one (42P05),
    and says to add the flag."""
    ids = [f"cust_read{i}" for i in range(8)]
    write_directly(migrated_directly.direct,
                   [payload(customer_id, n, 0) for n, customer_id in enumerate(ids)])
    engine = make_engine(migrated_directly.without_flag(), read_only=True)
    outcomes: list[Any] = []
    start = threading.Barrier(THREADS)

    def reader(number: int) -> None:
        start.wait()
        with Session(engine) as session:
            repo = CustomerRepository(session)
            for index in range(ROUNDS):
                customer_id = ids[(index + number) % len(ids)]
                try:
                    found = repo.get(customer_id)
                except DBAPIError as exc:
                    outcomes.append(exc)
                else:
                    outcomes.append(found is not None and found.id == customer_id)

    try:
        with ThreadPoolExecutor(max_workers=THREADS) as pool:
            for future in [pool.submit(reader, n) for n in range(THREADS)]:
                future.result()
    finally:
        engine.dispose()

    assert len(outcomes) == THREADS * ROUNDS
    errors = [o for o in outcomes if isinstance(o, DBAPIError)]
    assert all(o is True for o in outcomes if not isinstance(o, DBAPIError))
    for error in errors:
        assert getattr(error.orig, "sqlstate", None) in ("42P05", "26000"), error
        assert error.__notes__ == [POOLER_HINT]
        assert first_line(error).endswith(f"({POOLER_HINT})")


def test_without_the_flag_the_cli_says_to_add_it(
    migrated_directly: Database, tmp_path: Path
) -> None:
    """Two imports in batches of one, one after the other through PgBouncer (one server
    connection): the first leaves its prepared statements there, and the second fails at
    its sixth batch naming the flag; with the flag, the same import works."""
    url = migrated_directly.without_flag()
    for name, prefix in (("first.jsonl", "cust_one"), ("second.jsonl", "cust_two")):
        (tmp_path / name).write_bytes(_jsonl([payload(f"{prefix}{i}", 1, 0) for i in range(8)]))
    _ok(cli("import", "first.jsonl", "--batch-size", "1", url=url, cwd=tmp_path))
    failed = cli("import", "second.jsonl", "--batch-size", "1", url=url, cwd=tmp_path)
    assert failed.returncode == 1, describe(failed)
    assert 'database error: prepared statement "_pg3_0" already exists' in failed.stderr
    assert f"({POOLER_HINT})" in failed.stderr, describe(failed)

    flagged = _ok(cli("import", "second.jsonl", "--batch-size", "1", url=migrated_directly.pooled,
                      cwd=tmp_path))
    assert "imported 8 records" in flagged.stderr
    assert len(stored_state(migrated_directly.direct)) == 16

