"""Least privilege on PostgreSQL: the service runs as a role that cannot change the schema.

A private database is migrated by the owner (``postgres``); ``customer-store
grant-app-role NAME --create --password-env VAR`` makes a login role for the service.
Connected as that role, everything the service does works (the repository, ``import``
with its temporary staging tables, ``ingest``, a real ``serve``), and every schema change
is refused with SQLSTATE 42501 (insufficient privilege). The role is dropped afterwards.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from alembic import command
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session

from models import parse_customer
from models.errors import CustomerValidationError
from repository import CustomerFilter, CustomerRepository, make_engine
from repository.admin.privileges import grant_app_role
from repository.db.schema import alembic_config, upgrade_to_head
from tests.conftest import load_example_customers
from tests.servers import running_server
from tests.test_secrets import cli
from tests.webhook_streams import envelope, iso

PASSWORD_ENV = "CUSTOMER_STORE_APP_PASSWORD"
WEBHOOK_SECRET = f"whsec-priv-{uuid.uuid4().hex}"
INSUFFICIENT_PRIVILEGE = "42501"


@dataclass(frozen=True)
class AppRole:
    name: str
    password: str
    owner_url: str
    app_url: str
    grant_output: str


def valid_examples() -> list[dict[str, Any]]:
    found = []
    for _, raw in load_example_customers():
        try:
            parse_customer(raw)
        except CustomerValidationError:
            continue
        found.append(raw)
    return found


def drop_role(admin_urls: list[str], role: str) -> None:
    """Remove what the role holds in each database, then the role."""
    for url in admin_urls:
        engine = create_engine(url, isolation_level="AUTOCOMMIT")
        with engine.connect() as connection:
            connection.execute(
                text("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = :r"),
                {"r": role},
            )
            quoted = connection.dialect.identifier_preparer.quote(role)
            connection.execute(text(f"DROP OWNED BY {quoted}"))
        engine.dispose()
    engine = create_engine(admin_urls[0], isolation_level="AUTOCOMMIT")
    with engine.connect() as connection:
        quoted = connection.dialect.identifier_preparer.quote(role)
        connection.execute(text(f"DROP ROLE IF EXISTS {quoted}"))
    engine.dispose()


@pytest.fixture(scope="module")
def app_role(
    make_database: Any, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[AppRole]:
    owner_url = make_database("postgresql")
    upgrade_to_head(owner_url)
    name = f"cs_app_{uuid.uuid4().hex[:12]}"
    password = f"pw-{uuid.uuid4().hex}"
    run = cli(
        ["--database-url", owner_url, "grant-app-role", name, "--create",
         "--password-env", PASSWORD_ENV],
        cwd=tmp_path_factory.mktemp("grant"), env={PASSWORD_ENV: password},
    )
    try:
        assert run.returncode == 0, str(run)
        app_url = make_url(owner_url).set(username=name, password=password).render_as_string(
            hide_password=False
        )
        yield AppRole(name, password, owner_url, app_url, run.output)
    finally:
        drop_role([owner_url], name)


def sqlstate_of(exc: DBAPIError) -> str | None:
    return getattr(exc.orig, "sqlstate", None)


# --- what the role is ---------------------------------------------------------------------


def test_grant_creates_a_login_role_without_inherit_createdb_createrole_or_superuser(
    app_role: AppRole,
) -> None:
    assert app_role.password not in app_role.grant_output
    assert f"created role {app_role.name}" in app_role.grant_output
    engine = make_engine(app_role.owner_url)
    with engine.connect() as connection:
        row = connection.execute(
            text("SELECT rolcanlogin, rolinherit, rolcreatedb, rolcreaterole, rolsuper,"
                 " rolreplication, rolbypassrls FROM pg_roles WHERE rolname = :r"),
            {"r": app_role.name},
        ).one()
    engine.dispose()
    assert tuple(row) == (True, False, False, False, False, False, False)


def test_the_password_is_stored_as_a_scram_verifier_of_the_given_password(
    app_role: AppRole,
) -> None:
    engine = make_engine(app_role.owner_url)
    with engine.connect() as connection:
        stored = connection.scalar(
            text("SELECT rolpassword FROM pg_authid WHERE rolname = :r"), {"r": app_role.name}
        )
    engine.dispose()
    assert isinstance(stored, str) and stored.startswith("SCRAM-SHA-256$"), stored
    assert app_role.password not in stored
    # RFC 5802: StoredKey = H(HMAC(SaltedPassword, "Client Key")).
    iterations_salt, keys = stored.removeprefix("SCRAM-SHA-256$").split("$")
    iterations, salt = iterations_salt.split(":")
    stored_key, server_key = (base64.b64decode(k) for k in keys.split(":"))
    salted = hashlib.pbkdf2_hmac(
        "sha256", app_role.password.encode(), base64.b64decode(salt), int(iterations)
    )
    client_key = hmac.new(salted, b"Client Key", hashlib.sha256).digest()
    assert hashlib.sha256(client_key).digest() == stored_key
    assert hmac.new(salted, b"Server Key", hashlib.sha256).digest() == server_key


def test_the_role_gets_row_privileges_only_and_reads_the_schema_revision(
    app_role: AppRole,
) -> None:
    engine = make_engine(app_role.owner_url)
    with engine.connect() as connection:
        tables = connection.scalars(text(
            "SELECT tablename FROM pg_tables WHERE schemaname = current_schema()"
        )).all()
        assert "customers" in tables and "alembic_version" in tables

        def has(table: str, privilege: str) -> bool:
            return bool(connection.scalar(
                text("SELECT has_table_privilege(:r, :t, :p)"),
                {"r": app_role.name, "t": table, "p": privilege},
            ))

        for table in tables:
            writable = table != "alembic_version"
            for privilege in ("INSERT", "UPDATE", "DELETE"):
                assert has(table, privilege) is writable, (table, privilege)
            assert has(table, "SELECT"), table
            for privilege in ("TRUNCATE", "REFERENCES", "TRIGGER"):
                assert not has(table, privilege), (table, privilege)
        schema_rights = connection.execute(text(
            "SELECT has_schema_privilege(:r, current_schema(), 'USAGE'),"
            " has_schema_privilege(:r, current_schema(), 'CREATE'),"
            " has_database_privilege(:r, current_database(), 'TEMPORARY'),"
            " has_database_privilege(:r, current_database(), 'CREATE')"
        ), {"r": app_role.name}).one()
        assert tuple(schema_rights) == (True, False, True, False)
        owned = connection.scalar(text(
            "SELECT count(*) FROM pg_class WHERE relowner = "
            "(SELECT oid FROM pg_roles WHERE rolname = :r)"
        ), {"r": app_role.name})
        assert owned == 0
    engine.dispose()


def test_tables_created_later_by_the_owner_are_covered_by_default_privileges(
    app_role: AppRole,
) -> None:
    owner = make_engine(app_role.owner_url)
    app = make_engine(app_role.app_url)
    table = f"later_{uuid.uuid4().hex[:8]}"
    try:
        with owner.begin() as connection:
            connection.execute(text(f"CREATE TABLE {table} (i int)"))
        with app.begin() as connection:
            connection.execute(text(f"INSERT INTO {table} VALUES (1)"))  # noqa: S608
            connection.execute(text(f"UPDATE {table} SET i = 2"))  # noqa: S608
            assert connection.scalar(text(f"SELECT i FROM {table}")) == 2  # noqa: S608
            connection.execute(text(f"DELETE FROM {table}"))  # noqa: S608
        with pytest.raises(DBAPIError) as refused, app.begin() as connection:
            connection.execute(text(f"TRUNCATE {table}"))
        assert sqlstate_of(refused.value) == INSUFFICIENT_PRIVILEGE
    finally:
        app.dispose()
        with owner.begin() as connection:
            connection.execute(text(f"DROP TABLE IF EXISTS {table}"))
        owner.dispose()


# --- what the service does, as the role ---------------------------------------------------


def test_the_repository_works_as_the_app_role(app_role: AppRole) -> None:
    customer = valid_examples()[0]
    engine = make_engine(app_role.app_url)
    try:
        with Session(engine) as session:
            assert session.scalar(text("SELECT current_user")) == app_role.name
            repo = CustomerRepository(session)
            repo.upsert(customer)
            session.commit()
            stored = repo.get(customer["id"])
            assert stored is not None
            assert stored.to_dict() == parse_customer(customer).to_dict()
            page = repo.find(CustomerFilter(email=customer.get("email")), limit=10)
            assert customer["id"] in [c.id for c in page.customers]
            assert repo.delete(customer["id"], deleted_at=datetime.now(UTC))
            session.commit()
            assert repo.get(customer["id"]) is None
            assert repo.deleted_at(customer["id"]) is not None
    finally:
        engine.dispose()


def test_import_ingest_and_stats_work_as_the_app_role(app_role: AppRole, tmp_path: Path) -> None:
    customers = valid_examples()
    (tmp_path / "customers.jsonl").write_text(
        "".join(json.dumps(c) + "\n" for c in customers), encoding="utf-8"
    )
    target = customers[-1]
    updated = {**target, "updated_at": iso(datetime.now(UTC)), "name": "Renamed By Webhook"}
    event_id = f"evcus_{uuid.uuid4().hex}"
    (tmp_path / "events.jsonl").write_text(json.dumps(envelope(
        event_id, "customer.updated", {"customer": updated}, iso(datetime.now(UTC)),
        entity_id=target["id"],
    )) + "\n", encoding="utf-8")
    url = ["--database-url", app_role.app_url]
    imported = cli([*url, "import", "customers.jsonl", "--batch-size", "20"], cwd=tmp_path)
    assert imported.returncode == 0, str(imported)
    assert f"imported {len(customers)} records" in imported.output, str(imported)
    assert "0 rejected" in imported.output, str(imported)
    ingested = cli([*url, "ingest", "events.jsonl"], cwd=tmp_path)
    assert ingested.returncode == 0 and "1 applied" in ingested.output, str(ingested)
    got = cli([*url, "get", target["id"]], cwd=tmp_path)
    assert got.returncode == 0 and json.loads(got.output)["name"] == "Renamed By Webhook"
    stats = cli([*url, "stats"], cwd=tmp_path)
    assert stats.returncode == 0, str(stats)
    owner = make_engine(app_role.owner_url)
    with owner.connect() as connection:
        stored = connection.scalar(text("SELECT count(*) FROM customers"))
    owner.dispose()
    assert stored and json.loads(stats.output)["customers"] == stored
    for run in (imported, ingested, got, stats):
        assert app_role.password not in run.output


def test_serve_as_the_app_role_stores_a_signed_delivery(app_role: AppRole, tmp_path: Path) -> None:
    customer = {**valid_examples()[1], "updated_at": iso(datetime.now(UTC))}
    event_id = f"evcus_{uuid.uuid4().hex}"
    body = json.dumps(envelope(
        event_id, "customer.updated", {"customer": customer}, iso(datetime.now(UTC)),
        entity_id=customer["id"],
    )).encode()
    log_path = tmp_path / "serve.log"
    with running_server(app_role.app_url, log_path=log_path, secret=WEBHOOK_SECRET) as server:
        reply = server.deliver(body)
        log = server.log()
    assert reply.status == 200, (reply.body, log)
    assert reply.json()["outcome"] == "applied"
    assert app_role.password not in log
    owner = make_engine(app_role.owner_url)
    with Session(owner) as session:
        stored = CustomerRepository(session).get(customer["id"])
        assert stored is not None and stored.to_dict() == parse_customer(customer).to_dict()
    owner.dispose()


# --- what the role cannot do --------------------------------------------------------------


@pytest.mark.parametrize(
    "statement",
    [
        "CREATE TABLE x (i int)",
        "DROP TABLE customers",
        "ALTER TABLE customers ADD COLUMN z int",
        "TRUNCATE customers",
        "CREATE INDEX ix_z ON customers (name)",
        "DELETE FROM alembic_version",
    ],
)
def test_schema_changes_are_refused_to_the_app_role(app_role: AppRole, statement: str) -> None:
    engine = make_engine(app_role.app_url)
    try:
        with pytest.raises(DBAPIError) as refused, engine.begin() as connection:
            connection.execute(text(statement))
    finally:
        engine.dispose()
    message = str(refused.value.orig)
    assert sqlstate_of(refused.value) == INSUFFICIENT_PRIVILEGE, message
    assert "permission denied" in message or "must be owner" in message, message


def test_migrate_as_the_app_role_is_refused_on_a_database_at_base(
    app_role: AppRole, make_database: Any, tmp_path: Path
) -> None:
    owner_url = make_database("postgresql")
    upgrade_to_head(owner_url)
    command.downgrade(alembic_config(owner_url), "base")
    owner = make_engine(owner_url)
    with Session(owner) as session:
        report = grant_app_role(session, app_role.name)
        session.commit()
    assert report.read_only == ["alembic_version"] and report.read_write == []
    app_url = make_url(owner_url).set(
        username=app_role.name, password=app_role.password
    ).render_as_string(hide_password=False)
    try:
        run = cli(["--database-url", app_url, "migrate"], cwd=tmp_path)
        assert run.returncode == 1, str(run)
        assert "permission denied" in run.output, str(run)
        assert app_role.password not in run.output
        with owner.connect() as connection:
            tables = connection.scalars(text(
                "SELECT tablename FROM pg_tables WHERE schemaname = current_schema()"
            )).all()
            revision = connection.scalar(text("SELECT count(*) FROM alembic_version"))
        assert tables == ["alembic_version"] and revision == 0
    finally:
        with owner.connect() as connection:
            quoted = connection.dialect.identifier_preparer.quote(app_role.name)
            connection.execute(text(f"DROP OWNED BY {quoted}"))
            connection.commit()
        owner.dispose()


def test_role_names_are_quoted_as_identifiers(app_role: AppRole) -> None:
    name = f'cs "odd"; DROP TABLE customers; -- {uuid.uuid4().hex[:6]}'
    engine = make_engine(app_role.owner_url)
    try:
        with Session(engine) as session:
            grant_app_role(session, name, create=True, password="it's a \"pw\"")
            session.commit()
            assert session.scalar(
                text("SELECT count(*) FROM pg_roles WHERE rolname = :r"), {"r": name}
            ) == 1
            assert session.scalar(text("SELECT to_regclass('customers') IS NOT NULL"))
            assert session.scalar(
                text("SELECT has_table_privilege(:r, 'customers', 'INSERT')"), {"r": name}
            )
    finally:
        engine.dispose()
        drop_role([app_role.owner_url], name)


# --- names that are not one role ----------------------------------------------------------


def table_grantees(url: str) -> set[str]:
    """Every role (``PUBLIC`` included) holding a privilege on a store table."""
    engine = make_engine(url)
    with engine.connect() as connection:
        rows = connection.execute(text(
            "SELECT DISTINCT CASE WHEN a.grantee = 0 THEN 'PUBLIC' ELSE a.grantee::regrole::text"
            " END FROM pg_class c, aclexplode(c.relacl) a"
            " WHERE c.relname IN ('customers', 'webhook_events', 'customer_tombstones')"
        )).scalars().all()
    engine.dispose()
    return set(rows)


@pytest.mark.parametrize(
    "role",
    ["public", "PUBLIC", "Public", "pg_monitor", "PG_anything", "current_user", "SESSION_USER",
     "current_role", "", "   ", "a" * 64, "app\trole"],
)
def test_grant_refuses_names_that_are_not_one_role_with_exit_2_and_grants_nothing(
    app_role: AppRole, tmp_path: Path, role: str
) -> None:
    before = table_grantees(app_role.owner_url)

    run = cli(["--database-url", app_role.owner_url, "grant-app-role", role], cwd=tmp_path)

    assert run.returncode == 2, str(run)
    assert len(run.output.strip().splitlines()) == 1, str(run)
    assert "argument NAME" in run.output and "Traceback" not in run.output, str(run)
    assert "PUBLIC" not in table_grantees(app_role.owner_url)
    assert table_grantees(app_role.owner_url) == before


def test_grant_on_sqlite_is_refused_before_the_name_is_used(tmp_path: Path) -> None:
    run = cli(["--database-url", f"sqlite:///{tmp_path / 'x.db'}", "grant-app-role", "public"],
              cwd=tmp_path)
    assert run.returncode == 2, str(run)
    assert "Traceback" not in run.output


# --- running it again, and without CREATEROLE ---------------------------------------------


def test_grant_with_create_run_twice_succeeds_and_says_the_role_exists(
    app_role: AppRole, tmp_path: Path
) -> None:
    name = f"cs_rerun_{uuid.uuid4().hex[:10]}"
    grant = ["--database-url", app_role.owner_url, "grant-app-role", name, "--create"]
    try:
        first = cli(grant, cwd=tmp_path)
        assert first.returncode == 0, str(first)
        assert f"created role {name}" in first.output, str(first)

        again = cli([*grant, "--password-env", PASSWORD_ENV], cwd=tmp_path,
                    env={PASSWORD_ENV: "pw-second-run"})

        assert again.returncode == 0, str(again)
        assert f"role {name} (it exists already; not created) with a new password" \
            in again.output, str(again)
        assert "created role" not in again.output, str(again)
        assert name in table_grantees(app_role.owner_url)
    finally:
        drop_role([app_role.owner_url], name)


def test_grant_without_createrole_names_the_privilege_it_needs(
    app_role: AppRole, tmp_path: Path
) -> None:
    runner = f"cs_nocreaterole_{uuid.uuid4().hex[:8]}"
    wanted = f"cs_wanted_{uuid.uuid4().hex[:8]}"
    owner = create_engine(app_role.owner_url, isolation_level="AUTOCOMMIT")
    try:
        with owner.connect() as connection:
            connection.execute(text(f'CREATE ROLE "{runner}" LOGIN NOCREATEROLE NOSUPERUSER'))
            connection.execute(text(f'GRANT SELECT ON alembic_version TO "{runner}"'))
        runner_url = make_url(app_role.owner_url).set(username=runner).render_as_string(
            hide_password=False
        )

        run = cli(["--database-url", runner_url, "grant-app-role", wanted, "--create"],
                  cwd=tmp_path)

        assert run.returncode == 1, str(run)
        assert len(run.output.strip().splitlines()) == 1, str(run)
        assert "needs the CREATEROLE privilege" in run.output, str(run)
        assert "Traceback" not in run.output, str(run)
        with owner.connect() as connection:
            assert connection.scalar(
                text("SELECT count(*) FROM pg_roles WHERE rolname = :r"), {"r": wanted}
            ) == 0
    finally:
        owner.dispose()
        drop_role([app_role.owner_url], runner)
