"""Database URLs with several hosts, and the connection defaults (repository.db.database_urls).

libpq's spelling (``postgresql://app@h1:5432,h2:5432/db``, what ``pg_autoctl show uri``
prints) and SQLAlchemy's (``?host=h1:5432&host=h2:5432``) both work, in the Python APIs, the
commands, ``serve`` and migrations, behind PgBouncer too. The first part reads URLs; the
rest connects for real: to the test server behind a dead first host, to a primary and a
standby (tests/replication.py), to a listening socket that never answers.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from urllib.parse import quote

import psycopg
import pytest
from sqlalchemy import Engine, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import OperationalError

from customer_store.common import mask_passwords, safe_url
from repository.db import CONNECTION_DEFAULTS, parse_database_url
from repository.db.engine import (
    behind_pooler,
    make_async_engine,
    make_engine,
    normalize_url,
    without_pooler_flag,
)
from tests.pgbouncer import PgBouncer
from tests.replication import Pair, replicated_pair
from tests.servers import ROOT, child_env, cli_command, free_port, running_server

#: Seconds a command of the tests may take.
COMMAND_TIMEOUT = 120.0


# --- reading URLs -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        (  # the example, as pg_autoctl prints it
            "postgresql://app@10.0.0.1:5432,10.0.0.2:5432/customers"
            "?target_session_attrs=read-write",
            "postgresql+psycopg://app@/customers?host=10.0.0.1%2C10.0.0.2"
            "&port=5432%2C5432&target_session_attrs=read-write",
        ),
        (  # IPv6 in brackets, a port on some hosts only, a password and names encoded
            "postgres://app:s%40cr%3At@[::1]:5433,[fe80::1],db.example:6543/cust%20db"
            "?load_balance_hosts=random&sslmode=require",
            "postgresql+psycopg://app:s%40cr%3At@/cust db?host=%3A%3A1%2Cfe80%3A%3A1"
            "%2Cdb.example&load_balance_hosts=random&port=5433%2C%2C6543&sslmode=require",
        ),
        (  # no port anywhere, no user, no query
            "postgresql://h1,h2/db",
            "postgresql+psycopg:///db?host=h1%2Ch2",
        ),
        (  # SQLAlchemy's own spelling is kept as it is
            "postgresql+psycopg://app@/customers?host=10.0.0.1:5432&host=10.0.0.2:5432"
            "&target_session_attrs=read-write",
            "postgresql+psycopg://app@/customers?host=10.0.0.1%3A5432&host=10.0.0.2%3A5432"
            "&target_session_attrs=read-write",
        ),
        (  # one host: as before
            "postgresql://app@[::1]:5432/customers",
            "postgresql+psycopg://app@[::1]:5432/customers",
        ),
        ("sqlite:///a,b.db", "sqlite:///a%2Cb.db"),
    ],
)
def test_normalize_url_rewrites_libpq_multi_host_urls_into_sqlalchemys(
    given: str, expected: str
) -> None:
    assert normalize_url(given) == expected
    # SQLAlchemy reads the result back the same, hosts and ports in libpq's lists.
    assert make_url(expected).render_as_string(hide_password=False) == expected


def test_psycopg_is_handed_each_host_with_its_port() -> None:
    engine = make_engine(
        "postgresql://app@10.0.0.1:5432,[::1],db.example:6543/customers"
        "?target_session_attrs=primary&load_balance_hosts=random"
    )
    try:
        _, params = engine.dialect.create_connect_args(engine.url)
    finally:
        engine.dispose()
    assert params["host"] == "10.0.0.1,::1,db.example"
    assert params["port"] == "5432,,6543"
    assert params["dbname"] == "customers" and params["user"] == "app"
    assert params["target_session_attrs"] == "primary"
    assert params["load_balance_hosts"] == "random"


def test_the_pooler_flag_is_read_and_taken_off_a_multi_host_url() -> None:
    url = "postgresql://app:pw@h1:6432,h2:6432/db?pgbouncer=true&target_session_attrs=read-write"
    assert behind_pooler(url) is True
    stripped, pooled = without_pooler_flag(url)
    assert pooled is True
    assert stripped == (
        "postgresql://app:pw@/db?host=h1%2Ch2&port=6432%2C6432&target_session_attrs=read-write"
    )
    # Without the flag, a multi-host URL still comes back in SQLAlchemy's spelling.
    assert without_pooler_flag("postgresql://h1,h2/db") == ("postgresql:///db?host=h1%2Ch2", False)
    with pytest.raises(ValueError, match=r"\?pgbouncer= must be true, false, 1 or 0"):
        behind_pooler("postgresql://h1,h2/db?pgbouncer=yes")


@pytest.mark.parametrize(
    ("url", "message"),
    [
        (
            "postgresql://h1,h2/db?target_session_attrs=master",
            "?target_session_attrs= must be one of any, read-write, read-only, primary, "
            "standby, prefer-standby (once), not 'master'",
        ),
        (
            "postgresql://h/db?target_session_attrs=any&target_session_attrs=standby",
            "?target_session_attrs= must be one of any, read-write, read-only, primary, "
            "standby, prefer-standby (once), not 2 values",
        ),
        (
            "postgresql+psycopg://u@/db?host=h1&host=h2&load_balance_hosts=yes",
            "?load_balance_hosts= must be one of disable, random (once), not 'yes'",
        ),
        (
            "postgresql://h1,h2/db?connect_timeout=2.5",
            "?connect_timeout= must be a whole number of seconds (once), not '2.5'",
        ),
        ("postgresql://h/db?keepalives=yes", "?keepalives= must be 0 or 1 (once), not 'yes'"),
        (
            "postgresql://h/db?keepalives_count=-1",
            "?keepalives_count= must be a whole number of probes (once), not '-1'",
        ),
        (
            "postgresql://u:secret@h1:54x2,h2/db",
            "bad port '54x2' of host 'h1' in the database URL: expected a number from 1 to 65535",
        ),
        (
            "postgresql://h1:70000,h2/db",
            "bad port '70000' of host 'h1' in the database URL: expected a number from 1 to 65535",
        ),
        (
            "postgresql://h1,,h2/db",
            "bad host '' in the database URL's host list: expected host, host:port or "
            "[IPv6 address]:port, separated by commas",
        ),
        (
            "postgresql://h1,h2/db?host=h3",
            "the database URL lists hosts both before the database name and in ?host= or "
            "?port=: use one or the other",
        ),
    ],
)
def test_bad_multi_host_urls_are_refused_naming_the_parameter(url: str, message: str) -> None:
    with pytest.raises(ValueError) as raised:
        normalize_url(url)
    assert str(raised.value) == message
    assert "secret" not in str(raised.value)


def test_every_libpq_target_session_attrs_and_load_balance_hosts_value_is_accepted() -> None:
    for attrs in ("any", "read-write", "read-only", "primary", "standby", "prefer-standby"):
        for balance in ("disable", "random"):
            url = f"postgresql://h1,h2/db?target_session_attrs={attrs}&load_balance_hosts={balance}"
            assert parse_database_url(url).query["target_session_attrs"] == attrs


def test_a_bad_multi_host_url_is_a_usage_error_of_the_cli() -> None:
    done = subprocess.run(
        cli_command("postgresql://app:secret@h1,h2/db?target_session_attrs=primary-only", "stats"),
        cwd=ROOT, env=child_env(), capture_output=True, text=True, timeout=COMMAND_TIMEOUT,
    )
    assert done.returncode == 2
    assert "bad database URL: ?target_session_attrs= must be one of any, read-write" in done.stderr
    assert "secret" not in done.stderr


def test_passwords_of_multi_host_urls_are_masked() -> None:
    url = "postgresql://app:hunter2@h1:5432,[::1]:5433/db?sslpassword=key-pass&connect_timeout=3"
    assert safe_url(url) == (
        "postgresql://app:***@h1:5432,[::1]:5433/db?sslpassword=***&connect_timeout=3"
    )
    assert safe_url("postgresql+psycopg://app:pw@/db?host=h1:1&host=h2:2&password=pw") == (
        "postgresql+psycopg://app:***@/db?host=h1%3A1&host=h2%3A2&password=%2A%2A%2A"
    )
    assert safe_url("postgresql://h1:1,h2:x/db") == "<unparseable URL>"
    masked = mask_passwords(f"cannot connect to {url}: refused")
    assert masked == (
        "cannot connect to postgresql://app:***@h1:5432,[::1]:5433/db"
        "?sslpassword=***&connect_timeout=3: refused"
    )
    assert mask_passwords("see postgresql+psycopg://app@/db?host=h1&password=pw&x=1") == (
        "see postgresql+psycopg://app@/db?host=h1&password=***&x=1"
    )


# --- real connections ---------------------------------------------------------------------------


def _multi_host(database_url: str, *, first: str, query: str = "") -> str:
    """``database_url`` (one host) in libpq's multi-host spelling, ``first`` listed before
    its own host."""
    parsed = make_url(database_url)
    user = quote(parsed.username or "", safe="")
    if parsed.password:
        user += ":" + quote(str(parsed.password), safe="")
    return (
        f"postgresql://{user}@{first},{parsed.host}:{parsed.port or 5432}/{parsed.database}"
        + (f"?{query}" if query else "")
    )


@pytest.fixture
def dead_address() -> str:
    """``127.0.0.1:PORT`` with nothing listening: connecting there is refused at once."""
    return f"127.0.0.1:{free_port()}"


@contextlib.contextmanager
def silent_listener() -> Iterator[int]:
    """A port of 127.0.0.1 that takes TCP connections (the kernel completes them into the
    backlog) and never accepts or answers one: a client waits there until its timeout, as
    before a host that went away without a word."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(8)
        yield listener.getsockname()[1]


