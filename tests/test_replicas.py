"""Reads on a streaming standby (repository.db.replicas, ``--read-database-url``), against a
real primary and standby (tests/replication.py): reads are served by the standby, go to the
primary past the lag bound, when the standby is down, and for a write not replayed in
time; and keep answering while the primary is down."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from psycopg import sql
from sqlalchemy import Engine, text
from sqlalchemy.orm import Session

from repository import CustomerRepository, make_async_engine, make_engine, make_session_factory
from repository.db import AsyncReadRouter, FallbackReason, ReadRouter, require_position
from repository.db.schema import upgrade_to_head
from tests.replication import Pair, postgres_bindir, replicated_pair, wait_for_replay
from tests.servers import (
    ROOT,
    Reply,
    Server,
    child_env,
    cli_command,
    free_port,
    request,
    running_server,
)
from tests.voucherify_api import make_customers

# make test-slow: starts a primary and a standby, and measures replay lag (docs/testing.md).
pytestmark = pytest.mark.slow

APP_ID, APP_TOKEN = "replica-reader", "replica-reader-token-0123456789"
READ_ENV = {"CUSTOMER_STORE_APP_ID": APP_ID, "CUSTOMER_STORE_APP_TOKEN": APP_TOKEN}
CREDENTIALS = {"X-App-Id": APP_ID, "X-App-Token": APP_TOKEN}
#: Seconds any wait of these tests may take.
DEADLINE = 30.0
_SEEDS = itertools.count(1)


def _require_server_programs() -> None:
    if postgres_bindir() is None:
        message = "PostgreSQL's server programs (initdb, pg_basebackup) are not installed"
        if os.environ.get("CUSTOMER_STORE_REQUIRE_POSTGRES") == "1":
            pytest.fail(message)
        pytest.skip(message)


@contextlib.contextmanager
def migrated_pair() -> Iterator[Pair]:
    """A primary and its standby, the store migrated on the primary and replayed."""
    _require_server_programs()
    with replicated_pair() as pair:
        upgrade_to_head(pair.primary.url())
        wait_for_replay(pair.primary, pair.standby)
        yield pair


@pytest.fixture(scope="module")
def pair() -> Iterator[Pair]:
    """Shared by the tests that leave both servers running and replaying."""
    with migrated_pair() as shared:
        yield shared


@pytest.fixture(scope="module")
def primary(pair: Pair) -> Iterator[Engine]:
    engine = make_engine(pair.primary.url())
    yield engine
    engine.dispose()


@pytest.fixture(scope="module")
def replica(pair: Pair) -> Iterator[Engine]:
    engine = make_engine(pair.standby.url(), read_only=True)
    yield engine
    engine.dispose()


@pytest.fixture
def paused(pair: Pair) -> Iterator[Pair]:
    """The standby receives WAL but does not replay it, until the test ends."""
    pair.standby.execute("SELECT pg_wal_replay_pause()")
    try:
        yield pair
    finally:
        pair.standby.execute("SELECT pg_wal_replay_resume()")
        wait_for_replay(pair.primary, pair.standby)


def new_customer() -> dict[str, Any]:
    customer = make_customers(1, seed=next(_SEEDS))[0]
    customer["id"] = f"cust_{uuid.uuid4().hex}"
    customer["source_id"] = f"replica-test-{uuid.uuid4().hex}"
    return customer


def write(engine: Engine, customer: dict[str, Any]) -> None:
    with make_session_factory(engine).begin() as session:
        CustomerRepository(session).upsert(customer)


def lookup(customer_id: str) -> Callable[[Session], Any]:
    return lambda session: CustomerRepository(session).get(customer_id)


def in_recovery(session: Session) -> bool:
    return bool(session.execute(text("SELECT pg_is_in_recovery()")).scalar_one())


def wait_until(condition: Callable[[], bool], what: str, timeout: float = DEADLINE) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout} s: {what}")
        time.sleep(0.05)


# --- the router ---------------------------------------------------------------------------


def test_reads_are_served_by_the_standby(primary: Engine, replica: Engine) -> None:
    router = ReadRouter(primary, replica)
    assert router.engine() is replica
    assert router.run(in_recovery) is True
    assert router.lag == 0.0
    assert router.replica_reachable
    assert sum(router.fallbacks.values()) == 0


def test_without_a_replica_every_read_goes_to_the_primary(primary: Engine) -> None:
    router = ReadRouter(primary)
    assert router.engine() is primary
    assert router.run(in_recovery) is False
    assert router.commit_position() is None
    assert router.lag is None


def test_a_written_customer_is_read_from_the_standby_once_replayed(
    pair: Pair, primary: Engine, replica: Engine
) -> None:
    router = ReadRouter(primary, replica)
    customer = new_customer()
    write(primary, customer)
    position = router.commit_position()
    assert position is not None and require_position(position) == position
    found = router.run(lookup(customer["id"]), after=position)
    assert found is not None and found.id == customer["id"]
    assert router.engine(after=position) is replica
    assert router.fallbacks[FallbackReason.READ_YOUR_WRITES] == 0


def test_paused_replay_within_the_lag_bound_still_serves_reads_from_the_standby(
    paused: Pair, primary: Engine, replica: Engine
) -> None:
    customer = new_customer()
    write(primary, customer)
    router = ReadRouter(primary, replica, max_lag=3600)
    # Not replayed: the standby answers, without the new customer.
    assert router.run(lookup(customer["id"])) is None
    assert router.engine() is replica


def test_paused_replay_past_the_lag_bound_sends_reads_to_the_primary(
    paused: Pair, primary: Engine, replica: Engine
) -> None:
    customer = new_customer()
    write(primary, customer)
    router = ReadRouter(primary, replica, max_lag=0.5, check_interval=0)

    def behind() -> bool:
        router.refresh()
        return (router.lag or 0) > 0.5

    wait_until(behind, "the paused standby more than 0.5 s behind")
    found = router.run(lookup(customer["id"]))
    assert found is not None and found.id == customer["id"]  # the newest write, on the primary
    assert router.run(in_recovery) is False
    assert router.fallbacks[FallbackReason.LAG] >= 2
    # Replayed again: the standby serves reads again.
    paused.standby.execute("SELECT pg_wal_replay_resume()")
    wait_for_replay(paused.primary, paused.standby)
    router.refresh(force=True)
    assert router.lag == 0.0
    assert router.engine() is replica


def test_read_your_writes_waits_for_replay_then_reads_from_the_primary(
    paused: Pair, primary: Engine, replica: Engine
) -> None:
    router = ReadRouter(primary, replica, max_lag=3600)
    customer = new_customer()
    write(primary, customer)
    position = router.commit_position()
    assert position is not None
    started = time.monotonic()
    found = router.run(lookup(customer["id"]), after=position, wait=0.3)
    waited = time.monotonic() - started
    assert found is not None and found.id == customer["id"]
    assert 0.3 <= waited < 5
    assert router.fallbacks[FallbackReason.READ_YOUR_WRITES] == 1
    # A read without the position still goes to the (stale) standby: it is within the bound.
    assert router.run(lookup(customer["id"])) is None


def test_the_async_router_follows_the_same_rule(paused: Pair, primary: Engine) -> None:
    writer = primary

    async def scenario() -> None:
        primary = make_async_engine(paused.primary.url())
        replica = make_async_engine(paused.standby.url(), read_only=True)
        try:
            router = AsyncReadRouter(primary, replica, max_lag=3600)
            assert await router.run(in_recovery) is True
            async with (await router.sessions())() as session:
                assert await session.run_sync(in_recovery) is True
            write(writer, new_customer())
            position = await router.commit_position()
            assert position is not None
            # The commit lies past what the paused standby replayed.
            assert await router.engine(after=position, wait=0.2) is primary
            assert router.fallbacks[FallbackReason.READ_YOUR_WRITES] == 1
            strict = AsyncReadRouter(primary, replica, max_lag=0, check_interval=0)
            deadline = time.monotonic() + DEADLINE
            while await strict.engine() is not primary:
                assert time.monotonic() < deadline, "the paused standby never counted as behind"
                write(writer, new_customer())
                await asyncio.sleep(0.05)
            assert strict.fallbacks[FallbackReason.LAG] >= 1
        finally:
            await primary.dispose()
            await replica.dispose()

    asyncio.run(scenario())


@pytest.fixture(scope="module")
def reader_urls(pair: Pair) -> tuple[str, str]:
    """The primary's and the standby's URLs for a role with no statistics privileges (it
    cannot see the standby's WAL receiver), as an application role is."""
    pair.primary.execute("CREATE ROLE replica_reader LOGIN")
    pair.primary.execute("GRANT SELECT ON ALL TABLES IN SCHEMA public TO replica_reader",
                         database="customers")
    wait_for_replay(pair.primary, pair.standby)
    return tuple(  # type: ignore[return-value]
        cluster.url().replace("postgres@", "replica_reader@")
        for cluster in (pair.primary, pair.standby)
    )


def set_conninfo(pair: Pair, conninfo: str) -> None:
    # ALTER SYSTEM takes no bound parameters: the value as a quoted literal.
    statement = sql.SQL("ALTER SYSTEM SET primary_conninfo = {}").format(sql.Literal(conninfo))
    pair.standby.execute(statement.as_string())
    pair.standby.reload()


@contextlib.contextmanager
def cut_off(pair: Pair) -> Iterator[None]:
    """The standby's WAL receiver points at a closed port (the standby keeps serving what
    it has, and receives nothing new) until the block ends, then streams again."""
    conninfo = pair.standby.scalar("SHOW primary_conninfo")
    set_conninfo(pair, f"host=127.0.0.1 port={free_port()} user=postgres")
    try:
        wait_until(lambda: not pair.standby.scalar(
            "SELECT count(*) FROM pg_stat_wal_receiver WHERE status = 'streaming'"
        ), "the standby no longer streaming")
        yield
    finally:
        set_conninfo(pair, conninfo)
        wait_for_replay(pair.primary, pair.standby)


@pytest.mark.parametrize("role", ["superuser", "without statistics privileges"])
def test_a_standby_cut_off_from_a_live_primary_sends_reads_to_the_primary(
    pair: Pair, primary: Engine, reader_urls: tuple[str, str], role: str
) -> None:
    urls = reader_urls if role != "superuser" else (pair.primary.url(), pair.standby.url())
    router_primary = make_engine(urls[0])
    router_replica = make_engine(urls[1], read_only=True)
    try:
        with router_replica.connect() as connection:
            status = connection.execute(text("SELECT status FROM pg_stat_wal_receiver"))
            assert (status.scalar_one() is None) is (role != "superuser")
        router = ReadRouter(router_primary, router_replica, max_lag=0.5, check_interval=0)
        wait_until(lambda: router.engine() is router_replica, "reads on the standby")
        with cut_off(pair):
            # All it received is replayed: only the primary's position tells it is behind.
            customer = new_customer()
            write(primary, customer)
            wait_until(lambda: router.engine() is router_primary, "reads on the primary")
            assert router.lag is not None and router.lag > 0.5
            assert router.run(lookup(customer["id"])) is not None
            assert router.fallbacks[FallbackReason.LAG] >= 2
        wait_until(lambda: router.engine() is router_replica, "reads back on the standby")
    finally:
        router_primary.dispose()
        router_replica.dispose()


# --- the command line -----------------------------------------------------------------------


def cli(pair: Pair, *args: str, env: dict[str, str] | None = None
        ) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        cli_command(pair.primary.url(), *args), cwd=ROOT, env=child_env(env),
        capture_output=True, text=True, timeout=DEADLINE, check=False,
    )


