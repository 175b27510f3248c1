"""Transactions that are retried when the database asks for it.

PostgreSQL may abort a transaction with a serialization failure or a deadlock, or lose
its connection; SQLite may report "database is locked" past its busy timeout. Each of
those leaves nothing behind (the transaction rolled back), so the whole unit of work is
run again, a bounded number of times with growing, jittered pauses.

A caller that must answer in time (the webhook receiver: Voucherify counts a delivery that
takes more than 10 seconds as failed) passes ``timeout``: the attempts, the pauses between
them and every lock wait inside them then end by that time, and
:class:`DeadlineExceeded` says that nothing was committed.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable
from typing import TypeVar

from sqlalchemy import text
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session, sessionmaker

from repository.engine import set_sqlite_busy_timeout

__all__ = ["DEFAULT_ATTEMPTS", "DeadlineExceeded", "is_retryable", "run_in_transaction"]

T = TypeVar("T")
DEFAULT_ATTEMPTS = 6
_RETRYABLE_SQLSTATES = frozenset({"40001", "40P01"})  # serialization_failure, deadlock
# lock_not_available (lock_timeout), query_canceled (statement_timeout)
_TIMEOUT_SQLSTATES = frozenset({"55P03", "57014"})
# Transaction-local (is_local = true): nothing outlives the transaction, so the setting is
# safe behind a transaction pooler too.
_BOUND_WAITS = text(
    "SELECT set_config('lock_timeout', :ms, true), set_config('statement_timeout', :ms, true)"
)
_log = logging.getLogger(__name__)


class DeadlineExceeded(Exception):
    """The transaction did not commit within its time bound; nothing of it was kept."""

    def __init__(self, timeout: float) -> None:
        super().__init__(f"not done within {timeout:g} s (lock waits and retries included)")
        self.timeout = timeout


def is_retryable(exc: DBAPIError) -> bool:
    """Whether running the same transaction again may succeed."""
    if exc.connection_invalidated:
        return True
    sqlstate = getattr(exc.orig, "sqlstate", None)
    if sqlstate in _RETRYABLE_SQLSTATES:
        return True
    message = str(exc.orig).lower()
    return "database is locked" in message or "database table is locked" in message


def run_in_transaction(
    sessions: sessionmaker[Session],
    work: Callable[[Session], T],
    *,
    attempts: int = DEFAULT_ATTEMPTS,
    base_delay: float = 0.05,
    max_delay: float = 2.0,
    timeout: float | None = None,
) -> T:
    """Run ``work`` in a fresh transaction, committing on success; retry what is retryable.

    With ``timeout`` (seconds), everything ends within it: a lock wait or statement that
    would outlast it is cut short, no retry starts that could not finish in time, and
    :class:`DeadlineExceeded` is raised instead.
    """
    deadline = None if timeout is None else time.monotonic() + timeout
    for attempt in range(1, attempts + 1):
        try:
            with sessions.begin() as session:
                if deadline is not None:
                    _bound_waits(session, deadline, timeout or 0.0)
                return work(session)
        except DBAPIError as exc:
            sqlstate = getattr(exc.orig, "sqlstate", None)
            if deadline is not None and sqlstate in _TIMEOUT_SQLSTATES:
                raise DeadlineExceeded(timeout or 0.0) from exc
            if attempt == attempts or not is_retryable(exc):
                raise
            delay = min(max_delay, base_delay * 2 ** (attempt - 1)) * random.uniform(0.5, 1.0)  # noqa: S311
            if deadline is not None and time.monotonic() + delay >= deadline:
                raise DeadlineExceeded(timeout or 0.0) from exc
            _log.warning(
                "retrying transaction (attempt %d of %d) after %s",
                attempt + 1, attempts, type(exc.orig).__name__,
            )
            time.sleep(delay)
    raise AssertionError("unreachable")


def _bound_waits(session: Session, deadline: float, timeout: float) -> None:
    """Make every wait of this transaction end by ``deadline`` (a ``time.monotonic()``)."""
    remaining_ms = int((deadline - time.monotonic()) * 1000)
    if remaining_ms < 1:  # 0 would mean "no limit" to both databases
        raise DeadlineExceeded(timeout)
    connection = session.connection()
    if connection.dialect.name == "postgresql":
        connection.execute(_BOUND_WAITS, {"ms": str(remaining_ms)})
    else:
        set_sqlite_busy_timeout(connection, remaining_ms)
