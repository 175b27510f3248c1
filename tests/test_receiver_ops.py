"""The receiver in production: ``/metrics``, ``/healthz`` as a readiness probe, JSON logs and
a graceful stop on SIGTERM.

Metrics and readiness are checked in process (httpx's ASGI transport on the tests' event
loop, a registry per app);
JSON logs and SIGTERM on real ``customer-store serve`` processes (tests/servers.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import http.client
import json
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
from alembic import command
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import create_engine, select, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import OperationalError
from sqlalchemy.pool import NullPool
from starlette.applications import Starlette

from customer_store.metrics import ReceiverMetrics
from customer_store.web import create_app
from models.signature import SIGNATURE_HEADER, sign
from repository import (
    make_async_engine,
    make_async_session_factory,
    make_engine,
    make_session_factory,
    run_in_transaction,
    run_in_transaction_async,
)
from repository.db import alembic_config, head_revision
from repository.db.schema import upgrade_to_head
from repository.db.tables import events
from repository.voucherify import MirrorState
from repository.voucherify.mirror_state import save_mirror_state
from tests.conftest import load_example_customers
from tests.servers import WEBHOOK_PATH, child_env, post, running_server
from tests.test_secrets import cli
from tests.webhook_streams import envelope, iso

SECRET = f"whsec-ops-{uuid.uuid4().hex}"
DB_PASSWORD = "OpS-pw-987"


def customer(n: int | str, **changes: Any) -> dict[str, Any]:
    base = next(raw for name, raw in load_example_customers() if name.startswith("03-"))
    return {**base, "id": f"cust_ops{n}", "source_id": f"src_ops{n}", **changes}


def delivery(data_customer: dict[str, Any], event_type: str = "customer.created") -> bytes:
    document = envelope(
        f"evcus_{uuid.uuid4().hex}", event_type, {"customer": data_customer},
        iso(datetime.now(UTC)), entity_id=data_customer["id"],
    )
    return json.dumps(document).encode()


def signed(body: bytes, secret: str = SECRET) -> dict[str, str]:
    return {"Content-Type": "application/json", SIGNATURE_HEADER: sign(body, secret.encode())}


def event_id_of(body: bytes) -> str:
    event_id: str = json.loads(body)["event"]["id"]
    return event_id


def samples(exposition: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of a text exposition by (name, sorted labels)."""
    found = {}
    for family in text_string_to_metric_families(exposition):
        for sample in family.samples:
            found[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return found


@pytest.fixture
def sqlite_url(make_database: Any) -> str:
    url: str = make_database("sqlite")
    upgrade_to_head(url)
    return url


class InProcess:
    """HTTP to an app in this process, on the tests' event loop, with a blocking face."""

    def __init__(self, app: Starlette, runner: asyncio.Runner) -> None:
        self._runner = runner
        self._client = httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app), base_url="http://receiver.test"
        )

    def get(self, path: str, **options: Any) -> httpx.Response:
        return self._runner.run(self._client.get(path, **options))

    def post(self, path: str, **options: Any) -> httpx.Response:
        return self._runner.run(self._client.post(path, **options))

    def close(self) -> None:
        self._runner.run(self._client.aclose())


@contextlib.contextmanager
def serving(app: Starlette, runner: asyncio.Runner) -> Iterator[InProcess]:
    client = InProcess(app, runner)
    try:
        yield client
    finally:
        client.close()


@pytest.fixture
def client_for(runner: asyncio.Runner) -> Any:
    """``client_for(url)``: the receiver on ``url`` in this process (without a connection
    pool, so that nothing outlives the test)."""

    def make(url: str) -> contextlib.AbstractContextManager[InProcess]:
        engine = make_async_engine(url, poolclass=NullPool)
        app = create_app(make_async_session_factory(engine), secrets=[SECRET.encode()])
        return serving(app, runner)

    return make


# --- metrics --------------------------------------------------------------------------------