def test_cli_get_reads_from_the_read_database_url_within_the_lag_bound(
    paused: Pair, primary: Engine
) -> None:
    customer = new_customer()
    write(primary, customer)
    standby = paused.standby.url()
    on_standby = cli(paused, "get", customer["id"], "--read-database-url", standby,
                     "--max-replica-lag", "3600")
    assert on_standby.returncode == 1, on_standby.stderr
    assert "no customer with id" in on_standby.stderr
    # The same through DATABASE_READ_URL.
    from_env = cli(paused, "get", customer["id"], "--max-replica-lag", "3600",
                   env={"DATABASE_READ_URL": standby})
    assert from_env.returncode == 1, from_env.stderr
    # The documented form: several hosts, a standby preferred (the primary is listed first).
    multi_host = paused.multi_host_url(target_session_attrs="prefer-standby")
    from_multi_host = cli(paused, "get", customer["id"], "--max-replica-lag", "3600",
                          env={"DATABASE_READ_URL": multi_host + "&load_balance_hosts=random"})
    assert from_multi_host.returncode == 1, from_multi_host.stderr
    assert "no customer with id" in from_multi_host.stderr
    # With no lag allowed, the paused standby is behind: the primary answers.
    on_primary = cli(paused, "get", customer["id"], "--read-database-url", standby,
                     "--max-replica-lag", "0")
    assert on_primary.returncode == 0, on_primary.stderr
    assert customer["id"] in on_primary.stdout


