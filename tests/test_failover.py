"""A webhook stream survives a killed primary, with real replication and real failover.

Both tests run a ``customer-store serve`` on a multi-host URL, deliver webhook events from
several senders that retry as Voucherify does, read through the read API meanwhile, crash
the primary mid-stream, and let the standby take over:

- on a primary and a synchronous streaming standby (tests/replication.py), promoted with
  ``pg_ctl promote``;
- under pg_auto_failover (tests/auto_failover.py): a monitor and two nodes, the primary's
  ``pg_autoctl`` and postgres killed, the monitor promoting the standby; the store on the
  URL ``pg_autoctl show uri`` prints.

Then (tests/failover_load.py): no acknowledged delivery lost, each customer exactly its
newest delivered state, 2xx again within 10 s of the promotion without a restart of the
store, and no read answering 5xx once the new primary takes read-write sessions. The
timings are printed (``pytest -s``).
"""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import psycopg
import pytest

from tests.auto_failover import Node, auto_failover_formation, find_pg_autoctl, superuser
from tests.failover_load import READ_ENV, FailoverLoad, Timeline, assert_survived
from tests.replication import replicated_pair
from tests.servers import ROOT, child_env, cli_command, running_server

# make test-slow: starts clusters and pg_auto_failover formations, and kills them.
pytestmark = pytest.mark.slow

SECRET = "whsec-failover-test"
#: Acknowledged deliveries before the crash: the stream is well under way.
WARM_UP = 60
#: Seconds the stream keeps going after the first 2xx that followed the promotion.
AFTER_RECOVERY = 3.0
#: Seconds the standby may take to be promoted (by pg_auto_failover: detection included).
PROMOTION_BOUND = 30.0


def migrate(url: str, *, env: dict[str, str] | None = None) -> None:
    result = subprocess.run(
        cli_command(url, "migrate"), cwd=ROOT, env=child_env(env), capture_output=True,
        text=True, timeout=120, check=False,
    )
    assert result.returncode == 0, result.stderr


def wait_for(done: Callable[[], bool], *, timeout: float, what: str) -> float:
    """Poll ``done`` (a connection error meaning not yet) until true; the moment it was."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            if done():
                return time.monotonic()
        except psycopg.Error:
            pass
        assert time.monotonic() < deadline, f"{what} not within {timeout}s"
        time.sleep(0.02)


def accepts_writes(conninfo: str) -> bool:
    """libpq's own view: a read-write session can be opened on ``conninfo``."""
    with psycopg.connect(conninfo, connect_timeout=1, autocommit=True) as connection:
        return connection.execute("SELECT 1").fetchone() == (1,)


def run_through_failover(load: FailoverLoad, *, crash: Callable[[], None],
                         promoted: Callable[[], None], writable: Callable[[], bool]) -> Timeline:
    """Load until :data:`WARM_UP` acknowledgements, ``crash``, then time the promotion
    (``promoted`` returns once it is done) and the recovery point (``writable``); keep the
    load going past recovery, and finish it."""
    load.start()
    try:
        load.wait_until(lambda: load.acknowledged_count() >= WARM_UP, timeout=60,
                        what=f"{WARM_UP} acknowledged deliveries")
        crash()
        # Once the crash is complete: any 2xx from here on is the new primary's.
        killed = time.monotonic()
        promoted()
        promotion = time.monotonic()
        recovered = wait_for(writable, timeout=PROMOTION_BOUND, what="read-write sessions")
        load.wait_until(lambda: load.first_2xx_after(killed) is not None, timeout=60,
                        what="a 2xx after the kill")
        time.sleep(AFTER_RECOVERY)
    finally:
        load.finish()
    return Timeline(killed, promotion, recovered)


def test_webhook_stream_survives_killed_primary_and_promoted_sync_standby(
    tmp_path: Path,
) -> None:
    with replicated_pair(synchronous=True) as pair:
        migrate(pair.primary.url())
        url = pair.multi_host_url()
        with running_server(url, log_path=tmp_path / "serve.log", secret=SECRET,
                            env=READ_ENV) as server:
            load = FailoverLoad(server)
            timeline = run_through_failover(
                load,
                crash=pair.primary.kill,
                promoted=pair.standby.promote,
                writable=lambda: accepts_writes(url),
            )
            assert server.process.poll() is None, "the store was restarted or died"
        assert_survived(load, timeline, pair.standby.url(driver="postgresql+psycopg"),
                        label="streaming standby")


def test_webhook_stream_survives_killed_primary_under_pg_auto_failover(tmp_path: Path) -> None:
    _require_pg_autoctl()
    with auto_failover_formation() as formation:
        uri = formation.uri()
        # The URL names no user: libpq takes PGUSER, as it would the login name.
        env = {**READ_ENV, "PGUSER": superuser()}
        migrate(uri, env=env)
        old = formation.primary()
        (new,) = [node for node in formation.nodes if node is not old]
        with running_server(uri, log_path=tmp_path / "serve.log", secret=SECRET,
                            env=env) as server:
            load = FailoverLoad(server)
            timeline = run_through_failover(
                load,
                crash=old.kill,
                promoted=lambda: _wait_out_of_recovery(new),
                writable=lambda: accepts_writes(f"{uri}&user={superuser()}"),
            )
            assert server.process.poll() is None, "the store was restarted or died"
        assert_survived(load, timeline, _node_url(new), label="pg_auto_failover")


def _require_pg_autoctl() -> None:
    """Skipped without pg_autoctl locally; failed when PostgreSQL is required (CI)."""
    if find_pg_autoctl() is None:
        message = ("pg_autoctl is not installed (Debian: apt-get install "
                   "pg-auto-failover-cli postgresql-15-auto-failover)")
        if os.environ.get("CUSTOMER_STORE_REQUIRE_POSTGRES") == "1":
            pytest.fail(message, pytrace=False)
        pytest.skip(message)


def _wait_out_of_recovery(node: Node) -> None:
    """Until ``node`` reports it is not in recovery: the monitor has promoted it."""
    wait_for(lambda: node.scalar("SELECT pg_is_in_recovery()") is False,
             timeout=PROMOTION_BOUND, what=f"promotion of {node.name}")


def _node_url(node: Node) -> str:
    return f"postgresql+psycopg://{superuser()}@127.0.0.1:{node.port}/customers"