def test_metrics_count_deliveries_by_outcome_and_read_the_store(
    sqlite_url: str, client_for: Any
) -> None:
    with make_session_factory(make_engine(sqlite_url)).begin() as session:
        save_mirror_state(session, MirrorState(
            api_url="https://api.voucherify.io",
            last_success_at=datetime(2030, 1, 2, 3, 4, 5, tzinfo=UTC),
        ))
    first = delivery(customer(1))
    rejected = delivery(customer(2, birthdate="not a date"))
    before = time.time()
    with client_for(sqlite_url) as client:
        assert client.post(WEBHOOK_PATH, content=first, headers=signed(first)).status_code == 200
        assert client.post(WEBHOOK_PATH, content=first, headers=signed(first)).status_code == 200
        assert client.post(WEBHOOK_PATH, content=rejected,
                           headers=signed(rejected)).status_code == 422
        assert client.post(WEBHOOK_PATH, content=first,
                           headers=signed(first, "wrong")).status_code == 401
        assert client.post(WEBHOOK_PATH, content=b"{", headers=signed(b"{")).status_code == 400

        reply = client.get("/metrics")

    assert reply.status_code == 200
    assert reply.headers["content-type"].startswith("text/plain; version=0.0.4")
    found = samples(reply.text)
    deliveries = {
        dict(labels)["outcome"] + "/" + dict(labels)["status"]: value
        for (name, labels), value in found.items() if name == "customer_store_deliveries_total"
    }
    assert deliveries == {
        "applied/200": 1, "duplicate/200": 1, "rejected/422": 1, "refused/401": 1,
        "malformed/400": 1,
    }
    assert found[("customer_store_delivery_seconds_count", ())] == 5
    assert found[("customer_store_database_errors_total", ())] == 0
    assert found[("customer_store_retries_total", ())] == 0
    assert found[("customer_store_customers", ())] == 1
    applied_at = found[("customer_store_last_delivery_applied_timestamp_seconds", ())]
    assert before - 1 <= applied_at <= time.time() + 1
    assert found[(
        "customer_store_last_sync_success_timestamp_seconds",
        (("api_url", "https://api.voucherify.io"),),
    )] == datetime(2030, 1, 2, 3, 4, 5, tzinfo=UTC).timestamp()


def test_each_app_has_a_registry_of_its_own(sqlite_url: str, client_for: Any) -> None:
    body = delivery(customer(3))
    with client_for(sqlite_url) as one, client_for(sqlite_url) as two:
        assert one.post(WEBHOOK_PATH, content=body, headers=signed(body)).status_code == 200
        counted_by_one = samples(one.get("/metrics").text)
        counted_by_two = samples(two.get("/metrics").text)
    key = ("customer_store_deliveries_total", (("outcome", "applied"), ("status", "200")))
    assert counted_by_one[key] == 1
    assert key not in counted_by_two
    assert counted_by_two[("customer_store_delivery_seconds_count", ())] == 0


def test_last_applied_is_read_from_the_store_after_a_restart(
    sqlite_url: str, client_for: Any
) -> None:
    body = delivery(customer(4))
    with client_for(sqlite_url) as client:
        assert client.post(WEBHOOK_PATH, content=body, headers=signed(body)).status_code == 200
    with make_engine(sqlite_url).connect() as connection:
        received = connection.scalar(select(events.c.last_received_at))
    assert received is not None
    # A new app (a restarted receiver) that has applied nothing yet.
    with client_for(sqlite_url) as restarted:
        found = samples(restarted.get("/metrics").text)
    assert found[("customer_store_last_delivery_applied_timestamp_seconds", ())] == pytest.approx(
        received.timestamp(), abs=0.001
    )


def test_an_empty_store_has_no_freshness_samples_yet(sqlite_url: str, client_for: Any) -> None:
    with client_for(sqlite_url) as client:
        found = samples(client.get("/metrics").text)
    names = {name for name, _ in found}
    assert "customer_store_last_delivery_applied_timestamp_seconds" not in names
    assert "customer_store_last_sync_success_timestamp_seconds" not in names
    assert found[("customer_store_customers", ())] == 0


def test_openmetrics_is_answered_when_asked_for(sqlite_url: str, client_for: Any) -> None:
    with client_for(sqlite_url) as client:
        reply = client.get(
            "/metrics", headers={"Accept": "application/openmetrics-text; version=1.0.0"}
        )
    assert reply.status_code == 200
    assert reply.headers["content-type"].startswith("application/openmetrics-text")
    assert reply.text.rstrip().endswith("# EOF")


