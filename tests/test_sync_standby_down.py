"""A commit that returns "might not have been replicated" is not an acknowledgement: with
a synchronous standby that is down, a delivery gets 503 within its time bound (the COMMIT
wait is cancelled at the deadline), and once replication is possible again a redelivery
gets 2xx, with the event and the customer stored once."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from repository.db.schema import upgrade_to_head
from tests.replication import Cluster, lone_primary
from tests.servers import Server, running_server
from tests.voucherify_api import make_customers
from tests.webhook_streams import envelope

# make test-slow: starts a primary and a synchronous standby (docs/testing.md).
pytestmark = pytest.mark.slow

DELIVERY_TIMEOUT = 2.0


@pytest.fixture(scope="module")
def primary() -> Iterator[Cluster]:
    with lone_primary() as cluster:
        upgrade_to_head(cluster.url())
        yield cluster


@pytest.fixture
def server(primary: Cluster, tmp_path: Path) -> Iterator[Server]:
    with running_server(primary.url(), log_path=tmp_path / "serve.log", secret="whsec",
                        extra_args=["--delivery-timeout", str(DELIVERY_TIMEOUT)]) as running:
        yield running


def wait_for_setting(cluster: Cluster, value: str, *, timeout: float = 10.0) -> None:
    """Until a new session sees ``synchronous_standby_names`` set to ``value`` (a reload
    is a signal: the server applies it a moment later)."""
    deadline = time.monotonic() + timeout
    while cluster.scalar("SHOW synchronous_standby_names") != value:
        assert time.monotonic() < deadline, "the setting was not applied in time"
        time.sleep(0.05)


def test_a_commit_not_replicated_to_a_down_synchronous_standby_answers_503_then_2xx(
    primary: Cluster, server: Server
) -> None:
    customer = make_customers(1, seed=5)[0]
    event_id = f"evt_{uuid.uuid4().hex[:20]}"
    body = json.dumps(envelope(event_id, "customer.updated", {"customer": customer},
                               customer["updated_at"])).encode()
    primary.configure(synchronous_standby_names="'nowhere'")
    primary.reload()
    wait_for_setting(primary, "nowhere")
    try:
        started = time.monotonic()
        reply = server.deliver(body)
        took = time.monotonic() - started
        assert reply.status == 503, (reply.status, reply.data, server.log()[-2000:])
        assert "retry-after" in reply.headers
        assert took < DELIVERY_TIMEOUT + 2.0
    finally:
        primary.configure(synchronous_standby_names="''")
        primary.reload()
        wait_for_setting(primary, "")
    reply = server.deliver(body)
    assert reply.status == 200, (reply.status, reply.data)
    assert primary.execute(
        "SELECT count(*) FROM webhook_events WHERE event_id = %s", [event_id],
        database="customers",
    ) == [(1,)]
    assert primary.execute(
        "SELECT count(*) FROM customers WHERE id = %s", [customer["id"]], database="customers"
    ) == [(1,)]
