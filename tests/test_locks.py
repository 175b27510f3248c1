"""Per-customer advisory locks on PostgreSQL: taken once per transaction, and really held
by every transaction (and savepoint) that asked for them."""

from __future__ import annotations

import pytest
from sqlalchemy import Engine, event, text
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session

from repository.db.locks import LOCK_NAMESPACE, lock_customers


@pytest.fixture
def pg_engine(engine: Engine) -> Engine:
    if engine.dialect.name != "postgresql":
        pytest.skip("advisory locks are PostgreSQL's; SQLite has one writer")
    return engine


def held_by_others(engine: Engine) -> int:
    """Advisory locks of the store's namespace held, seen from another connection."""
    with engine.connect() as connection:
        return int(connection.scalar(text(
            "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND classid = :ns"
            " AND granted"
        ), {"ns": LOCK_NAMESPACE}) or 0)


def test_a_lock_asked_for_twice_in_a_transaction_costs_one_statement(pg_engine: Engine) -> None:
    with Session(pg_engine) as session:
        lock_customers(session, ["cust_a"])
        statements: list[str] = []

        def seen(*args: object) -> None:
            statements.append(str(args[2]))

        event.listen(pg_engine, "before_cursor_execute", seen)
        try:
            lock_customers(session, ["cust_a"])
            lock_customers(session, ["cust_a", "cust_b"])
        finally:
            event.remove(pg_engine, "before_cursor_execute", seen)
        assert len(statements) == 1  # cust_b only
        assert held_by_others(pg_engine) == 2
        session.rollback()
    assert held_by_others(pg_engine) == 0


def test_the_next_transaction_takes_the_lock_again(pg_engine: Engine) -> None:
    with Session(pg_engine) as session:
        lock_customers(session, ["cust_a"])
        session.commit()
        assert held_by_others(pg_engine) == 0
        lock_customers(session, ["cust_a"])
        assert held_by_others(pg_engine) == 1
        session.rollback()


def test_a_lock_released_with_its_savepoint_is_taken_again(pg_engine: Engine) -> None:
    with Session(pg_engine) as session:
        session.connection()
        savepoint = session.begin_nested()
        lock_customers(session, ["cust_a"])
        assert held_by_others(pg_engine) == 1
        savepoint.rollback()
        assert held_by_others(pg_engine) == 0
        lock_customers(session, ["cust_a"])
        assert held_by_others(pg_engine) == 1
        session.rollback()


@pytest.mark.parametrize(("first", "second"), [
    (["cust_a"], ["cust_b", "cust_a"]),
    (["cust_b", "cust_a"], ["cust_a"]),
])
def test_a_customer_locked_alone_or_among_others_is_one_lock(
    pg_engine: Engine, first: list[str], second: list[str]
) -> None:
    with Session(pg_engine) as holder, Session(pg_engine) as waiter:
        lock_customers(holder, first)
        waiter.execute(text("SET LOCAL lock_timeout = '200ms'"))
        with pytest.raises(DBAPIError) as waited:
            lock_customers(waiter, second)
        assert getattr(waited.value.orig, "sqlstate", None) == "55P03"  # lock_not_available
        waiter.rollback()
        holder.rollback()
        lock_customers(waiter, second)  # free once the holder has ended
        waiter.rollback()
