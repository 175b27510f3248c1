"""Reads on a streaming standby: which engine each read goes to.

A :class:`ReadRouter` (sync engines) or :class:`AsyncReadRouter` (async engines) holds
the primary and a read replica. A read goes to the replica while its lag is within
``max_lag`` seconds, else to the primary until it catches up; a replica that cannot be
reached sends reads to the primary too, and each such read is counted by reason
(:class:`FallbackReason`). A read never needs the primary while the replica is fine, so
reads go on while the primary is down. Without a replica, or on SQLite, every read goes
to the primary.

The lag is measured at most once per ``check_interval``, in one round trip bounded by
``check_timeout`` (how it is read: :mod:`repository.db.standby`).

Read-your-writes: after a write, :meth:`ReadRouter.commit_position` gives a WAL position
(a ``pg_lsn`` text such as ``"0/3000148"``) that is at or past the commit. A read given
it as ``after=`` waits up to ``wait`` seconds for the replica to replay it, then reads
from the primary instead.
"""

from __future__ import annotations

import asyncio
import enum
import math
import threading
import time
from collections.abc import Callable, Mapping
from typing import TypeVar

from sqlalchemy import Engine
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import (
    AsyncEngine,
    AsyncSession,
    async_sessionmaker,
)
from sqlalchemy.orm import Session, sessionmaker

from repository.db.backends import backend_of
from repository.db.engine import make_async_session_factory, make_session_factory
from repository.db.retry import read_in_session, read_in_session_async
from repository.db.standby import (
    commit_position,
    has_replayed,
    look,
    primary_ahead,
    require_position,
    sends_to_primary,
)

__all__ = [
    "DEFAULT_CHECK_INTERVAL",
    "DEFAULT_MAX_LAG",
    "DEFAULT_WAIT",
    "AsyncReadRouter",
    "FallbackReason",
    "ReadRouter",
    "commit_position",
    "require_position",
]

#: Seconds a replica may be behind and still serve reads.
DEFAULT_MAX_LAG = 5.0
#: Seconds a measured lag is trusted before it is measured again.
DEFAULT_CHECK_INTERVAL = 1.0
#: Seconds one lag check may take (its statements and, in async, its connect).
DEFAULT_CHECK_TIMEOUT = 2.0
#: Seconds a read-your-writes read waits for the replica before reading from the primary.
DEFAULT_WAIT = 1.0
#: Seconds between two looks at the replica's replay position while waiting.
_POLL_INTERVAL = 0.01

T = TypeVar("T")


class FallbackReason(enum.StrEnum):
    """Why a read meant for the replica went to the primary."""

    LAG = "lag"
    UNREACHABLE = "unreachable"
    READ_YOUR_WRITES = "read_your_writes"



class _Routing:
    """The rule, shared by both faces: the last measure, whether it is due again, the
    target it gives, and the fallbacks counted."""

    def __init__(self, *, has_replica: bool, max_lag: float, check_interval: float) -> None:
        if not (max_lag >= 0 and check_interval >= 0):
            raise ValueError("max_lag and check_interval must be zero or more")
        self.has_replica = has_replica
        self.max_lag = max_lag
        self.check_interval = check_interval
        self.lag: float | None = None
        self.reachable = True
        self.checked_at = -math.inf
        self.fallbacks: dict[FallbackReason, int] = dict.fromkeys(FallbackReason, 0)

    def due(self) -> bool:
        return time.monotonic() - self.checked_at >= self.check_interval

    def measured(self, lag: float | None) -> None:
        """A check ended: ``lag`` seconds, or None for a replica that could not be reached."""
        self.checked_at = time.monotonic()
        self.reachable = lag is not None
        if lag is not None:
            self.lag = lag

    def problem(self) -> FallbackReason | None:
        """Why a read cannot go to the replica now (None: it can)."""
        if not self.reachable:
            return FallbackReason.UNREACHABLE
        if self.lag is None or self.lag > self.max_lag:
            return FallbackReason.LAG
        return None

    def fell_back(self, reason: FallbackReason) -> None:
        self.fallbacks[reason] += 1


class _Router:
    """What both faces expose about the routing."""

    _routing: _Routing
    _check_timeout: float

    def _start(self, has_replica: bool, max_lag: float, check_interval: float,
               check_timeout: float) -> None:
        """The routing state both faces begin with."""
        self._routing = _Routing(
            has_replica=has_replica, max_lag=max_lag, check_interval=check_interval
        )
        self._check_timeout = check_timeout

    @property
    def has_replica(self) -> bool:
        """Whether reads may go to a replica at all (a replica URL, on PostgreSQL)."""
        return self._routing.has_replica

    @property
    def max_lag(self) -> float:
        return self._routing.max_lag

    @property
    def lag(self) -> float | None:
        """The replica's lag in seconds when last measured (None: not yet, or no replica;
        ``inf``: it has replayed nothing that tells)."""
        return self._routing.lag if self.has_replica else None

    @property
    def replica_reachable(self) -> bool:
        """Whether the replica answered the last check (or a read since)."""
        return self.has_replica and self._routing.reachable

    @property
    def fallbacks(self) -> Mapping[FallbackReason, int]:
        """Reads meant for the replica that went to the primary, by reason."""
        return dict(self._routing.fallbacks)