def test_store_figures_are_cached_between_scrapes(
    sqlite_url: str, runner: asyncio.Runner
) -> None:
    engine = make_async_engine(sqlite_url, poolclass=NullPool)
    metrics = ReceiverMetrics(make_async_session_factory(engine), refresh_interval=3600)
    app = create_app(make_async_session_factory(engine), secrets=[SECRET.encode()],
                     metrics=metrics)
    with serving(app, runner) as client:
        assert samples(client.get("/metrics").text)[("customer_store_customers", ())] == 0
        body = delivery(customer(5))
        assert client.post(WEBHOOK_PATH, content=body, headers=signed(body)).status_code == 200
        # Within the interval the count is the one read before.
        assert samples(client.get("/metrics").text)[("customer_store_customers", ())] == 0


def test_a_scrape_with_the_database_down_answers_and_counts_the_error(client_for: Any) -> None:
    url = f"postgresql://u:{DB_PASSWORD}@127.0.0.1:1/db"
    with client_for(url) as client:
        reply = client.get("/metrics")
    assert reply.status_code == 200
    assert samples(reply.text)[("customer_store_database_errors_total", ())] == 1
    assert DB_PASSWORD not in reply.text


@pytest.mark.parametrize("mode", ["sync", "async"])
def test_retries_are_reported_to_on_retry(
    sqlite_url: str, mode: str, runner: Any
) -> None:
    """The hook the receiver counts ``customer_store_retries_total`` with."""
    failures = iter([OperationalError("SELECT 1", {}, Exception("database is locked"))] * 2)
    seen: list[BaseException | None] = []

    def work(session: Any) -> str:
        failure = next(failures, None)
        if failure is not None:
            raise failure
        return "done"

    if mode == "sync":
        result = run_in_transaction(
            make_session_factory(make_engine(sqlite_url)), work, base_delay=0.001,
            on_retry=seen.append,
        )
    else:
        engine = make_async_engine(sqlite_url)
        try:
            result = runner.run(run_in_transaction_async(
                make_async_session_factory(engine), work, base_delay=0.001,
                on_retry=seen.append,
            ))
        finally:
            runner.run(engine.dispose())
    assert result == "done"
    assert len(seen) == 2
    assert all(isinstance(error, OperationalError) for error in seen)


def test_a_time_bound_beyond_the_longest_wait_a_database_takes_still_runs(
    engine: Any, backend: str
) -> None:
    """A month is more than PostgreSQL's lock_timeout accepts (2,147,483,647 ms): the
    waits are set to that longest one instead of the transaction failing."""

    def work(session: Any) -> str:
        if backend == "postgresql":
            return str(session.scalar(text("SHOW lock_timeout")))
        return str(session.connection().exec_driver_sql("PRAGMA busy_timeout").scalar())

    month = 31 * 86_400.0
    longest = run_in_transaction(make_session_factory(engine), work, timeout=month)
    assert longest == ("2147483647ms" if backend == "postgresql" else "2147483647")


# --- readiness ------------------------------------------------------------------------------


def test_healthz_is_ok_at_head(sqlite_url: str, client_for: Any) -> None:
    with client_for(sqlite_url) as client:
        reply = client.get("/healthz")
    assert (reply.status_code, reply.json()) == (200, {"status": "ok"})


def test_healthz_is_unavailable_when_the_schema_is_not_at_head(
    sqlite_url: str, client_for: Any
) -> None:
    command.downgrade(alembic_config(sqlite_url), "-1")
    with make_engine(sqlite_url).connect() as connection:
        current = connection.scalar(text("SELECT version_num FROM alembic_version"))
    with client_for(sqlite_url) as client:
        reply = client.get("/healthz")
    assert reply.status_code == 503
    assert reply.json() == {
        "status": "unavailable",
        "reason": f"schema at revision {current}, not head {head_revision()}",
    }


def test_healthz_of_an_unmigrated_database(make_database: Any, client_for: Any) -> None:
    with client_for(make_database("sqlite")) as client:
        reply = client.get("/healthz")
    assert reply.status_code == 503
    assert reply.json()["reason"] == f"schema at revision none, not head {head_revision()}"


