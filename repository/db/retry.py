"""Transactions that are retried when the database asks for it, and reads retried once
after a lost connection; sync and async.

PostgreSQL may abort a transaction with a serialization failure or a deadlock, or lose
its connection; SQLite may report "database is locked" past its busy timeout. Each of
those leaves nothing behind (the transaction rolled back), so the whole unit of work is
run again, a bounded number of times with growing, jittered pauses.

A caller that must answer in time (the webhook receiver: Voucherify counts a delivery that
takes more than 10 seconds as failed) passes ``timeout``: the attempts, the pauses between
them and every lock wait inside them then end by that time, and
:class:`DeadlineExceeded` says that nothing was committed.

``on_retry`` is called with the error before each retry (the receiver counts them for its
metrics), so that what watches retries need not be known here.

A read that meets a lost connection (a failover, a restarted pooler, an idle timeout:
the pool is invalidated with it) runs once more, on a fresh connection: :func:`run_read`
for a read of its own (an engine-level read), :func:`read_in_session` for one on a
session of its own. A read inside a caller's transaction is never retried here (the
transaction is gone with its connection: the caller decides); a caller's autocommit
session has no transaction to lose (:func:`retries_reads`).

One policy (tenacity) drives both faces: :func:`run_in_transaction` with a sync session
factory, :func:`run_in_transaction_async` with an async one, whose unit of work is the same
sync function, run on the async connection through ``AsyncSession.run_sync``.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

import psycopg
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from sqlalchemy.orm import Session, sessionmaker
from tenacity import (
    AsyncRetrying,
    RetryCallState,
    Retrying,
    retry_if_exception,
)

from repository.db.backends import backend_of
from repository.db.commit_wait import NotReplicated, guarded_commit
from repository.db.errors import first_line, is_pooler_clash, is_server_gone

__all__ = [
    "DEFAULT_ATTEMPTS",
    "DeadlineExceeded",
    "NotReplicated",
    "RetryListener",
    "database_refusal",
    "is_lost_connection",
    "is_retryable",
    "read_in_session",
    "read_in_session_async",
    "retries_reads",
    "run_in_transaction",
    "run_in_transaction_async",
    "run_read",
    "run_read_async",
]

T = TypeVar("T")
#: Called with the error that made a transaction run again, before it does.
RetryListener = Callable[[BaseException | None], None]
DEFAULT_ATTEMPTS = 6
_RETRYABLE_SQLSTATES = frozenset({"40001", "40P01"})  # serialization_failure, deadlock
# lock_not_available (lock_timeout), query_canceled (statement_timeout)
_TIMEOUT_SQLSTATES = frozenset({"55P03", "57014"})
# Transaction-local (is_local = true): nothing outlives the transaction, so the setting is
# safe behind a transaction pooler too.
_log = logging.getLogger(__name__)
#: The longest wait either database takes, in milliseconds: PostgreSQL's lock_timeout and
#: statement_timeout and SQLite's busy timeout are C ints. A longer bound waits this long.
_MAX_WAIT_MS = 2_147_483_647


class DeadlineExceeded(Exception):
    """The transaction did not commit within its time bound; nothing of it was kept."""

    def __init__(self, timeout: float) -> None:
        super().__init__(f"not done within {timeout:g} s (lock waits and retries included)")
        self.timeout = timeout


def is_retryable(exc: BaseException) -> bool:
    """Whether running the same transaction again may succeed: a serialization failure or
    deadlock, SQLite's lock, a lost connection, or any error saying the connection or the
    primary is gone (class 08, 57P01-57P03, 25006 after a demotion: see
    :func:`~repository.db.errors.is_server_gone`), or PostgreSQL not reached at all (the
    driver's connect-time errors carry no SQLSTATE)."""
    if not isinstance(exc, DBAPIError):
        return False
    if exc.connection_invalidated or is_server_gone(exc):
        return True
    sqlstate = getattr(exc.orig, "sqlstate", None)
    if sqlstate in _RETRYABLE_SQLSTATES:
        return True
    if isinstance(exc.orig, psycopg.OperationalError) and sqlstate is None:
        return True
    message = str(exc.orig).lower()
    return "database is locked" in message or "database table is locked" in message


def database_refusal(exc: BaseException) -> str | None:
    """Why the database refused what a transaction wrote, when ``exc`` (raised once its
    retries were spent) says so: not a transient failure, nor prepared statements clashing
    behind a pooler (no record's fault). One line: :func:`~repository.db.errors.first_line`."""
    if not isinstance(exc, DBAPIError) or is_retryable(exc) or is_pooler_clash(exc):
        return None
    return f"the database refused it: {first_line(exc)}"


def run_in_transaction(
    sessions: sessionmaker[Session],
    work: Callable[[Session], T],
    *,
    attempts: int = DEFAULT_ATTEMPTS,
    base_delay: float = 0.05,
    max_delay: float = 2.0,
    timeout: float | None = None,
    on_retry: RetryListener | None = None,
) -> T:
    """Run ``work`` in a fresh transaction, committing on success; retry what is retryable.

    With ``timeout`` (seconds), everything ends within it: a lock wait or statement that
    would outlast it is cut short, no retry starts that could not finish in time, and
    :class:`DeadlineExceeded` is raised instead. ``on_retry`` is called with the error
    before each retry.
    """
    bound = _Bound(timeout)
    for attempt in Retrying(**_policy(attempts, base_delay, max_delay, bound, on_retry)):
        with attempt, bound.translated(), sessions.begin() as session:
            return _attempt(session, work, bound)
    raise AssertionError("unreachable: the policy re-raises the last error")


async def run_in_transaction_async(
    sessions: async_sessionmaker[AsyncSession],
    work: Callable[[Session], T],
    *,
    attempts: int = DEFAULT_ATTEMPTS,
    base_delay: float = 0.05,
    max_delay: float = 2.0,
    timeout: float | None = None,
    on_retry: RetryListener | None = None,
) -> T:
    """:func:`run_in_transaction` for async sessions: the same ``work`` (a sync function of
    a session), the same retries and time bound, without blocking the event loop on I/O."""
    bound = _Bound(timeout)
    policy = _policy(attempts, base_delay, max_delay, bound, on_retry)
    async for attempt in AsyncRetrying(**policy):
        with attempt, bound.translated():
            async with sessions.begin() as session:
                return await session.run_sync(_attempt, work, bound)
    raise AssertionError("unreachable: the policy re-raises the last error")


class _Bound:
    """The time bound of one unit of work (or none)."""

    def __init__(self, timeout: float | None) -> None:
        self.timeout = timeout
        self.deadline = None if timeout is None else time.monotonic() + timeout

    def exceeded(self) -> DeadlineExceeded:
        return DeadlineExceeded(self.timeout or 0.0)

    @contextmanager
    def translated(self) -> Iterator[None]:
        """A wait the bound cut short is the bound reached, not a database failure."""
        try:
            yield
        except DBAPIError as exc:
            sqlstate = getattr(exc.orig, "sqlstate", None)
            if self.deadline is not None and sqlstate in _TIMEOUT_SQLSTATES:
                raise self.exceeded() from exc
            raise

    def bound_waits(self, session: Session) -> None:
        """Make every wait of this transaction end by the deadline."""
        if self.deadline is None:
            return
        remaining_ms = int((self.deadline - time.monotonic()) * 1000)
        if remaining_ms < 1:  # 0 would mean "no limit" to both databases
            raise self.exceeded()
        remaining_ms = min(remaining_ms, _MAX_WAIT_MS)
        connection = session.connection()
        backend_of(connection).bound_waits(connection, remaining_ms)


def _attempt(session: Session, work: Callable[[Session], T], bound: _Bound) -> T:
    bound.bound_waits(session)
    result = work(session)
    # The COMMIT too ends by the deadline (a synchronous standby that is down makes it
    # wait, which no statement_timeout ends), and one only local is no success.
    guarded_commit(session, bound.deadline)
    return result


def _policy(
    attempts: int,
    base_delay: float,
    max_delay: float,
    bound: _Bound,
    on_retry: RetryListener | None = None,
) -> dict[str, Any]:
    """What both faces retry, how long they pause, and when they stop."""

    def pause(state: RetryCallState) -> float:
        growing = min(max_delay, base_delay * 2.0 ** (state.attempt_number - 1))
        return growing * random.uniform(0.5, 1.0)  # noqa: S311 (jitter, not a secret)

    def stop(state: RetryCallState) -> bool:
        if state.attempt_number >= attempts:
            return True
        # The pause is decided before this runs: a retry that could not finish in time
        # does not start.
        deadline = bound.deadline
        if deadline is not None and time.monotonic() + state.upcoming_sleep >= deadline:
            raise bound.exceeded() from _failure(state)
        return False

    def log_retry(state: RetryCallState) -> None:
        _log.warning(
            "retrying transaction (attempt %d of %d) after %s",
            state.attempt_number + 1, attempts, type(_cause(state)).__name__,
        )
        if on_retry is not None:
            on_retry(_failure(state))

    return {
        "retry": retry_if_exception(is_retryable),
        "wait": pause,
        "stop": stop,
        "before_sleep": log_retry,
        "reraise": True,
    }


def _failure(state: RetryCallState) -> BaseException | None:
    return state.outcome.exception() if state.outcome is not None else None


def _cause(state: RetryCallState) -> BaseException | None:
    failure = _failure(state)
    return getattr(failure, "orig", failure)


# Marks a session whose reads a retry around it covers: its statements are not retried
# again inside.
_READ_RETRIED = "customer_store.read_retried"


def is_lost_connection(exc: BaseException) -> bool:
    """Whether ``exc`` says the connection was lost (invalidated, with the pool) or the
    server behind it is gone: the same read on a fresh connection may succeed."""
    return isinstance(exc, DBAPIError) and (exc.connection_invalidated or is_server_gone(exc))


def run_read(read: Callable[[], T]) -> T:
    """``read()``, run once more when it meets a lost connection. ``read`` must check out
    its own connection (an engine-level read, or a session of its own)."""
    # A plain try rather than a retry policy: on a hot path (one ``get``) the first attempt
    # costs nothing more than the read.
    try:
        return read()
    except DBAPIError as exc:
        if not _read_again(exc):
            raise
    return read()


async def run_read_async(read: Callable[[], Awaitable[T]]) -> T:
    """:func:`run_read` for a coroutine function."""
    try:
        return await read()
    except DBAPIError as exc:
        if not _read_again(exc):
            raise
    return await read()


def read_in_session(sessions: sessionmaker[Session], work: Callable[[Session], T]) -> T:
    """``work`` (reads only) on a session of its own, closed after; run once more on a new
    session when it meets a lost connection."""

    def once() -> T:
        with sessions() as session:
            session.info[_READ_RETRIED] = True
            return work(session)

    return run_read(once)


async def read_in_session_async(
    sessions: async_sessionmaker[AsyncSession], work: Callable[[Session], T]
) -> T:
    """:func:`read_in_session` for async sessions: the same sync ``work``, through
    ``AsyncSession.run_sync``."""

    async def once() -> T:
        async with sessions() as session:
            session.sync_session.info[_READ_RETRIED] = True
            return await session.run_sync(work)

    return await run_read_async(once)


def retries_reads(session: Session) -> bool:
    """Whether a read on ``session`` may be retried where it is made: the session is in
    autocommit (no transaction of the caller's to lose) and no retry around it
    (:func:`read_in_session`) covers it already."""
    if session.info.get(_READ_RETRIED):
        return False
    connection = session.connection()
    return getattr(connection.connection.dbapi_connection, "autocommit", False) is True


def _read_again(exc: DBAPIError) -> bool:
    """Whether a read that raised ``exc`` is run once more (and says so in the log)."""
    if not is_lost_connection(exc):
        return False
    _log.warning(
        "retrying a read on a new connection after %s", type(exc.orig or exc).__name__
    )
    return True
