"""Fault injection: the store keeps every accepted record when the database misbehaves.

Faults are injected into real databases, never mocked: PostgreSQL backends of a running
importer, ingester or HTTP receiver are killed with ``pg_terminate_backend``; a database
is taken "down" with ``ALTER DATABASE ... ALLOW_CONNECTIONS false`` (the cluster itself
is never touched); SQLite writers meet a lock held by another connection; PostgreSQL
transactions deadlock or fail serialization. Each test then checks that nothing accepted
was lost and nothing was stored twice.

Every PostgreSQL test uses a private database of its own. The figures each test measures
(terminations that hit, 503s, retries) are printed; run with ``-s`` to see them.
"""

from __future__ import annotations

import contextlib
import json
import logging
import random
import re
import sqlite3
import subprocess
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Connection, Engine, create_engine, event, func, select, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DBAPIError, OperationalError
from sqlalchemy.orm import Session, sessionmaker

from bench.customers import customer as bench_customer
from bench.customers import write_jsonl
from models.events import WebhookEventRow
from repository import CustomerRepository, make_engine, make_session_factory
from repository.db.retry import run_in_transaction
from repository.db.schema import upgrade_to_head
from tests.servers import ROOT, Reply, Server, child_env, cli_command, running_server
from tests.webhook_streams import build_stream, envelope

# make test-slow: kills connections under running processes and measures recovery (docs/testing.md).
pytestmark = pytest.mark.slow

SECRET = f"whsec-faults-{uuid.uuid4().hex}"
RETRY_LOG = "retrying transaction"
#: (total, applied, unchanged, stale, rejected): no customer is forgotten in these imports.
_IMPORT_SUMMARY = re.compile(
    r"imported (\d+) records in [\d.]+s: (\d+) applied, (\d+) unchanged, (\d+) stale, "
    r"0 forgotten, (\d+) rejected"
)
_INGEST_SUMMARY = re.compile(r"(\d+) (applied|stale|duplicate|ignored|rejected|malformed)")


# --- shared helpers ---------------------------------------------------------------------------


def report(test: str, **figures: object) -> None:
    """Print what was injected and what survived (shown with ``pytest -s``)."""
    print(f"\n[faults] {test}: " + ", ".join(f"{k}={v}" for k, v in figures.items()))


def database_name(url: str) -> str:
    name = make_url(url).database
    assert name
    return name


