"""Shared fixtures: real SQLite and PostgreSQL databases, migrated by Alembic.

PostgreSQL comes from ``CUSTOMER_STORE_TEST_POSTGRES_URL`` (default: the local server's
``test`` database). Each test run creates its own database there and drops it at the
end. Without a reachable server, PostgreSQL tests are skipped locally and fail when
``CUSTOMER_STORE_REQUIRE_POSTGRES=1`` (as in CI).
"""

from __future__ import annotations

import asyncio
import json
import os
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, cast

import pytest
from sqlalchemy import Engine, create_engine, delete, text
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession
from sqlalchemy.orm import Session, sessionmaker

from models import Base
from repository import AsyncCustomerRepository, CustomerRepository, make_async_engine, make_engine
from repository.db.schema import upgrade_to_head
from tests.aio import APIS, Blocking
from tests.pgbouncer import PgBouncer, find_pgbouncer, running_pgbouncer

FIXTURES = Path(__file__).parent / "fixtures"
EXAMPLES = FIXTURES / "voucherify"
DEFAULT_POSTGRES_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/test"
BACKENDS = ["sqlite", "postgresql"]


def load_example_customers() -> list[tuple[str, Any]]:
    """Every customer payload from Voucherify's public specification, by file name."""
    return [
        (path.name, json.loads(path.read_text(encoding="utf-8")))
        for path in sorted((EXAMPLES / "customers").glob("*.json"))
    ]


def load_example_events() -> list[tuple[str, Any]]:
    return [
        (path.name, json.loads(path.read_text(encoding="utf-8")))
        for path in sorted((EXAMPLES / "events").glob("*.json"))
    ]


@pytest.fixture(scope="session")
def postgres_admin_url() -> str:
    url = os.environ.get("CUSTOMER_STORE_TEST_POSTGRES_URL", DEFAULT_POSTGRES_URL)
    engine = make_engine(url)
    try:
        with engine.connect() as connection:
            connection.execute(text("SELECT 1"))
    except Exception as exc:
        message = f"PostgreSQL is not reachable at {make_url(url).render_as_string()}: {exc}"
        if os.environ.get("CUSTOMER_STORE_REQUIRE_POSTGRES") == "1":
            pytest.fail(message, pytrace=False)
        pytest.skip(message)
    finally:
        engine.dispose()
    return make_engine(url).url.render_as_string(hide_password=False)