@pytest.fixture
def pg_database(make_postgres_database: Callable[[], str]) -> str:
    return make_postgres_database()


def _parameters(engine: Engine) -> dict[str, str]:
    """The libpq parameters of one of ``engine``'s connections (those not at libpq's
    default), and the port it is connected to."""
    with engine.connect() as connection:
        raw = connection.connection.driver_connection
        assert isinstance(raw, psycopg.Connection)
        return {**raw.info.get_parameters(), "port": str(raw.info.port)}


def test_sync_engine_skips_a_dead_first_host_and_gets_the_connection_defaults(
    postgres_admin_url: str, dead_address: str
) -> None:
    engine = make_engine(_multi_host(postgres_admin_url, first=dead_address))
    try:
        with engine.connect() as connection:
            assert connection.execute(text("SELECT 1")).scalar_one() == 1
        parameters = _parameters(engine)
    finally:
        engine.dispose()
    assert parameters["port"] == str(make_url(postgres_admin_url).port or 5432)
    for name, value in CONNECTION_DEFAULTS.items():
        assert parameters[name] == str(value), name
    with psycopg.connect(psycopg.conninfo.make_conninfo(**_live_kwargs(postgres_admin_url))) as c:
        # Compared with a bare psycopg connection, which has none of them.
        assert "connect_timeout" not in c.info.get_parameters()
        assert "keepalives_idle" not in c.info.get_parameters()