def test_healthz_says_the_database_is_unreachable_without_its_password(client_for: Any) -> None:
    url = f"postgresql://app:{DB_PASSWORD}@127.0.0.1:1/customers?sslpassword={DB_PASSWORD}"
    with client_for(url) as client:
        started = time.monotonic()
        reply = client.get("/healthz")
    assert time.monotonic() - started < 5
    assert reply.status_code == 503
    body = reply.json()
    assert body["status"] == "unavailable"
    assert body["reason"].startswith("database unreachable: ")
    assert DB_PASSWORD not in reply.text


def test_healthz_follows_a_postgresql_outage(
    make_database: Any, postgres_admin_url: str, client_for: Any
) -> None:
    url: str = make_database("postgresql")
    upgrade_to_head(url)
    database = make_url(url).database
    admin = create_engine(postgres_admin_url, isolation_level="AUTOCOMMIT")
    try:
        with client_for(make_url(url).set(password=DB_PASSWORD).render_as_string(
            hide_password=False
        )) as client, admin.connect() as connection:
            assert client.get("/healthz").status_code == 200
            connection.execute(text(f'ALTER DATABASE "{database}" ALLOW_CONNECTIONS false'))
            try:
                down = client.get("/healthz")
            finally:
                connection.execute(text(f'ALTER DATABASE "{database}" ALLOW_CONNECTIONS true'))
            assert down.status_code == 503
            assert down.json()["reason"].startswith("database unreachable: ")
            assert DB_PASSWORD not in down.text
            assert client.get("/healthz").status_code == 200
    finally:
        admin.dispose()


# --- JSON logs ------------------------------------------------------------------------------


@pytest.mark.slow
def test_json_logs_are_one_object_per_line_without_secrets_or_personal_values(
    sqlite_url: str, tmp_path: Path
) -> None:
    tag = uuid.uuid4().hex[:10]
    personal = {
        "name": f"Jane Privatename{tag}",
        "email": f"jane.{tag}@private.example",
        "phone": f"+44 7700 {tag[:6]}",
    }
    applied = delivery(customer(f"json{tag}", **personal))
    bad_birthdate = f"born-{tag}-secretly"
    rejected = delivery(customer(f"rej{tag}", **personal, birthdate=bad_birthdate))
    log_path = tmp_path / "serve.log"
    with running_server(sqlite_url, log_path=log_path, secret=SECRET,
                        extra_args=["--log-format", "json"]) as server:
        assert server.deliver(applied).status == 200
        assert server.deliver(rejected).status == 422
        assert server.deliver(applied, signature=sign(applied, b"wrong")).status == 401
        assert server.deliver(applied, unsigned=True).status == 401
        assert server.deliver(b"{").status == 400
        metrics = server.get("/metrics")
    assert metrics.status == 200
    assert 'customer_store_deliveries_total{outcome="applied",status="200"} 1.0' in (
        metrics.body.decode()
    )

    log = log_path.read_text(encoding="utf-8")
    lines = [json.loads(line) for line in log.splitlines() if line.strip()]
    assert all(isinstance(line, dict) and {"time", "level", "logger"} <= set(line)
               for line in lines)
    deliveries = [line for line in lines if line.get("message") == "delivery"]
    assert [(d["outcome"], d["status"]) for d in deliveries] == [
        ("applied", 200), ("rejected", 422), ("refused", 401), ("refused", 401),
        ("malformed", 400),
    ]
    for entry in deliveries:
        assert {"event", "type", "customer", "outcome", "status", "ms"} <= set(entry)
        assert isinstance(entry["ms"], int | float)
    first = deliveries[0]
    assert (first["event"], first["type"], first["customer"]) == (
        event_id_of(applied), "customer.created", f"cust_ops{'json' + tag}"
    )
    assert first["secret"] == "#1"
    assert deliveries[1]["customer"] == f"cust_ops{'rej' + tag}"
    assert "listening on" in json.dumps(lines)
    # Nothing secret or personal, in any line.
    for value in (*personal.values(), bad_birthdate, SECRET, sign(applied, SECRET.encode())):
        assert value not in log, f"{value!r} is in the log"
    assert applied.decode()[:60] not in log