def alter_database(admin_url: str, database_url: str, sql: str) -> None:
    """Run ``sql`` (``{name}`` standing for the quoted name of ``database_url``'s database)
    outside any transaction, as the administrator: ``ALTER DATABASE``, ``DROP DATABASE``."""
    admin = create_engine(admin_url, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as connection:
            name = make_url(database_url).database
            connection.execute(text(sql.format(name=f'"{name}"')))
    finally:
        admin.dispose()


@pytest.fixture(scope="session")
def make_postgres_database(postgres_admin_url: str) -> Iterator[Any]:
    """A factory of empty PostgreSQL databases, dropped when the test run ends."""
    admin = create_engine(postgres_admin_url, isolation_level="AUTOCOMMIT")
    created: list[str] = []

    def create() -> str:
        name = f"cstest_{os.getpid()}_{uuid.uuid4().hex[:8]}"
        with admin.connect() as connection:
            connection.execute(text(f'CREATE DATABASE "{name}"'))
        created.append(name)
        return make_url(postgres_admin_url).set(database=name).render_as_string(
            hide_password=False
        )

    yield create
    with admin.connect() as connection:
        for name in created:
            connection.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    admin.dispose()


@pytest.fixture(scope="module")
def postgres_url(make_postgres_database: Any) -> str:
    """A PostgreSQL database of the test module's own, migrated to head."""
    url: str = make_postgres_database()
    upgrade_to_head(url)
    return url


#: ``store_customers(url, customers)``: ``customers`` upserted into the database of ``url``,
#: in one transaction; returns them.
StoreCustomers = Callable[[str, list[dict[str, Any]]], list[dict[str, Any]]]


@pytest.fixture(scope="session")
def store_customers() -> StoreCustomers:
    """Fill a database with customers (a module-scoped fixture's setup, say)."""

    def store(url: str, customers: list[dict[str, Any]]) -> list[dict[str, Any]]:
        engine = make_engine(url)
        try:
            with sessionmaker(engine).begin() as session:
                CustomerRepository(session).upsert_many(customers)
        finally:
            engine.dispose()
        return customers

    return store


@pytest.fixture(scope="session")
def pgbouncer(postgres_admin_url: str) -> Iterator[PgBouncer]:
    """A PgBouncer in transaction pooling mode in front of the test server (see
    tests/pgbouncer.py), for the whole run. Without the ``pgbouncer`` program, its tests
    are skipped locally and fail when ``CUSTOMER_STORE_REQUIRE_POSTGRES=1`` (as in CI)."""
    binary = find_pgbouncer()
    if binary is None:
        message = "pgbouncer is not installed (Debian: apt-get install pgbouncer)"
        if os.environ.get("CUSTOMER_STORE_REQUIRE_POSTGRES") == "1":
            pytest.fail(message, pytrace=False)
        pytest.skip(message)
    with running_pgbouncer(binary, postgres_admin_url) as bouncer:
        yield bouncer


@pytest.fixture(scope="session")
def make_database(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Any:
    """A factory of empty databases of a backend: ``make_database("sqlite")``."""

    def create(backend: str) -> str:
        if backend == "sqlite":
            path = tmp_path_factory.mktemp("sqlite") / "customers.db"
            return f"sqlite:///{path}"
        factory = request.getfixturevalue("make_postgres_database")
        url: str = factory()
        return url

    return create


@pytest.fixture(scope="session")
def shared_database(make_database: Any) -> Callable[[str], str]:
    """``shared_database(backend)``: the run's migrated database of a backend, made once."""
    made: dict[str, str] = {}

    def get(backend: str) -> str:
        if backend not in made:
            made[backend] = make_database(backend)
            upgrade_to_head(made[backend])
        return made[backend]

    return get


@pytest.fixture(scope="session", params=BACKENDS)
def database_url(request: pytest.FixtureRequest, shared_database: Callable[[str], str]) -> str:
    """A migrated database of each backend, shared by the tests of a run."""
    return shared_database(request.param)


@pytest.fixture(scope="session")
def any_database_url(shared_database: Callable[[str], str]) -> str:
    """The run's migrated PostgreSQL database (``database_url``'s), for tests whose rule
    lives before any database, such as the CLI's argument checks: one backend suffices."""
    return shared_database("postgresql")


@pytest.fixture(scope="session")
def engine(database_url: str) -> Iterator[Engine]:
    engine = make_engine(database_url)
    yield engine
    engine.dispose()


@pytest.fixture
def session(engine: Engine) -> Iterator[Session]:
    """A session on a database with no rows; what the test commits is removed afterwards."""
    with Session(engine) as session:
        yield session
        session.rollback()
    with engine.begin() as connection:
        for table in reversed(Base.metadata.sorted_tables):
            connection.execute(delete(table))


@pytest.fixture
def repo(session: Session) -> CustomerRepository:
    return CustomerRepository(session)


@pytest.fixture(scope="session")
def runner() -> Iterator[asyncio.Runner]:
    """One event loop for every test of the async API (its engines belong to it)."""
    with asyncio.Runner() as loop_runner:
        yield loop_runner


@pytest.fixture(scope="session")
def async_engine(database_url: str, runner: asyncio.Runner) -> Iterator[AsyncEngine]:
    engine = make_async_engine(database_url)
    yield engine
    runner.run(engine.dispose())


@pytest.fixture(params=APIS)
def api_repo(
    request: pytest.FixtureRequest, session: Session, runner: asyncio.Runner
) -> Iterator[CustomerRepository]:
    """The repository through each API: the sync one on ``session``, or the async one on
    an ``AsyncSession`` of its own, behind a blocking face (tests/aio.py). Its session is
    ``repo.session`` either way; the ``session`` fixture empties the tables afterwards."""
    if request.param == "sync":
        yield CustomerRepository(session)
        return
    async_session = AsyncSession(request.getfixturevalue("async_engine"), expire_on_commit=False)
    try:
        yield cast(CustomerRepository, Blocking(AsyncCustomerRepository(async_session), runner))
    finally:
        runner.run(async_session.close())


@pytest.fixture
def backend(engine: Engine) -> str:
    return engine.dialect.name


@pytest.fixture(scope="session")
def example_customers() -> list[tuple[str, Any]]:
    return load_example_customers()