def _live_kwargs(url: str) -> dict[str, str]:
    parsed = make_url(url)
    return {
        "host": parsed.host or "127.0.0.1",
        "port": str(parsed.port or 5432),
        "user": parsed.username or "postgres",
        "dbname": parsed.database or "postgres",
    }


def test_settings_in_the_url_win_over_the_defaults(
    postgres_admin_url: str, dead_address: str
) -> None:
    url = _multi_host(
        postgres_admin_url, first=dead_address,
        query="connect_timeout=7&keepalives_idle=30&keepalives=1",
    )
    engine = make_engine(url)
    try:
        parameters = _parameters(engine)
    finally:
        engine.dispose()
    assert parameters["connect_timeout"] == "7"
    assert parameters["keepalives_idle"] == "30"
    assert parameters["keepalives_interval"] == str(CONNECTION_DEFAULTS["keepalives_interval"])
    # The caller's connect_args win over both.
    engine = make_engine(url, connect_args={"connect_timeout": 11})
    try:
        assert _parameters(engine)["connect_timeout"] == "11"
    finally:
        engine.dispose()


def test_async_engine_skips_a_dead_first_host(postgres_admin_url: str, dead_address: str) -> None:
    async def run() -> tuple[int, dict[str, str]]:
        engine = make_async_engine(
            _multi_host(postgres_admin_url, first=dead_address, query="target_session_attrs=any")
        )
        try:
            async with engine.connect() as connection:
                one = (await connection.execute(text("SELECT 1"))).scalar_one()
                raw = (await connection.get_raw_connection()).driver_connection
                assert isinstance(raw, psycopg.AsyncConnection)
                return one, raw.info.get_parameters()
        finally:
            await engine.dispose()

    one, parameters = asyncio.run(run())
    assert one == 1
    assert parameters["connect_timeout"] == str(CONNECTION_DEFAULTS["connect_timeout"])
    assert parameters["keepalives"] == "1"


def seconds_to_give_up(url: str) -> float:
    """How long connecting to ``url`` takes to fail with a timeout (it must fail so)."""
    engine = make_engine(url)
    started = time.monotonic()
    try:
        with pytest.raises(OperationalError, match="timeout"), engine.connect():
            pass
    finally:
        engine.dispose()
    return time.monotonic() - started


def test_a_host_that_never_answers_is_given_up_after_connect_timeout(
    postgres_admin_url: str,
) -> None:
    with silent_listener() as port:
        silent = f"127.0.0.1:{port}"
        # Alone: the connect fails after the URL's timeout, not after minutes.
        spent = seconds_to_give_up(f"postgresql://postgres@{silent}/test?connect_timeout=2")
        assert 1.5 <= spent < 4.0
        # First of two: the timeout is per host, and the next host gets a whole one.
        engine = make_engine(_multi_host(postgres_admin_url, first=silent,
                                         query="connect_timeout=2"))
        started = time.monotonic()
        try:
            with engine.connect() as connection:
                assert connection.execute(text("SELECT 1")).scalar_one() == 1
        finally:
            engine.dispose()
        assert 1.5 <= time.monotonic() - started < 4.0