@contextlib.contextmanager
def admin_connection(postgres_admin_url: str) -> Iterator[Connection]:
    """An autocommit connection to the server's maintenance database (not the test's)."""
    admin = create_engine(postgres_admin_url, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as connection:
            yield connection
    finally:
        admin.dispose()


def terminate_backends(admin: Connection, database: str, application_name: str) -> int:
    """Kill the backends of one application in one database; how many were killed."""
    killed = admin.execute(
        text(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
            "WHERE datname = :db AND application_name = :app AND pid <> pg_backend_pid()"
        ),
        {"db": database, "app": application_name},
    ).scalars().all()
    return sum(1 for ok in killed if ok)


def backend_pids(admin: Connection, database: str, application_name: str) -> set[int]:
    return set(admin.execute(
        text(
            "SELECT pid FROM pg_stat_activity WHERE datname = :db AND application_name = :app"
        ),
        {"db": database, "app": application_name},
    ).scalars())


def wait_for(condition: Callable[[], bool], *, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout}s waiting for {what}", pytrace=False)
        time.sleep(0.02)


def count_rows(engine: Engine, table: str) -> int:
    with engine.connect() as connection:
        return int(connection.execute(text(f"SELECT count(*) FROM {table}")).scalar_one())  # noqa: S608


def stored_customers(url: str) -> dict[str, Any]:
    engine = make_engine(url)
    try:
        with Session(engine) as session:
            return {c.id: c.to_dict() for c in CustomerRepository(session).iter_all()}
    finally:
        engine.dispose()


def read_jsonl(path: Path) -> dict[str, Any]:
    by_id: dict[str, Any] = {}
    with path.open(encoding="utf-8") as lines:
        for line in lines:
            if line.strip():
                document = json.loads(line)
                assert document["id"] not in by_id, f"{document['id']} twice"
                by_id[document["id"]] = document
    return by_id


@pytest.fixture
def pg_url(make_database: Callable[[str], str]) -> str:
    """A private, migrated PostgreSQL database for one test."""
    url = make_database("postgresql")
    upgrade_to_head(url)
    return url


def _terminate_while_running(
    process: subprocess.Popen[bytes],
    *,
    postgres_admin_url: str,
    url: str,
    application_name: str,
    progress_table: str,
    times: int,
) -> list[tuple[int, int]]:
    """Kill the process's backends ``times`` times while it makes progress.

    Waits until ``progress_table`` has rows, kills the backends, waits until the process has
    reconnected and stored more, and so on. Returns (backends killed, rows then) per kill.
    """
    database = database_name(url)
    hits: list[tuple[int, int]] = []
    monitor = make_engine(url)
    try:
        with admin_connection(postgres_admin_url) as admin:
            seen = 0
            for _ in range(times):
                def progressed(seen: int = seen) -> bool:
                    return process.poll() is not None or (
                        count_rows(monitor, progress_table) > seen
                        and bool(backend_pids(admin, database, application_name))
                    )

                wait_for(progressed, timeout=60, what=f"progress in {progress_table}")
                if process.poll() is not None:
                    break
                killed = terminate_backends(admin, database, application_name)
                seen = count_rows(monitor, progress_table)
                hits.append((killed, seen))
                # Let it notice, reconnect and go on before the next kill.
                time.sleep(0.3)
    finally:
        monitor.dispose()
    return hits


def _run_terminating_its_connections_twice(
    url: str, postgres_admin_url: str, *args: str, progress_table: str, err_path: Path,
    timeout: float,
) -> tuple[list[tuple[int, int]], int, str]:
    """Run ``customer-store ARGS``, killing its backends twice while it makes progress in
    ``progress_table``; the hits (see _terminate_while_running), its exit status and stderr."""
    app = f"faults-{args[0]}-{uuid.uuid4().hex[:8]}"
    with err_path.open("wb") as err:
        process = subprocess.Popen(
            # libpq's PGAPPNAME names the process's backends.
            cli_command(url, *args),
            cwd=ROOT, env=child_env({"PGAPPNAME": app}), stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL, stderr=err,
        )
        try:
            hits = _terminate_while_running(
                process, postgres_admin_url=postgres_admin_url, url=url,
                application_name=app, progress_table=progress_table, times=2,
            )
            returncode = process.wait(timeout=timeout)
        finally:
            if process.poll() is None:
                process.kill()
                process.wait()
    return hits, returncode, err_path.read_text(encoding="utf-8", errors="replace")


# --- 1. the importer loses its connection twice -------------------------------------------------


def test_import_survives_its_connection_being_terminated_twice(
    pg_url: str, postgres_admin_url: str, tmp_path: Path
) -> None:
    source = tmp_path / "customers.jsonl"
    write_jsonl(str(source), 40_000)

    started = time.monotonic()
    hits, returncode, stderr = _run_terminating_its_connections_twice(
        pg_url, postgres_admin_url, "import", str(source), progress_table="customers",
        err_path=tmp_path / "import.err", timeout=180,
    )
    elapsed = time.monotonic() - started

    assert [killed > 0 for killed, _ in hits] == [True, True], (hits, stderr[-2000:])
    assert returncode == 0, stderr[-2000:]
    assert "Traceback" not in stderr
    summaries = _IMPORT_SUMMARY.findall(stderr)
    assert summaries, stderr[-2000:]
    total, applied, unchanged, stale, rejected = map(int, summaries[-1])
    assert (total, rejected) == (40_000, 0)
    assert applied + unchanged + stale == 40_000
    retries = stderr.count(RETRY_LOG)
    assert retries >= len(hits)  # each kill cost the batch in flight one attempt

    exported = tmp_path / "export.jsonl"
    finished = subprocess.run(
        cli_command(pg_url, "export", str(exported)), cwd=ROOT, env=child_env(),
        stdin=subprocess.DEVNULL, capture_output=True, timeout=120, check=False,
    )
    assert finished.returncode == 0, finished.stderr.decode()
    assert read_jsonl(exported) == read_jsonl(source)
    report(
        "import", records=40_000, terminations_hit=sum(k for k, _ in hits),
        stored_when_killed=[n for _, n in hits], retries_logged=retries,
        import_seconds=round(elapsed, 1),
    )


# --- 2. the HTTP receiver through a database outage --------------------------------------------


@dataclass
class Delivery:
    event_id: str
    body: bytes
    customer: dict[str, Any]
    expected_outcome: str  # "applied" for customer.created, "ignored" for other types


class Deliveries:
    """Fresh, unique deliveries: mostly customer.created, every fifth of another type."""

    def __init__(self, seed: int) -> None:
        self._rng = random.Random(seed)
        self._lock = threading.Lock()
        self._next = seed * 1_000_000

    def make(self) -> Delivery:
        with self._lock:
            index, self._next = self._next, self._next + 1
            customer = bench_customer(index, self._rng)
            event_id = "evcus_" + uuid.uuid4().hex[:20]
        event_type = "customer.rewarded" if index % 5 == 4 else "customer.created"
        body = json.dumps(
            envelope(event_id, event_type, {"customer": customer}, customer["updated_at"],
                     entity_id=customer["id"]),
            separators=(",", ":"),
        ).encode("utf-8")
        outcome = "applied" if event_type == "customer.created" else "ignored"
        return Delivery(event_id, body, customer, outcome)


class Poster(threading.Thread):
    """Posts fresh deliveries one after another until stopped; remembers every answer."""

    def __init__(self, server: Server, deliveries: Deliveries) -> None:
        super().__init__(daemon=True)
        self.server = server
        self.deliveries = deliveries
        self.answers: list[tuple[Delivery, int, float]] = []  # (delivery, status, at)
        self.failures: list[BaseException] = []
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.stop.is_set():
            delivery = self.deliveries.make()
            try:
                reply = self.server.deliver(delivery.body)
            except BaseException as exc:  # the server went away: recorded, then failed on
                self.failures.append(exc)
                return
            self.answers.append((delivery, reply.status, time.monotonic()))
            time.sleep(0.005)


def test_receiver_answers_503_during_a_database_outage_and_recovers_without_losing_events(
    pg_url: str, postgres_admin_url: str, tmp_path: Path
) -> None:
    database = database_name(pg_url)
    deliveries = Deliveries(seed=11)
    accepted: dict[str, Delivery] = {}  # answered 2xx
    refused: dict[str, Delivery] = {}  # answered 503: Voucherify would deliver them again

    def post(delivery: Delivery) -> Reply:
        reply = server.deliver(delivery.body)
        assert reply.status in (200, 503), (reply.status, reply.body)
        if reply.status == 200:
            assert json.loads(reply.body)["outcome"] == delivery.expected_outcome
            accepted[delivery.event_id] = delivery
        else:
            refused[delivery.event_id] = delivery
        return reply

    with running_server(pg_url, log_path=tmp_path / "server.log", secret=SECRET) as server, \
            admin_connection(postgres_admin_url) as admin:
        for _ in range(20):
            assert post(deliveries.make()).status == 200
        poster = Poster(server, Deliveries(seed=12))
        poster.start()
        try:
            time.sleep(0.5)
            # "Restart" PostgreSQL for this database only: no new sessions, old ones killed.
            admin.execute(text(f'ALTER DATABASE "{database}" ALLOW_CONNECTIONS false'))
            down_at = time.monotonic()
            killed = admin.execute(text(
                "SELECT count(*) FILTER (WHERE pg_terminate_backend(pid)) FROM pg_stat_activity "
                "WHERE datname = :db AND pid <> pg_backend_pid()"
            ), {"db": database}).scalar_one()
            try:
                outage_replies = []
                for _ in range(10):
                    started = time.monotonic()
                    reply = post(deliveries.make())
                    outage_replies.append(reply)
                    assert reply.status == 503, reply
                    assert int(reply.headers["retry-after"]) > 0
                    assert time.monotonic() - started < 10  # Voucherify gives up after 10 s
                health = server.get("/healthz")
                assert health.status == 503, health
                wait_for(lambda: any(s == 503 for _, s, _ in poster.answers), timeout=10,
                         what="the background poster to meet the outage")
                # Stay down a while, as a restart would, with deliveries coming in.
                time.sleep(max(0.0, down_at + 2.0 - time.monotonic()))
                assert server.get("/healthz").status == 503
                assert server.process.poll() is None
            finally:
                admin.execute(text(f'ALTER DATABASE "{database}" ALLOW_CONNECTIONS true'))
            up_at = time.monotonic()

            # It recovers by itself: no restart of the server.
            wait_for(lambda: server.get("/healthz").status == 200,
                     timeout=15, what="/healthz to answer 200 again")
            recovered_in = time.monotonic() - up_at
            for _ in range(10):
                assert post(deliveries.make()).status == 200
            wait_for(lambda: any(s == 200 and at > up_at for _, s, at in poster.answers),
                     timeout=10, what="the background poster to be accepted again")
        finally:
            poster.stop.set()
            poster.join(timeout=30)
        assert not poster.failures, poster.failures
        for delivery, status, _ in poster.answers:
            assert status in (200, 503), status
            (accepted if status == 200 else refused)[delivery.event_id] = delivery
        background_503 = sum(1 for _, s, _ in poster.answers if s == 503)
        background_2xx = sum(1 for _, s, _ in poster.answers if s == 200)
        assert background_503 > 0

        engine = make_engine(pg_url)
        try:
            sessions = make_session_factory(engine)
            # Nothing answered 2xx is lost.
            _assert_stored_once(sessions, accepted.values())
            # Voucherify delivers the refused ones again; now each is stored, exactly once.
            with sessions() as session:
                already = set(session.scalars(select(WebhookEventRow.event_id).where(
                    WebhookEventRow.event_id.in_(list(refused)))))
            for delivery in refused.values():
                reply = server.deliver(delivery.body)
                assert reply.status == 200, reply
                outcome = json.loads(reply.body)["outcome"]
                expected = "duplicate" if delivery.event_id in already else (
                    delivery.expected_outcome)
                assert outcome == expected, (delivery.event_id, outcome)
            # (An event refused although stored would be a duplicate on redelivery: counted twice.)
            _assert_stored_once(sessions, refused.values(), delivered_twice=already)
            with sessions() as session:
                rows = session.scalar(select(func.count()).select_from(WebhookEventRow))
            assert rows == len(accepted) + len(refused)
        finally:
            engine.dispose()
        assert server.process.poll() is None
    log = server.log()
    assert "Traceback" not in log
    assert " status=500 " not in log
    report(
        "receiver outage", backends_killed=killed,
        outage_seconds=round(up_at - down_at, 1), recovered_in_s=round(recovered_in, 2),
        foreground_503=len(outage_replies), background_503=background_503,
        background_2xx=background_2xx, accepted_2xx_first_time=len(accepted),
        redelivered=len(refused), refused_but_already_stored=len(already),
    )


def _assert_stored_once(
    sessions: sessionmaker[Session], deliveries: Any, *, delivered_twice: set[str] | None = None
) -> None:
    """One event row each, with the expected outcome and delivery count, and its customer."""
    deliveries = list(deliveries)
    with sessions() as session:
        rows = {
            row.event_id: row for row in session.scalars(select(WebhookEventRow).where(
                WebhookEventRow.event_id.in_([d.event_id for d in deliveries])))
        }
        repo = CustomerRepository(session)
        for delivery in deliveries:
            row = rows.get(delivery.event_id)
            assert row is not None, f"accepted event {delivery.event_id} was lost"
            assert row.outcome == delivery.expected_outcome, (delivery.event_id, row.outcome)
            twice = delivery.event_id in (delivered_twice or set())
            assert row.deliveries == (2 if twice else 1), (delivery.event_id, row.deliveries)
            stored = repo.get(delivery.customer["id"])
            if delivery.expected_outcome == "applied":
                assert stored is not None and stored.to_dict() == delivery.customer
            else:
                assert stored is None  # another event type never stores its customer


# --- 3. ingest (CLI) loses its connection -------------------------------------------------------


def test_ingest_survives_its_connection_being_terminated(
    pg_url: str, postgres_admin_url: str, tmp_path: Path
) -> None:
    stream = build_stream(60, seed=23)
    deliveries = stream.deliveries(seed=23)
    source = tmp_path / "deliveries.jsonl"
    source.write_bytes(b"".join(body + b"\n" for body in deliveries))

    hits, returncode, stderr = _run_terminating_its_connections_twice(
        pg_url, postgres_admin_url, "ingest", str(source), progress_table="webhook_events",
        err_path=tmp_path / "ingest.err", timeout=120,
    )

    assert hits and all(killed > 0 for killed, _ in hits), (hits, stderr[-2000:])
    assert returncode == 0, stderr[-2000:]
    assert "Traceback" not in stderr
    summary = [line for line in stderr.splitlines() if line.startswith("ingested ")][-1]
    reported = {kind: int(n) for n, kind in _INGEST_SUMMARY.findall(summary)}
    assert sum(reported.values()) == len(deliveries)
    assert reported.get("duplicate", 0) == len(deliveries) - len(stream.events)
    assert reported.get("rejected", 0) == reported.get("malformed", 0) == 0

    assert stored_customers(pg_url) == stream.expected
    engine = make_engine(pg_url)
    try:
        with Session(engine) as session:
            rows = session.execute(
                select(WebhookEventRow.event_id, WebhookEventRow.deliveries)).all()
    finally:
        engine.dispose()
    assert sorted(e for e, _ in rows) == sorted(event.event_id for event in stream.events)
    assert sum(n for _, n in rows) == len(deliveries)  # no delivery counted twice or lost
    report(
        "ingest", deliveries=len(deliveries), events=len(stream.events),
        terminations_hit=sum(k for k, _ in hits), events_stored_when_killed=[n for _, n in hits],
        retries_logged=stderr.count(RETRY_LOG),
    )


# --- 4. SQLite: "database is locked" is waited out or retried ---------------------------------


def _sqlite_path(url: str) -> str:
    path = make_url(url).database
    assert path
    return path


@contextlib.contextmanager
def sqlite_write_lock(url: str) -> Iterator[sqlite3.Connection]:
    """Another connection holding SQLite's write lock (BEGIN IMMEDIATE) until the block ends."""
    holder = sqlite3.connect(_sqlite_path(url), isolation_level=None, timeout=5)
    try:
        holder.execute("BEGIN IMMEDIATE")
        try:
            yield holder
        finally:
            holder.execute("COMMIT")
    finally:
        holder.close()


@pytest.mark.parametrize("journal_mode", ["wal", "delete"])
def test_sqlite_import_and_ingest_side_by_side_wait_out_a_held_write_lock(
    make_database: Callable[[str], str], tmp_path: Path, journal_mode: str
) -> None:
    # "delete": the rollback journal a database has before the store first opens it (as
    # Alembic leaves it); the first connection that can have the file to itself moves it
    # to WAL. Both must wait for the lock rather than fail.
    url = make_database("sqlite")
    upgrade_to_head(url)
    with contextlib.closing(sqlite3.connect(_sqlite_path(url))) as setup:
        assert setup.execute(f"PRAGMA journal_mode = {journal_mode}").fetchone() == (
            journal_mode,)
    source = tmp_path / "customers.jsonl"
    write_jsonl(str(source), 1_500, seed=5)
    stream = build_stream(30, seed=5)
    deliveries = stream.deliveries(seed=5)
    events_path = tmp_path / "deliveries.jsonl"
    events_path.write_bytes(b"".join(body + b"\n" for body in deliveries))
    hold = 2.0

    monitor = make_engine(url)
    try:
        with sqlite_write_lock(url):
            processes = [
                subprocess.Popen(
                    cli_command(url, *args), cwd=ROOT, env=child_env(),
                    stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                )
                for args in (("import", str(source), "--batch-size", "100"),
                             ("ingest", str(events_path)))
            ]
            time.sleep(hold)
            # Both writers are blocked: nothing stored yet, and both still running.
            blocked = [count_rows(monitor, "customers"), count_rows(monitor, "webhook_events")]
            running = [p.poll() is None for p in processes]
        outputs = [p.communicate(timeout=120) for p in processes]
    finally:
        monitor.dispose()

    assert blocked == [0, 0]
    assert running == [True, True]
    for process, (_out, err) in zip(processes, outputs, strict=True):
        assert process.returncode == 0, err.decode()[-2000:]
        assert b"Traceback" not in err
        assert b"database is locked" not in err
    summary = _IMPORT_SUMMARY.findall(outputs[0][1].decode())[-1]
    total, applied, unchanged, stale, rejected = map(int, summary)
    assert (total, applied + unchanged + stale, rejected) == (1_500, 1_500, 0)
    expected = read_jsonl(source)
    assert not expected.keys() & stream.expected.keys()
    expected.update(stream.expected)
    assert stored_customers(url) == expected
    retries = sum(err.count(RETRY_LOG.encode()) for _, err in outputs)
    report(f"sqlite two writers + held lock ({journal_mode})", lock_held_s=hold, customers=1_500,
           deliveries=len(deliveries), retries_logged=retries)


def _short_busy_timeout_engine(url: str) -> Engine:
    """An engine whose SQLite connections give up waiting for a lock after 0.1 s."""
    engine = make_engine(url, connect_args={"timeout": 0.1})

    @event.listens_for(engine, "connect")
    def _short_busy_timeout(dbapi_connection: Any, _record: Any) -> None:
        # Runs after make_engine's own listener, which sets a 30 s busy timeout.
        dbapi_connection.execute("PRAGMA busy_timeout = 100")

    return engine


@pytest.fixture
def sqlite_sessions(make_database: Callable[[str], str]) -> Iterator[tuple[str, Any]]:
    url = make_database("sqlite")
    upgrade_to_head(url)
    engine = _short_busy_timeout_engine(url)
    yield url, make_session_factory(engine)
    engine.dispose()


def _store_customer(index: int) -> Callable[[Session], Any]:
    customer = bench_customer(index, random.Random(index))

    def work(session: Session) -> Any:
        return CustomerRepository(session).upsert(customer)

    return work


def test_run_in_transaction_retries_a_locked_sqlite_database_until_the_lock_is_released(
    sqlite_sessions: tuple[str, sessionmaker[Session]], caplog: pytest.LogCaptureFixture
) -> None:
    url, sessions = sqlite_sessions
    caplog.set_level(logging.WARNING, logger="repository.db.retry")
    with sqlite_write_lock(url):
        # Without retries, the short busy timeout turns the held lock into an error.
        with pytest.raises(OperationalError, match="database is locked"):
            run_in_transaction(sessions, _store_customer(1), attempts=1)
        result: list[Any] = []
        worker = threading.Thread(
            target=lambda: result.append(run_in_transaction(sessions, _store_customer(2)))
        )
        worker.start()
        time.sleep(0.4)  # several 0.1 s busy timeouts run out meanwhile
        assert worker.is_alive()
    # The lock is released here; the next attempt gets through.
    worker.join(timeout=30)

    assert result, "run_in_transaction did not finish"
    retries = [r for r in caplog.records if RETRY_LOG in r.getMessage()]
    assert len(retries) >= 1
    with sessions() as session:
        assert CustomerRepository(session).get(f"cust_{2:024d}") is not None
        assert CustomerRepository(session).get(f"cust_{1:024d}") is None
    report("sqlite run_in_transaction, lock released", retries=len(retries))


def test_run_in_transaction_gives_up_on_a_sqlite_lock_that_is_never_released(
    sqlite_sessions: tuple[str, sessionmaker[Session]], caplog: pytest.LogCaptureFixture
) -> None:
    url, sessions = sqlite_sessions
    caplog.set_level(logging.WARNING, logger="repository.db.retry")
    calls = 0

    def work(session: Session) -> Any:
        nonlocal calls
        calls += 1
        return _store_customer(3)(session)

    with sqlite_write_lock(url), pytest.raises(OperationalError, match="database is locked"):
        run_in_transaction(sessions, work, attempts=3, base_delay=0.01)

    assert calls == 3
    assert len([r for r in caplog.records if RETRY_LOG in r.getMessage()]) == 2
    with sessions() as session:
        assert CustomerRepository(session).count() == 0
    report("sqlite run_in_transaction, lock never released", attempts=calls, raised=True)


# --- 5. PostgreSQL: deadlocks and serialization failures are retried ---------------------------


@pytest.fixture
def pg_accounts(pg_url: str) -> Iterator[Engine]:
    """Two rows to fight over, in a private database."""
    engine = make_engine(pg_url, pool_size=4, max_overflow=0)
    with engine.begin() as connection:
        connection.execute(text(
            "CREATE TABLE fault_accounts (id int PRIMARY KEY, on_call boolean NOT NULL)"))
        connection.execute(text("INSERT INTO fault_accounts VALUES (1, true), (2, true)"))
    yield engine
    engine.dispose()


Step = Callable[[Session, int, int], None]


def _run_pair(
    sessions: sessionmaker[Session], first: Step, second: Step, **retry: Any
) -> tuple[list[BaseException | None], list[int]]:
    """Run ``first`` then ``second`` for rows (1, 2) and (2, 1), in two threads at once.

    The first attempts meet at a barrier between the two steps, so they interleave; a
    retried attempt runs alone. Returns each thread's error (or None) and attempt count.
    """
    barrier = threading.Barrier(2, timeout=10)
    errors: list[BaseException | None] = [None, None]
    attempts = [0, 0]

    def thread(slot: int, mine: int, other: int) -> None:
        def attempt(session: Session) -> None:
            attempts[slot] += 1
            first(session, mine, other)
            if attempts[slot] == 1:
                with contextlib.suppress(threading.BrokenBarrierError):
                    barrier.wait()
            second(session, mine, other)

        try:
            run_in_transaction(sessions, attempt, **retry)
        except BaseException as exc:
            errors[slot] = exc

    threads = [threading.Thread(target=thread, args=(0, 1, 2)),
               threading.Thread(target=thread, args=(1, 2, 1))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    assert not any(t.is_alive() for t in threads)
    return errors, attempts


# Deadlock: each takes its own row, then (after the barrier) the other's.
def _take_mine(session: Session, mine: int, _other: int) -> None:
    session.execute(text("UPDATE fault_accounts SET on_call = false WHERE id = :id"),
                    {"id": mine})


def _take_other(session: Session, _mine: int, other: int) -> None:
    session.execute(text("UPDATE fault_accounts SET on_call = true WHERE id = :id"),
                    {"id": other})


# Write skew: two on-call doctors each leave if the other one is still on call.
def _look_at_other(session: Session, _mine: int, other: int) -> None:
    session.execute(text("SET TRANSACTION ISOLATION LEVEL SERIALIZABLE"))
    session.execute(text("SELECT on_call FROM fault_accounts WHERE id = :id"), {"id": other})


def _leave_if_other_on_call(session: Session, mine: int, other: int) -> None:
    other_on_call = session.execute(
        text("SELECT on_call FROM fault_accounts WHERE id = :id"), {"id": other}
    ).scalar_one()
    if other_on_call:
        session.execute(
            text("UPDATE fault_accounts SET on_call = false WHERE id = :id"), {"id": mine})


def _sqlstate(error: BaseException | None) -> str | None:
    return getattr(error.orig, "sqlstate", None) if isinstance(error, DBAPIError) else None


def _on_call(engine: Engine) -> dict[int, bool]:
    with engine.connect() as connection:
        return {i: bool(v) for i, v in connection.execute(
            text("SELECT id, on_call FROM fault_accounts ORDER BY id"))}


def test_run_in_transaction_retries_a_real_deadlock_until_both_succeed(
    pg_accounts: Engine,
) -> None:
    sessions = make_session_factory(pg_accounts)

    # Without retries, one of the two is chosen as the deadlock victim and fails.
    errors, attempts = _run_pair(sessions, _take_mine, _take_other, attempts=1)
    assert sorted(_sqlstate(e) or "ok" for e in errors) == ["40P01", "ok"]

    errors, attempts = _run_pair(sessions, _take_mine, _take_other)
    assert errors == [None, None]
    assert sorted(attempts) == [1, 2]  # the victim ran once more, and then succeeded
    # Both transactions committed in full; whichever ran last set the rows' final values.
    assert sorted(_on_call(pg_accounts).values()) == [False, True]
    report("postgresql deadlock", deadlocks=2, retries=sum(attempts) - 2, both_committed=True)


def test_run_in_transaction_retries_a_serialization_failure_and_keeps_the_invariant(
    pg_accounts: Engine,
) -> None:
    sessions = make_session_factory(pg_accounts)

    errors, attempts = _run_pair(sessions, _look_at_other, _leave_if_other_on_call)

    assert errors == [None, None]
    assert sorted(attempts) == [1, 2]  # one serialization failure, retried once
    # Serializable: at most one of them left; the retried one saw the other leave and stayed.
    assert _on_call(pg_accounts) in ({1: False, 2: True}, {1: True, 2: False})

    with pg_accounts.begin() as connection:
        connection.execute(text("UPDATE fault_accounts SET on_call = true"))
    errors, attempts = _run_pair(sessions, _look_at_other, _leave_if_other_on_call, attempts=1)
    assert sorted(_sqlstate(e) or "ok" for e in errors) == ["40001", "ok"]
    report("postgresql serialization failure", retries=1, invariant_kept=True)


