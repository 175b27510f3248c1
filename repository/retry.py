"""Transactions that are retried when the database asks for it.

PostgreSQL may abort a transaction with a serialization failure or a deadlock, or lose
its connection; SQLite may report "database is locked" past its busy timeout. Each of
those leaves nothing behind (the transaction rolled back), so the whole unit of work is
run again, a bounded number of times with growing, jittered pauses.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable
from typing import TypeVar

from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session, sessionmaker

__all__ = ["DEFAULT_ATTEMPTS", "is_retryable", "run_in_transaction"]

T = TypeVar("T")
DEFAULT_ATTEMPTS = 6
_RETRYABLE_SQLSTATES = frozenset({"40001", "40P01"})  # serialization_failure, deadlock
_log = logging.getLogger(__name__)


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
) -> T:
    """Run ``work`` in a fresh transaction, committing on success; retry what is retryable."""
    for attempt in range(1, attempts + 1):
        try:
            with sessions.begin() as session:
                return work(session)
        except DBAPIError as exc:
            if attempt == attempts or not is_retryable(exc):
                raise
            delay = min(max_delay, base_delay * 2 ** (attempt - 1)) * random.uniform(0.5, 1.0)  # noqa: S311
            _log.warning(
                "retrying transaction (attempt %d of %d) after %s",
                attempt + 1, attempts, type(exc.orig).__name__,
            )
            time.sleep(delay)
    raise AssertionError("unreachable")