E = TypeVar("E", Engine, AsyncEngine)


def _replica_on_postgresql(primary: E, replica: E | None) -> E | None:
    """``replica``, unless the primary is not PostgreSQL (SQLite has no standbys)."""
    return replica if backend_of(primary).has_standbys else None


def _check_wait(after: str | None, wait: float) -> None:
    if after is not None:
        require_position(after)
    if not wait >= 0:
        raise ValueError("wait must be zero or more seconds")


class ReadRouter(_Router):
    """Routes reads between a primary and a read replica (sync engines).

    ``replica`` may be None (every read on the primary). Give engines made by
    :func:`~repository.make_engine`; reads get read-only sessions (:meth:`sessions`).
    """

    def __init__(
        self,
        primary: Engine,
        replica: Engine | None = None,
        *,
        max_lag: float = DEFAULT_MAX_LAG,
        check_interval: float = DEFAULT_CHECK_INTERVAL,
        check_timeout: float = DEFAULT_CHECK_TIMEOUT,
    ) -> None:
        self.primary = primary
        self.replica = _replica_on_postgresql(primary, replica)
        self._start(self.replica is not None, max_lag, check_interval, check_timeout)
        self._lock = threading.Lock()
        self._factories = {
            engine: make_session_factory(engine, read_only=True)
            for engine in (primary, self.replica) if engine is not None
        }

    def engine(self, *, after: str | None = None, wait: float = DEFAULT_WAIT) -> Engine:
        """The engine for the next read: the replica when it is fine (and, with ``after``,
        has replayed that position within ``wait`` seconds), else the primary."""
        _check_wait(after, wait)
        replica = self.replica
        if replica is None:
            return self.primary
        self.refresh()
        reason = self._routing.problem()
        if reason is None and after is not None:
            reason = self._not_replayed(replica, after, wait)
        if reason is None:
            return replica
        self._routing.fell_back(reason)
        return self.primary

    def sessions(self, *, after: str | None = None, wait: float = DEFAULT_WAIT
                 ) -> sessionmaker[Session]:
        """Read-only sessions on :meth:`engine`'s choice."""
        return self._factories[self.engine(after=after, wait=wait)]

    def run(self, work: Callable[[Session], T], *, after: str | None = None,
            wait: float = DEFAULT_WAIT) -> T:
        """``work(session)`` in a read-only session where :meth:`engine` says (run once more
        on a new connection after a lost one, :func:`~repository.read_in_session`); on the
        primary if the replica still fails (then counted as unreachable)."""
        engine = self.engine(after=after, wait=wait)
        try:
            return read_in_session(self._factories[engine], work)
        except DBAPIError as exc:
            if engine is self.primary or not sends_to_primary(exc):
                raise
        self._routing.measured(None)
        self._routing.fell_back(FallbackReason.UNREACHABLE)
        return read_in_session(self._factories[self.primary], work)

    def commit_position(self) -> str | None:
        """The primary's WAL position now: after a commit, at or past it (None on SQLite
        or without a replica: there is nothing to wait for)."""
        if self.replica is None:
            return None
        with self.primary.connect() as connection:
            return commit_position(connection)

    def refresh(self, *, force: bool = False) -> None:
        """Measure the replica's lag if the last measure is older than the check interval.
        While another thread measures, the last measure stands."""
        replica = self.replica
        if replica is None or not (force or self._routing.due()):
            return
        if not self._lock.acquire(blocking=self._routing.checked_at == -math.inf or force):
            return
        try:
            if force or self._routing.due():
                self._routing.measured(self._measure(replica))
        finally:
            self._lock.release()

    def _measure(self, replica: Engine) -> float | None:
        try:
            with replica.connect() as connection:
                standby = look(connection, self._check_timeout)
        except DBAPIError:
            return None
        ahead = None
        if standby.needs_primary:
            try:
                with self.primary.connect() as connection:
                    ahead = primary_ahead(connection, standby.replayed, self._check_timeout)
            except DBAPIError:
                ahead = None  # the primary is down: the standby is what there is
        return standby.lag(ahead)

    def _not_replayed(self, replica: Engine, after: str, wait: float) -> FallbackReason | None:
        """Why the replica cannot serve a read after ``after`` (None: it has replayed it
        within ``wait`` seconds)."""
        deadline = time.monotonic() + wait
        try:
            with replica.connect() as connection:
                while not has_replayed(connection, after):
                    if time.monotonic() >= deadline:
                        return FallbackReason.READ_YOUR_WRITES
                    time.sleep(_POLL_INTERVAL)
        except DBAPIError as exc:
            if not sends_to_primary(exc):
                raise
            self._routing.measured(None)
            return FallbackReason.UNREACHABLE
        return None