def test_cli_refuses_a_read_replica_whose_schema_is_not_at_head(pair: Pair) -> None:
    result = cli(pair, "stats", "--read-database-url", pair.standby.url("postgres"))
    assert result.returncode == 1
    assert "read replica" in result.stderr and "revision none" in result.stderr


def test_cli_refuses_a_sqlite_read_replica(pair: Pair, tmp_path: Path) -> None:
    result = cli(pair, "find", "--read-database-url", f"sqlite:///{tmp_path / 'x.db'}")
    assert result.returncode == 2
    assert "PostgreSQL standby" in result.stderr


def test_max_replica_lag_must_be_a_number_of_seconds(pair: Pair) -> None:
    result = cli(pair, "export", "--max-replica-lag", "soon")
    assert result.returncode == 2
    assert "--max-replica-lag" in result.stderr


# --- serve: the read API and /metrics ---------------------------------------------------------


def read_api(server: Server, path: str) -> Reply:
    return request(server.port, "GET", path, headers=CREDENTIALS)


def metric(server: Server, name: str) -> float | None:
    for line in server.get("/metrics").body.decode().splitlines():
        if line.startswith(name + " ") or line.startswith(name + "{"):
            return float(line.rsplit(" ", 1)[1])
    return None


def test_serve_reads_on_the_standby_until_it_is_too_far_behind(
    pair: Pair, primary: Engine, tmp_path: Path
) -> None:
    with running_server(
        pair.primary.url(), log_path=tmp_path / "serve.log", secret="whsec", env=READ_ENV,
        extra_args=["--read-database-url", pair.standby.url(), "--max-replica-lag", "2"],
    ) as server:
        replayed = new_customer()
        write(primary, replayed)
        wait_for_replay(pair.primary, pair.standby)
        answer = read_api(server, f"/v1/customers/{replayed['id']}")
        assert answer.status == 200, answer.data
        assert metric(server, "customer_store_replica_lag_seconds") == 0.0
        assert metric(server, "customer_store_replica_up") == 1.0
        assert metric(server, 'customer_store_replica_fallbacks_total{reason="lag"}') == 0.0

        pair.standby.execute("SELECT pg_wal_replay_pause()")
        try:
            newest = new_customer()
            write(primary, newest)

            def found() -> bool:
                reply = read_api(server, f"/v1/customers/{newest['id']}")
                assert reply.status in (200, 404), reply.data
                return reply.status == 200

            wait_until(found, "the newest customer read from the primary")
            lag = metric(server, "customer_store_replica_lag_seconds")
            assert lag is not None and lag > 2
            fell_back = metric(server, 'customer_store_replica_fallbacks_total{reason="lag"}')
            assert fell_back is not None and fell_back >= 1
        finally:
            pair.standby.execute("SELECT pg_wal_replay_resume()")
            wait_for_replay(pair.primary, pair.standby)


