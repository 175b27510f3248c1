"""Statements the hot paths run on the driver's cursor (``repository.db.driver``): on psycopg
with PostgreSQL's own ``$n`` placeholders, which the store writes from SQLAlchemy's."""

from __future__ import annotations

import json
import logging

import pytest
from sqlalchemy import (
    JSON,
    Column,
    Engine,
    Integer,
    MetaData,
    String,
    Table,
    bindparam,
    column,
    create_engine,
    select,
    text,
)
from sqlalchemy.sql.expression import Executable

from repository.db import driver
from repository.db.backends import backend_of
from repository.db.driver import PooledConnection, fetch_first, needs_execute, pipelined, send
from repository.store.reads import (
    get_by_id_statement,
    get_by_key_statement,
    get_by_source_id_statement,
)

# Module-level: a plan is kept for the statement's lifetime.
_PERCENT_AND_REPEATS = text(
    "SELECT :b AS b, :a AS a, :b || :a AS ba, '100%' AS percent, :a || '%' AS a_percent"
).columns(
    column("b", String), column("a", String), column("ba", String), column("percent", String),
    column("a_percent", String),
)
_ADD = text("SELECT CAST(:x AS integer) + CAST(:y AS integer) AS total").columns(
    column("total", Integer)
)


def test_a_statement_keeps_its_literal_percent_signs_and_binds_a_repeated_parameter_once(
    engine: Engine,
) -> None:
    with engine.connect() as connection:
        row = fetch_first(connection, _PERCENT_AND_REPEATS, {"a": "x%y", "b": "$1"})
    assert row == {"b": "$1", "a": "x%y", "ba": "$1x%y", "percent": "100%", "a_percent": "x%y%"}


def test_statements_sent_in_a_pipeline_are_each_answered_with_their_own_parameters(
    engine: Engine,
) -> None:
    with engine.connect() as connection, connection.begin():
        with pipelined(connection):
            sent = [send(connection, _ADD, {"x": n, "y": 10 * n}) for n in range(1, 4)]
        assert [s.first() for s in sent] == [{"total": 11}, {"total": 22}, {"total": 33}]


_DOCUMENT = text("SELECT CAST(:doc AS text) AS doc").bindparams(
    bindparam("doc", type_=JSON)
).columns(column("doc", String))


def test_each_engine_binds_with_its_own_json_serializer(database_url: str) -> None:
    # Plans are kept per dialect instance: two engines of one dialect class may differ.
    plain = create_engine(database_url, json_serializer=json.dumps)
    wrapped = create_engine(database_url, json_serializer=lambda v: json.dumps({"w": v}))
    try:
        for engine, expected in ((plain, [1]), (wrapped, {"w": [1]}), (plain, [1])):
            with engine.connect() as connection:
                row = fetch_first(connection, _DOCUMENT, {"doc": [1]})
            assert row is not None and json.loads(row["doc"]) == expected
    finally:
        plain.dispose()
        wrapped.dispose()


def test_the_plans_kept_are_bounded_and_a_dropped_one_is_compiled_again(
    engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(driver, "PLANS_KEPT", 3)
    statements = [
        text(f"SELECT {n} AS n").columns(column("n", Integer)) for n in range(6)
    ]
    with engine.connect() as connection:
        for _ in range(2):
            for n, statement in enumerate(statements):
                assert fetch_first(connection, statement, {}) == {"n": n}
                assert len(driver._plans) <= 3


def test_a_schema_translate_map_is_applied_through_execute(engine: Engine) -> None:
    if engine.dialect.name != "postgresql":
        pytest.skip("SQLite has no schemas beside the attached databases")
    numbers = Table("numbers", MetaData(), Column("n", Integer))
    statement = select(numbers.c.n)
    with engine.begin() as connection:
        connection.exec_driver_sql("CREATE SCHEMA cs_translated")
        connection.exec_driver_sql("CREATE TABLE cs_translated.numbers (n integer)")
        connection.exec_driver_sql("INSERT INTO cs_translated.numbers VALUES (7)")
    try:
        translated = engine.execution_options(schema_translate_map={None: "cs_translated"})
        assert needs_execute(translated) and not needs_execute(engine)
        with translated.connect() as connection:
            assert fetch_first(connection, statement, {}) == {"n": 7}
        with pytest.raises(ValueError, match="schema_translate_map"):
            PooledConnection(translated)
        with engine.connect() as connection, pytest.raises(ValueError, match="execute"):
            fetch_first(
                connection,
                statement.execution_options(schema_translate_map={None: "cs_translated"}),
                {},
            )
    finally:
        with engine.begin() as connection:
            connection.exec_driver_sql("DROP SCHEMA cs_translated CASCADE")


def test_statements_go_through_execute_while_the_engine_logs_them(
    engine: Engine, caplog: pytest.LogCaptureFixture
) -> None:
    assert not needs_execute(engine)
    with caplog.at_level(logging.INFO, logger="sqlalchemy.engine"):
        assert needs_execute(engine)
        with engine.connect() as connection:
            assert fetch_first(connection, _ADD, {"x": 1, "y": 2}) == {"total": 3}
    assert any("CAST" in record.getMessage() for record in caplog.records)


def test_a_plan_names_the_columns_as_sqlalchemys_own_result_does(engine: Engine) -> None:
    backend = backend_of(engine)
    statements: dict[Executable, dict[str, str]] = {
        get_by_id_statement(backend): {"id": "cust_none"},
        get_by_source_id_statement(backend): {"source_id": "none"},
        get_by_key_statement(backend): {"key": "none"},
        _PERCENT_AND_REPEATS: {"a": "a", "b": "b"},
    }
    with engine.connect() as connection:
        for statement, params in statements.items():
            keys = tuple(connection.execute(statement, params).keys())
            assert driver._plan(statement, engine.dialect).names == keys