# --- a graceful stop ------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_sigterm_finishes_deliveries_in_flight_and_exits_0(
    make_database: Any, tmp_path: Path, backend: str
) -> None:
    url: str = make_database(backend)
    upgrade_to_head(url)
    answers: dict[str, int | None] = {}
    lock = threading.Lock()
    stop_sending = threading.Event()
    with running_server(url, log_path=tmp_path / "serve.log", secret=SECRET) as server:
        # One delivery whose body is still arriving when SIGTERM comes.
        slow_body = delivery(customer("slow"))
        first_half_sent = threading.Event()

        def slow_chunks() -> Iterator[bytes]:
            yield slow_body[:100]
            first_half_sent.set()
            time.sleep(1.5)
            yield slow_body[100:]

        slow_reply: list[Any] = []
        slow = threading.Thread(target=lambda: slow_reply.append(post(
            server.port, WEBHOOK_PATH, slow_chunks(), signed(slow_body), chunked=True
        )))
        slow.start()
        assert first_half_sent.wait(10)

        def burst(worker: int) -> None:
            n = 0
            while not stop_sending.is_set():
                n += 1
                body = delivery(customer(f"w{worker}n{n}"))
                try:
                    status: int | None = server.deliver(body).status
                except (OSError, http.client.HTTPException):
                    status = None
                with lock:
                    answers[event_id_of(body)] = status
                if status is None:
                    return  # the server is gone: nothing more will be answered

        workers = [threading.Thread(target=burst, args=(w,)) for w in range(6)]
        for worker in workers:
            worker.start()
        deadline = time.monotonic() + 20
        while sum(1 for s in list(answers.values()) if s == 200) < 30:
            assert time.monotonic() < deadline, "the burst did not get going"
            time.sleep(0.01)
        terminated_at = time.monotonic()
        server.process.send_signal(signal.SIGTERM)
        returncode = server.process.wait(timeout=30)
        stopped_in = time.monotonic() - terminated_at
        stop_sending.set()
        for worker in workers:
            worker.join(timeout=30)
        slow.join(timeout=30)
        log = server.log()

    assert returncode == 0, log
    assert stopped_in < 15, log
    assert slow_reply and slow_reply[0].status == 200, (slow_reply, log)
    assert "Traceback" not in log and "Cancel" not in log, log
    engine = make_engine(url)
    try:
        with engine.connect() as connection:
            stored = set(connection.scalars(select(events.c.event_id)))
    finally:
        engine.dispose()
    accepted = {event_id for event_id, status in answers.items() if status == 200}
    assert accepted, answers
    assert accepted <= stored
    assert event_id_of(slow_body) in stored
    # Whatever was not accepted was refused or never answered.
    assert {status for status in answers.values()} <= {200, 503, None}
    assert stored <= set(answers) | {event_id_of(slow_body)}
    assert any(status is None for status in answers.values())


def test_ctrl_c_while_serve_is_still_loading_exits_130_without_a_traceback(
    sqlite_url: str, tmp_path: Path
) -> None:
    """SIGINT once the interpreter is importing the command line's modules (pydantic's
    compiled core is loaded half-way), well before it listens."""
    for _ in range(3):
        process = subprocess.Popen(
            [sys.executable, "-m", "customer_store", "--database-url", sqlite_url, "serve",
             "--port", "0"],
            cwd=tmp_path, env=child_env({"VOUCHERIFY_WEBHOOK_SECRET": SECRET}),
            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        )
        try:
            maps = Path(f"/proc/{process.pid}/maps")
            deadline = time.monotonic() + 60
            while "_pydantic_core" not in maps.read_text():
                assert process.poll() is None and time.monotonic() < deadline
                time.sleep(0.001)
            process.send_signal(signal.SIGINT)
            output = process.communicate(timeout=60)[0].decode("utf-8", "replace")
        finally:
            if process.poll() is None:
                process.kill()
                process.wait()
        assert process.returncode == 130, output
        assert output.strip() == "customer-store: interrupted", output


def test_an_outdated_receiver_start_is_refused_not_served(
    make_database: Any, tmp_path: Path
) -> None:
    """``serve`` checks the schema before listening; /healthz covers it changing later."""
    url: str = make_database("sqlite")
    upgrade_to_head(url)
    command.downgrade(alembic_config(url), "-1")
    run = cli(["--database-url", url, "serve", "--port", "1"], cwd=tmp_path,
              env={"VOUCHERIFY_WEBHOOK_SECRET": SECRET})
    assert run.returncode == 1
    assert "run `customer-store migrate` first" in run.output