class AsyncReadRouter(_Router):
    """:class:`ReadRouter` for asyncio, on async engines (the same rule)."""

    def __init__(
        self,
        primary: AsyncEngine,
        replica: AsyncEngine | None = None,
        *,
        max_lag: float = DEFAULT_MAX_LAG,
        check_interval: float = DEFAULT_CHECK_INTERVAL,
        check_timeout: float = DEFAULT_CHECK_TIMEOUT,
    ) -> None:
        self.primary = primary
        self.replica = _replica_on_postgresql(primary, replica)
        self._start(self.replica is not None, max_lag, check_interval, check_timeout)
        self._lock = asyncio.Lock()
        self._factories = {
            engine: make_async_session_factory(engine, read_only=True)
            for engine in (primary, self.replica) if engine is not None
        }

    async def engine(self, *, after: str | None = None, wait: float = DEFAULT_WAIT
                     ) -> AsyncEngine:
        """:meth:`ReadRouter.engine`."""
        _check_wait(after, wait)
        replica = self.replica
        if replica is None:
            return self.primary
        await self.refresh()
        reason = self._routing.problem()
        if reason is None and after is not None:
            reason = await self._not_replayed(replica, after, wait)
        if reason is None:
            return replica
        self._routing.fell_back(reason)
        return self.primary

    async def sessions(self, *, after: str | None = None, wait: float = DEFAULT_WAIT
                       ) -> async_sessionmaker[AsyncSession]:
        """Read-only async sessions on :meth:`engine`'s choice."""
        return self._factories[await self.engine(after=after, wait=wait)]

    async def run(self, work: Callable[[Session], T], *, after: str | None = None,
                  wait: float = DEFAULT_WAIT) -> T:
        """:meth:`ReadRouter.run`: ``work`` runs on a sync session (``run_sync``)."""
        engine = await self.engine(after=after, wait=wait)
        try:
            return await read_in_session_async(self._factories[engine], work)
        except DBAPIError as exc:
            if engine is self.primary or not sends_to_primary(exc):
                raise
        self._routing.measured(None)
        self._routing.fell_back(FallbackReason.UNREACHABLE)
        return await read_in_session_async(self._factories[self.primary], work)

    async def commit_position(self) -> str | None:
        """:meth:`ReadRouter.commit_position`."""
        if self.replica is None:
            return None
        async with self.primary.connect() as connection:
            return await connection.run_sync(commit_position)

    async def refresh(self, *, force: bool = False) -> None:
        """:meth:`ReadRouter.refresh`: while another task measures, the last measure stands."""
        replica = self.replica
        if replica is None or not (force or self._routing.due()):
            return
        if self._lock.locked() and self._routing.checked_at != -math.inf and not force:
            return
        async with self._lock:
            if force or self._routing.due():
                self._routing.measured(await self._measure(replica))

    async def _measure(self, replica: AsyncEngine) -> float | None:
        timeout = self._check_timeout
        try:
            async with asyncio.timeout(timeout), replica.connect() as connection:
                standby = await connection.run_sync(look, timeout)
        except (DBAPIError, TimeoutError):
            return None
        ahead = None
        if standby.needs_primary:
            try:
                async with asyncio.timeout(timeout), self.primary.connect() as connection:
                    ahead = await connection.run_sync(
                        primary_ahead, standby.replayed, timeout
                    )
            except (DBAPIError, TimeoutError):
                ahead = None
        return standby.lag(ahead)

    async def _not_replayed(
        self, replica: AsyncEngine, after: str, wait: float
    ) -> FallbackReason | None:
        deadline = time.monotonic() + wait
        try:
            async with asyncio.timeout(wait + self._check_timeout), \
                    replica.connect() as connection:
                while not await connection.run_sync(has_replayed, after):
                    if time.monotonic() >= deadline:
                        return FallbackReason.READ_YOUR_WRITES
                    await asyncio.sleep(_POLL_INTERVAL)
        except TimeoutError:
            self._routing.measured(None)
            return FallbackReason.UNREACHABLE
        except DBAPIError as exc:
            if not sends_to_primary(exc):
                raise
            self._routing.measured(None)
            return FallbackReason.UNREACHABLE
        return None
