"""Engines for the two supported databases: PostgreSQL (production) and SQLite (embedded)."""

from __future__ import annotations

import os
import weakref
from typing import Any
from urllib.parse import quote

from sqlalchemy import Engine, create_engine
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import (
    AsyncEngine,
    AsyncSession,
    async_sessionmaker,
    create_async_engine,
)
from sqlalchemy.orm import Session, sessionmaker

from repository.db.backends import backend_of
from repository.db.backends.sqlite import SQLITE_BUSY_TIMEOUT_MS, set_sqlite_busy_timeout
from repository.db.database_urls import (
    POOLER_PARAMETER,
    behind_pooler,
    connection_defaults,
    normalize_url,
    without_pooler_flag,
)
from repository.db.jsonb import dumps_for_jsonb
from repository.db.warm_up import build_hot_statements

# The URL functions live in repository.db.database_urls; they are named here too, where
# callers have always imported them from.
__all__ = [
    "DEFAULT_DATABASE_URL",
    "POOLER_PARAMETER",
    "NoDatabaseFile",
    "behind_pooler",
    "is_read_only",
    "make_async_engine",
    "make_async_session_factory",
    "make_engine",
    "make_session_factory",
    "normalize_url",
    "set_sqlite_busy_timeout",
    "without_pooler_flag",
]

DEFAULT_DATABASE_URL = "sqlite:///customers.db"

#: Engines made with ``read_only=True``, whose connections are in autocommit from the start.
_READ_ONLY_ENGINES: weakref.WeakSet[Engine] = weakref.WeakSet()


class NoDatabaseFile(FileNotFoundError):
    """A SQLite URL names a file that does not exist, and the engine must not create it."""

    def __init__(self, path: str) -> None:
        super().__init__(f"no database at {path}")
        self.path = path


def make_engine(
    url: str = DEFAULT_DATABASE_URL,
    *,
    read_only: bool = False,
    must_exist: bool = False,
    **kwargs: Any,
) -> Engine:
    """Create an engine for ``postgresql://…``, ``postgresql+psycopg://…`` or ``sqlite:///path``.

    A PostgreSQL URL may list several hosts, in libpq's spelling
    (``postgresql://app@h1:5432,h2:5432/db?target_session_attrs=read-write``) or
    SQLAlchemy's (``?host=h1:5432&host=h2:5432``): see :mod:`repository.db.database_urls`.
    Its connections get a connect timeout per host and TCP keepalives
    (:data:`~repository.db.database_urls.CONNECTION_DEFAULTS`) unless the URL sets them.

    SQLite connections get foreign keys, WAL and a busy timeout; on PostgreSQL, JSON is
    written so that JSONB gives back every number as the same JSON value. Errors never quote
    bound values (``hide_parameters=True``, unless the caller passes it).

    ``read_only=True`` makes an engine for request handlers that only read: its connections
    run each statement in a transaction of its own (driver-level autocommit), so a ``get``
    is one round trip, with no BEGIN before it and no ROLLBACK after. Don't write with it.

    ``?pgbouncer=true`` in a PostgreSQL URL says a transaction pooler sits in between: the
    parameter is taken off the URL and the connections prepare no statements on the server
    (``prepare_threshold=None``). Without it, psycopg prepares a statement run five times
    on a connection, which saves the server planning it again.

    ``must_exist=True`` opens a SQLite file only if it exists (:class:`NoDatabaseFile`
    otherwise), and never creates it: its connections open the file with SQLite's
    ``mode=rw``. Commands other than ``migrate`` use it, so that a wrong directory or path
    leaves no empty database behind.
    """
    url, options = _engine_arguments(
        url, read_only, kwargs, asynchronous=False, must_exist=must_exist
    )
    engine = create_engine(url, **options)
    _configure(engine)
    if options.get("isolation_level") == "AUTOCOMMIT":
        _READ_ONLY_ENGINES.add(engine)
    return engine


def is_read_only(engine: Engine) -> bool:
    """Whether ``engine`` was made by :func:`make_engine` with ``read_only=True`` (or
    autocommit asked for): its connections need not be switched to autocommit."""
    return engine in _READ_ONLY_ENGINES


