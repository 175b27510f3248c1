"""What a streaming standby says about itself: how far behind it is, whether it has
replayed a given WAL position, and which errors of a read on it call for the primary.

The lag is measured on the standby, from its replay position:

- a server not in recovery (a replica promoted by a failover) has no lag;
- a standby that has replayed all the WAL it received has no lag while it streams;
- one that has not (replay behind, or paused, with WAL still arriving) is as far behind
  as the last transaction it replayed is old;
- one that is not streaming, or does not say (a role without ``pg_read_all_stats``),
  is compared with the primary's WAL position: behind it, its lag is the age of its last
  replayed transaction; when the primary cannot be reached, the standby is what there is.

WAL positions (``pg_lsn`` text such as ``"0/3000148"``) carry read-your-writes: a write's
:func:`commit_position` on the primary, then :func:`has_replayed` on the standby.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

from sqlalchemy import Connection, text
from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError

from repository.db.backends import backend_of
from repository.db.retry import is_lost_connection

__all__ = [
    "StandbyState",
    "commit_position",
    "has_replayed",
    "look",
    "primary_ahead",
    "require_position",
    "sends_to_primary",
]

_LSN = re.compile(r"[0-9A-Fa-f]{1,8}/[0-9A-Fa-f]{1,8}")

# receiver: NULL when no WAL receiver runs, 'hidden' when the role may not see its state.
_STANDBY_STATE = text(
    "SELECT pg_is_in_recovery() AS recovering,"
    " COALESCE(pg_last_wal_replay_lsn() >= pg_last_wal_receive_lsn(), true) AS caught_up,"
    " EXTRACT(EPOCH FROM now() - pg_last_xact_replay_timestamp())::float8 AS since_replay,"
    " (SELECT COALESCE(status, 'hidden') FROM pg_stat_wal_receiver) AS receiver,"
    " pg_last_wal_replay_lsn()::text AS replayed"
)
_PRIMARY_AHEAD = text(
    "SELECT pg_current_wal_insert_lsn() > CAST(:replayed AS pg_lsn)"
)
_INSERT_POSITION = text("SELECT pg_current_wal_insert_lsn()::text")
_REPLAYED = text(
    "SELECT NOT pg_is_in_recovery() OR pg_last_wal_replay_lsn() >= CAST(:lsn AS pg_lsn)"
)
_BOUND = text("SELECT set_config('statement_timeout', :ms, true)")


def require_position(lsn: str) -> str:
    """``lsn`` if it is a WAL position as PostgreSQL writes it (``"16/B374D848"``), else
    ValueError (a position handed over by a client is checked before it reaches SQL)."""
    if not _LSN.fullmatch(lsn):
        raise ValueError(f"not a WAL position: {lsn[:40]!r}")
    return lsn


def commit_position(connection: Connection) -> str | None:
    """The primary's WAL insert position, read after a commit on ``connection`` (any of
    the primary's): at or past the end of that commit's record. None on SQLite.
    (``AsyncConnection.run_sync(commit_position)`` for asyncio.)"""
    if not backend_of(connection).has_standbys:
        return None
    value: str = connection.execute(_INSERT_POSITION).scalar_one()
    return value


#: A statement on a standby cancelled by a conflict with recovery (serialization_failure).
_RECOVERY_CONFLICT = "40001"


def sends_to_primary(exc: BaseException) -> bool:
    """Whether a replica read that raised ``exc`` should go to the primary: a lost
    connection or a server gone (:func:`~repository.is_lost_connection`), a connection
    that could not be made (an error without a SQLSTATE), or a read cancelled by a conflict
    with recovery."""
    if not isinstance(exc, DBAPIError):
        return False
    if is_lost_connection(exc):
        return True
    sqlstate = getattr(exc.orig, "sqlstate", None)
    if sqlstate is None:
        return isinstance(exc, (OperationalError, InterfaceError))
    return bool(sqlstate == _RECOVERY_CONFLICT)


@dataclass(frozen=True)
class StandbyState:
    """One look at the standby (a row of :data:`_STANDBY_STATE`)."""

    recovering: bool
    caught_up: bool
    since_replay: float | None
    receiver: str | None
    replayed: str | None

    @property
    def needs_primary(self) -> bool:
        """Whether only the primary's position can tell this standby's lag."""
        return self.recovering and self.caught_up and self.receiver != "streaming"

    def lag(self, primary_ahead: bool | None) -> float:
        """Seconds behind; ``primary_ahead``: whether the primary has WAL past the replay
        position (None: the primary could not be asked, or was not)."""
        if not self.recovering:
            return 0.0
        if self.caught_up and not (self.needs_primary and primary_ahead):
            return 0.0
        return self.since_replay if self.since_replay is not None else math.inf


def look(connection: Connection, timeout: float) -> StandbyState:
    """The standby's state, in a transaction bounded by ``timeout`` on the server."""
    connection = _in_transaction(connection)
    with connection.begin():
        connection.execute(_BOUND, {"ms": str(max(int(timeout * 1000), 1))})
        row = connection.execute(_STANDBY_STATE).one()
    return StandbyState(bool(row.recovering), bool(row.caught_up),
                    None if row.since_replay is None else float(row.since_replay),
                    row.receiver, row.replayed)


def primary_ahead(connection: Connection, replayed: str | None, timeout: float) -> bool:
    if replayed is None:
        return True
    connection = _in_transaction(connection)
    with connection.begin():
        connection.execute(_BOUND, {"ms": str(max(int(timeout * 1000), 1))})
        return bool(connection.execute(_PRIMARY_AHEAD, {"replayed": replayed}).scalar_one())


def _in_transaction(connection: Connection) -> Connection:
    """``connection`` out of autocommit (a read-only engine's are in it), so that
    ``statement_timeout`` can be set for one transaction; the pool resets it."""
    return connection.execution_options(isolation_level="READ COMMITTED")


def has_replayed(connection: Connection, lsn: str) -> bool:
    return bool(connection.execute(_REPLAYED, {"lsn": lsn}).scalar_one())
