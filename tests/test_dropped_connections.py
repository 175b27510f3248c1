"""A dropped connection never costs a request: after every server connection of a running
``serve`` (warm pool, read API on) is terminated, as a failover, a restarted PgBouncer or an
idle timeout does, the next reads by id, by ``source_id``, list pages and deliveries all
answer 2xx. Only this test's own database's backends are terminated."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import quote

import psycopg
import pytest
from sqlalchemy.engine import make_url

from repository import CustomerRepository, make_engine, make_session_factory
from repository.db.schema import upgrade_to_head
from tests.conftest import StoreCustomers
from tests.replication import lone_primary
from tests.servers import Server, request, running_server
from tests.voucherify_api import make_customers
from tests.webhook_streams import envelope, iso

# make test-slow: stops a database under server processes and waits out the outage.
pytestmark = pytest.mark.slow

APP_ID, APP_TOKEN = "store-reader", "store-reader-token-0123456789"
READ_ENV = {"CUSTOMER_STORE_APP_ID": APP_ID, "CUSTOMER_STORE_APP_TOKEN": APP_TOKEN}
AUTH = {"X-App-Id": APP_ID, "X-App-Token": APP_TOKEN}


@pytest.fixture(scope="module")
def stored(postgres_url: str, store_customers: StoreCustomers) -> list[dict[str, Any]]:
    return store_customers(postgres_url, make_customers(30, seed=24))


@pytest.fixture
def server(
    postgres_url: str, stored: list[dict[str, Any]], tmp_path: Path
) -> Iterator[Server]:
    with running_server(postgres_url, log_path=tmp_path / "serve.log", secret="whsec",
                        env=READ_ENV) as running:
        yield running


def read(server: Server, path: str) -> int:
    return request(server.port, "GET", quote(path, safe="/?=&"), headers=AUTH).status


def terminate_backends(database_url: str) -> int:
    """Terminate every server connection to the test's own database, waiting (up to 5 s
    each) until its backend has exited, so that the next statement meets the drop; how
    many there were."""
    url = make_url(database_url)
    with psycopg.connect(
        host=url.host, port=url.port, user=url.username, dbname="postgres", autocommit=True
    ) as admin:
        rows = admin.execute(
            "SELECT pg_terminate_backend(pid, 5000) FROM pg_stat_activity"
            " WHERE datname = %s AND pid <> pg_backend_pid()",
            [url.database],
        ).fetchall()
    return sum(1 for (done,) in rows if done)


def delivery(customer: dict[str, Any]) -> bytes:
    event_id = f"evt_{uuid.uuid4().hex[:20]}"
    changed = {**customer, "name": f"{customer['name']} (renamed)",
               "updated_at": iso(datetime.now(UTC))}
    body = envelope(event_id, "customer.updated", {"customer": changed}, changed["updated_at"])
    return json.dumps(body).encode()


def test_after_every_server_connection_is_dropped_the_next_requests_all_answer_2xx(
    server: Server, postgres_url: str, stored: list[dict[str, Any]]
) -> None:
    # A warm pool: several connections opened by concurrent reads.
    paths = [f"/v1/customers/{c['id']}" for c in stored] * 2
    with ThreadPoolExecutor(8) as pool:
        assert set(pool.map(lambda p: read(server, p), paths)) == {200}
    assert terminate_backends(postgres_url) >= 2

    statuses: dict[str, list[int]] = {"id": [], "source_id": [], "list": [], "delivery": []}
    for customer in stored[:10]:
        statuses["id"].append(read(server, f"/v1/customers/{customer['id']}"))
    for customer in stored[10:20]:
        statuses["source_id"].append(read(server, f"/v1/customers/{customer['source_id']}"))
    for page in range(1, 6):
        statuses["list"].append(read(server, f"/v1/customers?limit=5&page={page}"))
    for customer in stored[20:25]:
        statuses["delivery"].append(server.deliver(delivery(customer)).status)
    assert statuses == {
        "id": [200] * 10, "source_id": [200] * 10, "list": [200] * 5, "delivery": [200] * 5
    }, server.log()[-3000:]


def test_reads_answer_503_with_retry_after_while_the_database_is_down_then_200_again(
    tmp_path: Path,
) -> None:
    with lone_primary() as primary:
        upgrade_to_head(primary.url())
        customer = make_customers(1, seed=25)[0]
        engine = make_engine(primary.url())
        try:
            with make_session_factory(engine).begin() as session:
                CustomerRepository(session).upsert(customer)
        finally:
            engine.dispose()
        with running_server(primary.url(), log_path=tmp_path / "serve.log", secret="whsec",
                            env=READ_ENV) as server:
            path = f"/v1/customers/{customer['id']}"
            assert read(server, path) == 200
            primary.kill()
            down = [request(server.port, "GET", p, headers=AUTH)
                    for p in (path, f"/v1/customers/{customer['source_id']}",
                              "/v1/customers?limit=5")]
            assert [r.status for r in down] == [503, 503, 503], server.log()[-3000:]
            assert all(r.headers.get("retry-after") == "30" for r in down)
            assert {r.json()["key"] for r in down} == {"service_unavailable"}
            primary.start()
            assert read(server, path) == 200