def test_the_default_connect_timeout_gives_up_on_a_silent_host() -> None:
    timeout = CONNECTION_DEFAULTS["connect_timeout"]
    with silent_listener() as port:
        spent = seconds_to_give_up(f"postgresql://postgres@127.0.0.1:{port}/test")
    assert timeout - 0.5 <= spent < timeout + 2.0


def _run(url: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        cli_command(url, *args), cwd=ROOT, env=child_env(), capture_output=True, text=True,
        timeout=COMMAND_TIMEOUT,
    )


def _migrate_import_get(url: str) -> None:
    """``migrate``, ``import`` of the samples and ``get`` of one customer, all on ``url``."""
    migrated = _run(url, "migrate")
    assert migrated.returncode == 0, migrated.stderr
    assert "is at revision" in migrated.stderr
    imported = _run(url, "import", str(ROOT / "samples" / "customers.jsonl"))
    assert imported.returncode == 0, imported.stderr
    got = _run(url, "get", "cust_CSnYd37MXmrbS19XCrghjBsv")
    assert got.returncode == 0, got.stderr
    assert '"source_id": "source_123"' in got.stdout or '"source_id":"source_123"' in got.stdout


def test_cli_migrates_imports_and_reads_through_a_multi_host_url(
    pg_database: str, dead_address: str, tmp_path: Path
) -> None:
    url = _multi_host(pg_database, first=dead_address, query="target_session_attrs=read-write")
    _migrate_import_get(url)
    # serve (the async engine) on the same URL answers /healthz: the database is reached.
    with running_server(url, log_path=tmp_path / "serve.log", secret="s3cret") as server:
        assert server.get("/healthz").status == 200


def test_cli_reads_through_pgbouncer_on_a_multi_host_url(
    pg_database: str, pgbouncer: PgBouncer, dead_address: str
) -> None:
    direct = make_url(pg_database)
    url = (
        f"postgresql://{direct.username}@{dead_address},127.0.0.1:{pgbouncer.port}/"
        f"{direct.database}?pgbouncer=true&target_session_attrs=read-write"
    )
    _migrate_import_get(url)
    # The Python API on the same URL: no prepared statements, the defaults all the same.
    engine = make_engine(url)
    try:
        for _ in range(7):  # past psycopg's prepare threshold
            with engine.connect() as connection:
                assert connection.execute(text("SELECT count(*) FROM customers")).scalar_one()
        with engine.connect() as connection:
            raw = connection.connection.driver_connection
            assert isinstance(raw, psycopg.Connection)
            assert raw.prepare_threshold is None
            assert raw.info.port == pgbouncer.port
            assert raw.info.get_parameters()["connect_timeout"] == "5"
    finally:
        engine.dispose()


# --- a primary and a standby --------------------------------------------------------------------


@pytest.fixture(scope="module")
def pair() -> Iterator[Pair]:
    with replicated_pair() as made:
        yield made


def _in_recovery(url: str) -> bool:
    engine = make_engine(url)
    try:
        with engine.connect() as connection:
            return bool(connection.execute(text("SELECT pg_is_in_recovery()")).scalar_one())
    finally:
        engine.dispose()


def test_read_write_skips_a_standby_listed_first(pair: Pair) -> None:
    url = (
        f"postgresql://postgres@{pair.standby.address},{pair.primary.address}/customers"
        "?target_session_attrs=read-write"
    )
    assert _in_recovery(url) is False
    # Same through SQLAlchemy's spelling, and through the async engine.
    assert _in_recovery(
        f"postgresql+psycopg://postgres@/customers?host={pair.standby.address}"
        f"&host={pair.primary.address}&target_session_attrs=primary"
    ) is False

    async def async_in_recovery() -> bool:
        engine = make_async_engine(url)
        try:
            async with engine.connect() as connection:
                result = await connection.execute(text("SELECT pg_is_in_recovery()"))
                return bool(result.scalar_one())
        finally:
            await engine.dispose()

    assert asyncio.run(async_in_recovery()) is False


def test_standby_lands_on_the_standby_listed_second(pair: Pair) -> None:
    url = (
        f"postgresql://postgres@{pair.primary.address},{pair.standby.address}/customers"
        "?target_session_attrs=standby"
    )
    assert _in_recovery(url) is True
    # prefer-standby too, with the hosts shuffled.
    assert _in_recovery(url.replace("=standby", "=prefer-standby&load_balance_hosts=random"))


def test_load_balance_hosts_random_spreads_connections_over_the_hosts(pair: Pair) -> None:
    url = (
        f"postgresql://postgres@{pair.primary.address},{pair.standby.address}/customers"
        "?target_session_attrs=any&load_balance_hosts=random"
    )
    seen = {_in_recovery(url) for _ in range(20)}
    # The first host every time has a chance of 2 in a million.
    assert seen == {True, False}
