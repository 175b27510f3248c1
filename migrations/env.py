"""Alembic environment: reads the models' metadata and the database URL.

The URL comes from, in order: a connection handed over by the caller
(``config.attributes["connection"]``), ``config.attributes["database_url"]``, the
``DATABASE_URL`` environment variable, and the SQLite default. Migrations run on the
project's own engine (``repository.make_engine``): the same driver, SQLite pragmas and
connection settings as the store itself (``?pgbouncer=true`` taken off the URL and turned into
no prepared statements, behind a transaction pooler).
"""

from __future__ import annotations

import os
from logging.config import fileConfig
from typing import Any, Literal

from alembic import context
from alembic.autogenerate.api import AutogenContext
from sqlalchemy import TypeDecorator, pool
from sqlalchemy.engine import Connection, Engine, make_url

from migrations import include_object_for
from models.base import Base
from repository.db.engine import DEFAULT_DATABASE_URL, make_engine, normalize_url

config = context.config
if config.config_file_name is not None and config.attributes.get("configure_logger", True):
    fileConfig(config.config_file_name, disable_existing_loggers=False)

target_metadata = Base.metadata


def _url() -> str:
    url = config.attributes.get("database_url") or os.environ.get("DATABASE_URL")
    return normalize_url(url or DEFAULT_DATABASE_URL)


def _render_item(
    type_: str, obj: Any, autogen_context: AutogenContext
) -> str | Literal[False]:
    # Migrations must not import the models: write a TypeDecorator as the type it wraps.
    if type_ == "type" and isinstance(obj, TypeDecorator):
        return f"sa.{obj.impl!r}"
    return False


def _configure(connection: Connection | None = None, **kwargs: Any) -> None:
    if connection is not None:
        dialect = connection.dialect.name
    else:
        dialect = make_url(_url()).get_backend_name()
    context.configure(
        connection=connection,
        target_metadata=target_metadata,
        render_as_batch=dialect == "sqlite",
        render_item=_render_item,
        include_object=include_object_for(dialect),
        compare_type=True,
        compare_server_default=True,
        **kwargs,
    )


def run_migrations_offline() -> None:
    """Print the DDL (``alembic upgrade head --sql``) instead of running it."""
    _configure(url=_url(), literal_binds=True, dialect_opts={"paramstyle": "named"})
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online() -> None:
    given = config.attributes.get("connection")
    if isinstance(given, Connection):
        _run(given)
        return
    engine = given if isinstance(given, Engine) else make_engine(_url(), poolclass=pool.NullPool)
    with engine.connect() as connection:
        _run(connection)
    if given is None:
        engine.dispose()


def _run(connection: Connection) -> None:
    _configure(connection)
    with context.begin_transaction():
        context.run_migrations()


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
