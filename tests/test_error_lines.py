"""What a person reads of a database error is built in one place
(``repository.db.errors.first_line``), whichever path the statement ran on: the same refusal
reads the same from the repository, ``import`` (bulk) and ``ingest`` (the driver's
pipelined writes); the grants, run on the driver's cursor, fail with SQLAlchemy's error
(seen by ``handle_error`` listeners, without the statement), and the CLI prints its first
line as it prints any database error's.
"""

from __future__ import annotations

import ast
import json
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine, event, text
from sqlalchemy.engine import ExceptionContext
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session

import customer_store
from repository import CustomerRepository, make_engine
from repository.admin.privileges import grant_app_role
from repository.db import first_line
from repository.db.schema import upgrade_to_head
from tests.test_forget import T0, customer_of, delivery
from tests.test_ingest_cli import POSTGRES_TRIGGER, REFUSED_NAME
from tests.test_secrets import cli

#: The first line of the test trigger's refusal.
REFUSAL = "customer name refused by a test trigger"
#: undefined_object: a grant to a role that does not exist.
UNDEFINED_OBJECT = "42704"


@pytest.fixture(scope="module")
def postgres(make_database: Any) -> Iterator[tuple[str, Engine]]:
    url = make_database("postgresql")
    upgrade_to_head(url)
    engine = make_engine(url)
    yield url, engine
    engine.dispose()


def test_a_refusal_reads_the_same_from_the_repository_import_and_ingest(
    postgres: tuple[str, Engine], tmp_path: Path
) -> None:
    url, engine = postgres
    with engine.begin() as connection:
        for statement in POSTGRES_TRIGGER:
            connection.execute(text(statement))
    try:
        with Session(engine) as session, pytest.raises(DBAPIError) as caught:
            CustomerRepository(session).upsert(customer_of("cust_LinesRepo0001", name=REFUSED_NAME))
        assert first_line(caught.value) == REFUSAL
        reason = f"the database refused it: {REFUSAL}"

        (tmp_path / "customers.jsonl").write_text(
            json.dumps(customer_of("cust_LinesImport01", name=REFUSED_NAME)) + "\n",
            encoding="utf-8",
        )
        imported = cli(["--database-url", url, "import", "customers.jsonl"], cwd=tmp_path)
        assert imported.returncode == 1, str(imported)
        assert f"rejected line 1: {reason}\n" in imported.output, str(imported)

        event_line = delivery("customer.created", {
            "customer": customer_of("cust_LinesIngest01", name=REFUSED_NAME)}, T0,
            ascii_only=True)
        (tmp_path / "events.jsonl").write_text(event_line + "\n", encoding="utf-8")
        ingested = cli(["--database-url", url, "ingest", "events.jsonl"], cwd=tmp_path)
        event_id = json.loads(event_line)["event"]["id"]
        assert ingested.returncode == 1, str(ingested)
        assert f"rejected line 1 (event {event_id}): {reason}\n" in ingested.output, \
            str(ingested)
    finally:
        with engine.begin() as connection:
            connection.execute(text("DROP TRIGGER test_refuse_name ON customers"))
            connection.execute(text("DROP FUNCTION test_refuse_name()"))


def test_a_refused_grant_is_sqlalchemys_error_and_the_cli_prints_its_first_line(
    postgres: tuple[str, Engine], tmp_path: Path
) -> None:
    url, engine = postgres
    missing = f"cs_missing_{uuid.uuid4().hex[:10]}"
    seen: list[ExceptionContext] = []

    def watch(context: ExceptionContext) -> None:
        seen.append(context)

    event.listen(engine, "handle_error", watch)
    try:
        with Session(engine) as session, pytest.raises(DBAPIError) as caught:
            grant_app_role(session, missing)
    finally:
        event.remove(engine, "handle_error", watch)

    error = caught.value
    assert getattr(error.orig, "sqlstate", None) == UNDEFINED_OBJECT
    assert [context.sqlalchemy_exception for context in seen] == [error]
    assert "GRANT" not in str(error)
    line = first_line(error)
    assert line == f'role "{missing}" does not exist'

    run = cli(["--database-url", url, "grant-app-role", missing], cwd=tmp_path)
    assert run.returncode == 1, str(run)
    assert run.output == f"customer-store: database error: {line}\n", str(run)


def test_the_cli_never_meets_the_drivers_own_errors() -> None:
    """Every database error reaches the commands and the server as SQLAlchemy's: none of
    their modules imports the driver (to catch ``psycopg.Error``)."""
    importing = []
    for path in Path(customer_store.__file__).parent.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            names = [alias.name for alias in node.names] if isinstance(node, ast.Import) else (
                [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            importing += [f"{path.name}: {name}" for name in names
                          if name.split(".")[0] == "psycopg"]
    assert importing == []
