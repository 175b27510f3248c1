"""Statements the hot paths run on the driver's cursor (``repository.db.driver``): on psycopg
with PostgreSQL's own ``$n`` placeholders, which the store writes from SQLAlchemy's."""

from __future__ import annotations

from sqlalchemy import Engine, Integer, String, column, text

from repository.db.driver import fetch_first, pipelined, send

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
