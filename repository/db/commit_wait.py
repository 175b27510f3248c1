"""A COMMIT bounded by a deadline, and not taken for an acknowledgement when PostgreSQL
says it might not have been replicated.

With a synchronous standby that is down, a COMMIT waits for it forever, and
``statement_timeout`` does not end that wait. Only a cancel does, and the COMMIT then
returns *success*, with the WARNING "canceling wait for synchronous replication ..." and
the DETAIL "The transaction has already committed locally, but might not have been
replicated to the standby." Such a commit is durable on the primary alone, which a
failover may lose: :func:`guarded_commit` raises :class:`NotReplicated` for it, so that a
caller that acknowledges (the webhook receiver) answers "retry later" instead.

One implementation for the sync and async faces: a timer thread sends the cancel request
(libpq's, thread-safe) at the deadline, and a notice handler on the driver's connection
catches the warning.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import psycopg
from sqlalchemy.orm import Session

__all__ = ["NotReplicated", "guarded_commit"]

# The server's message (not localized when lc_messages is C; the SQLSTATE is a generic
# warning's, 01000).
_NOT_REPLICATED = "canceling wait for synchronous replication"


class NotReplicated(Exception):
    """The transaction committed on the primary, but its wait for the synchronous standby
    was cancelled: it might not have been replicated, and is not acknowledged."""


def guarded_commit(session: Session, deadline: float | None) -> None:
    """Commit ``session``'s transaction; on PostgreSQL, cancel whatever still runs at
    ``deadline`` (a ``time.monotonic()`` value; None: no bound), the wait for a synchronous
    standby included, and raise :class:`NotReplicated` when the commit was only local."""
    driver = session.connection().connection.driver_connection
    if not isinstance(driver, psycopg.Connection | psycopg.AsyncConnection):
        session.commit()
        return
    with _watched(driver, deadline) as warnings:
        session.commit()
    if warnings:
        raise NotReplicated(warnings[0])


@contextmanager
def _watched(driver: Any, deadline: float | None) -> Iterator[list[str]]:
    warnings: list[str] = []

    def notice(diagnostic: psycopg.errors.Diagnostic) -> None:
        message = diagnostic.message_primary or ""
        if message.startswith(_NOT_REPLICATED):
            warnings.append(f"{message}: {diagnostic.message_detail or ''}".strip())

    lock = threading.Lock()
    finished = False

    def cancel() -> None:
        with lock:  # never once the connection may be back in the pool
            if not finished:
                driver.cancel()

    timer = None
    if deadline is not None:
        timer = threading.Timer(max(0.0, deadline - time.monotonic()), cancel)
        timer.daemon = True
        timer.start()
    driver.add_notice_handler(notice)
    try:
        yield warnings
    finally:
        with lock:
            finished = True
        if timer is not None:
            timer.cancel()
        driver.remove_notice_handler(notice)