def make_async_engine(
    url: str = DEFAULT_DATABASE_URL, *, read_only: bool = False, **kwargs: Any
) -> AsyncEngine:
    """:func:`make_engine` for asyncio: the same URLs and the same connection setup, on
    psycopg 3's async connection or aiosqlite. The statements of the hot paths are
    compiled for it here (:mod:`repository.db.warm_up`), so that the first requests do
    not compile them on the event loop."""
    url, options = _engine_arguments(url, read_only, kwargs, asynchronous=True)
    engine = create_async_engine(url, **options)
    _configure(engine.sync_engine)
    # What the first requests would compile on the event loop, compiled before they come.
    build_hot_statements(engine.sync_engine)
    return engine


def make_session_factory(engine: Engine, *, read_only: bool = False) -> sessionmaker[Session]:
    """Sessions that keep loaded objects usable after commit.

    ``read_only=True`` gives sessions whose statements each run in a transaction of their
    own (driver-level autocommit): a request that only reads, such as one ``get``, then
    costs one round trip instead of three (BEGIN, the query, ROLLBACK). Don't write with them.
    (An engine made with ``make_engine(url, read_only=True)`` does the same a little faster:
    its connections need not be switched at each checkout.)
    """
    if read_only:
        engine = engine.execution_options(isolation_level="AUTOCOMMIT")
    return sessionmaker(engine, expire_on_commit=False)


def make_async_session_factory(
    engine: AsyncEngine, *, read_only: bool = False
) -> async_sessionmaker[AsyncSession]:
    """:func:`make_session_factory` for async engines."""
    if read_only:
        engine = engine.execution_options(isolation_level="AUTOCOMMIT")
    return async_sessionmaker(engine, expire_on_commit=False)


def _engine_arguments(
    url: str,
    read_only: bool,
    kwargs: dict[str, Any],
    *,
    asynchronous: bool,
    must_exist: bool = False,
) -> tuple[str, dict[str, Any]]:
    """The URL and options both kinds of engine are created with."""
    url, pooled = without_pooler_flag(normalize_url(url, asynchronous=asynchronous))
    options = dict(kwargs)
    if read_only:
        options.setdefault("isolation_level", "AUTOCOMMIT")
    # An error's text (``[parameters: ...]``) and SQLAlchemy's own log lines never hold the
    # bound values: they are customers' data, a client's filter, a webhook body.
    options.setdefault("hide_parameters", True)
    if make_url(url).get_backend_name() == "sqlite":
        if must_exist:
            url = _existing_sqlite_file(url)
        options.setdefault("connect_args", {"timeout": SQLITE_BUSY_TIMEOUT_MS / 1000})
        return url, options
    # No pre-ping on checkout (a round trip per request): a connection found dead is
    # invalidated with the rest of the pool, and writes are retried (repository.db.retry).
    options.setdefault("json_serializer", dumps_for_jsonb)
    # No startup parameters but the connection's own (poolers refuse others, such as
    # ``options``), and no session settings: the server's time zone is whatever it is, and
    # statements read timestamps in UTC themselves (models.base.UTCDateTime,
    # repository.store.reads).
    # The connect timeout and keepalives are client-side, fine behind a pooler too. The
    # driver gets the URL's query and then connect_args: the defaults go in connect_args
    # only where neither the URL nor the caller sets them.
    connect_args = {**connection_defaults(url), **options.pop("connect_args", {})}
    if pooled:
        # A statement prepared on one server connection is unknown on the next, or clashes
        # with another client's of the same name: prepare none.
        connect_args["prepare_threshold"] = None
    options["connect_args"] = connect_args
    return url, options


def _existing_sqlite_file(url: str) -> str:
    """``url`` opening its file with ``mode=rw`` (SQLite then never creates it), after
    checking that the file is there. An in-memory database, or a URL that is already a
    SQLite URI (``?uri=true``), is left as given."""
    parsed = make_url(url)
    path = parsed.database
    if not path or path == ":memory:" or parsed.query.get("uri") is not None:
        return url
    if not os.path.isfile(path):
        raise NoDatabaseFile(path)
    # A URI filename: the path percent-encoded, as SQLite decodes it (?, # and % included).
    uri = parsed.set(database=f"file:{quote(path)}").update_query_dict(
        {"mode": "rw", "uri": "true"}
    )
    return uri.render_as_string(hide_password=False)


def _configure(engine: Engine) -> None:
    backend_of(engine).configure(engine)