# --- a standby or a primary down (a pair of their own) -----------------------------------------


def test_reads_go_to_the_primary_while_the_standby_is_down_and_stay_up_without_the_primary(
    tmp_path: Path,
) -> None:
    with migrated_pair() as own:
        primary = make_engine(own.primary.url())
        replica = make_engine(own.standby.url(), read_only=True)
        try:
            customer = new_customer()
            write(primary, customer)
            wait_for_replay(own.primary, own.standby)
            router = ReadRouter(primary, replica, check_interval=0)
            assert router.engine() is replica

            own.standby.stop()
            assert router.run(lookup(customer["id"])) is not None
            assert router.run(in_recovery) is False
            assert router.fallbacks[FallbackReason.UNREACHABLE] >= 2
            assert not router.replica_reachable

            own.standby.start()
            wait_until(lambda: router.engine() is replica, "reads back on the standby")

            with running_server(
                own.primary.url(), log_path=tmp_path / "serve.log", secret="whsec",
                env=READ_ENV, extra_args=["--read-database-url", own.standby.url()],
            ) as server:
                own.primary.kill()
                assert router.run(lookup(customer["id"])) is not None
                assert router.run(in_recovery) is True
                reply = read_api(server, f"/v1/customers/{customer['id']}")
                assert reply.status == 200, reply.data
                # A read command, with the primary down, reads on the standby.
                got = cli(own, "get", customer["id"], "--read-database-url", own.standby.url())
                assert got.returncode == 0, got.stderr
                assert customer["id"] in got.stdout
                # After the primary's WAL receiver timeout the standby still serves.
                time.sleep(6)
                reply = read_api(server, f"/v1/customers/{customer['id']}")
                assert reply.status == 200, reply.data
                assert router.engine() is replica
        finally:
            primary.dispose()
            replica.dispose()
